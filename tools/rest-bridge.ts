#!/usr/bin/env node
import http from 'node:http'
import { timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import { holdWhileReconnecting } from '../lib/tiers/tcp-reconnect'
import { sha1 } from '../lib/tiers/tcp-client'

// An HTTP server that speaks the Upstash REST protocol in front of a real
// Redis: what the tests use for the rest tier, and what developers of
// serverless apps can point UPSTASH_REDIS_REST_URL at on their laptop
// (`npm run rest-bridge`). It follows what @upstash/redis sends and expects:
//   POST /            ["SET","k","v"]             -> {"result":"OK"}
//   POST /pipeline    [["SET","k","v"],["GET","k"]] -> [{"result":...},{"error":...}]
//   POST /multi-exec  same, run in MULTI/EXEC      -> [{"result":...}] or {"error":...}
//   GET|POST /set/k/v path-style commands (a POST body becomes the last argument)
//   POST /subscribe/<channel>, /psubscribe/<pattern> -> text/event-stream
// with `Authorization: Bearer <token>` (or `?_token=`), 401 otherwise, and
// `Upstash-Encoding: base64` encoding every string in a result, and an
// `upstash-sync-token` header on every answer (read-your-writes: the client
// sends back the newest token it saw; with one Redis behind the bridge every
// read already follows every write, so each answer only needs a token of its own
// that is newer than every earlier one).
//
// It is as strict as Upstash, and no one client can hold it: see docs/rest-bridge.md.

export interface RestBridgeOptions {
  /** The Redis to serve, e.g. redis://127.0.0.1:6379. */
  redisUrl: string
  token: string
  port?: number
  host?: string
  /** Largest request body accepted (default 10 MiB, Upstash's max request size). */
  maxBodyBytes?: number
  /** Largest answer built (default 10 MiB: Upstash applies its request size limit to what one request loads too). */
  maxAnswerBytes?: number
  /** Commands in one /pipeline or /multi-exec body (default 1 000). */
  maxPipelineCommands?: number
  /** A script (EVAL, EVALSHA, FCALL) still running after this is killed from the bridge's own admin connection (default 5 000 ms). */
  scriptTimeoutMs?: number
  /** Redis connections that requests are spread over, so that one heavy request does not queue the others (default 4). */
  connections?: number
  /** Open /subscribe and /psubscribe streams, all served by one Redis connection (default 1 000). */
  maxSubscriptions?: number
}

export interface RestBridge {
  url: string
  port: number
  /** Requests answered, by path kind; the tests use it to count round trips. */
  readonly requests: { command: number, pipeline: number, multiExec: number, subscribe: number }
  close: () => Promise<void>
}

type Limits = Required<Omit<RestBridgeOptions, 'redisUrl' | 'token' | 'port' | 'host'>>

const DEFAULT_LIMITS: Limits = {
  maxBodyBytes: 10 * 1024 * 1024,
  maxAnswerBytes: 10 * 1024 * 1024,
  maxPipelineCommands: 1000,
  // Redis's own busy-reply-threshold: before it, Redis reads no other connection, so an earlier SCRIPT KILL waits until then anyway.
  scriptTimeoutMs: 5000,
  connections: 4,
  maxSubscriptions: 1000
}

type Reply = Buffer | string | number | null | Reply[] | Error
interface Entry { result?: unknown, error?: string }

class BadRequest extends Error {}
class TooLarge extends BadRequest {}
class Unavailable extends Error {}

// ---- what a client may run

// Commands a request-per-command protocol cannot serve: they block, or they hold connection state.
const NOT_OVER_REST = new Set([
  'blpop', 'brpop', 'brpoplpush', 'blmove', 'blmpop', 'bzpopmin', 'bzpopmax', 'bzmpop', 'wait', 'waitaof',
  'subscribe', 'psubscribe', 'ssubscribe', 'unsubscribe', 'punsubscribe', 'sunsubscribe', 'select', 'quit', 'reset',
  'multi', 'exec', 'discard', 'watch', 'unwatch', 'hello', 'auth'
])

// Commands that act on the server rather than on the data. Upstash's compatibility
// list has none of them (ACL is Upstash's own, per database); in front of a Redis
// that others share they would reconfigure it, copy data out (MIGRATE connects
// anywhere), write files beside it, or stop it, for everyone.
const ADMINISTRATIVE = new Set([
  'acl', 'bgrewriteaof', 'bgsave', 'cluster', 'debug', 'failover', 'latency', 'migrate', 'module', 'monitor', 'move',
  'pfdebug', 'psync', 'replconf', 'replicaof', 'restore-asking', 'save', 'shutdown', 'slaveof', 'slowlog', 'swapdb', 'sync'
])

// Subcommands refused where the command is fine: the bridge kills runaway scripts
// itself, and a flush or delete would break every other client's EVALSHA and FCALL.
const ADMINISTRATIVE_SUBCOMMANDS = new Map([
  ['script', new Set(['flush', 'kill'])],
  ['function', new Set(['flush', 'delete', 'restore', 'kill'])]
])

// Commands allowed only in the forms Upstash documents.
const ONLY_AS = new Map<string, (args: string[]) => boolean>([
  ['client', (args) => args[1]?.toLowerCase() === 'setinfo'],
  ['config', (args) => {
    const sub = args[1]?.toLowerCase()
    return args[2]?.toLowerCase() === 'notify-keyspace-events' && ((sub === 'get' && args.length === 3) || (sub === 'set' && args.length === 4))
  }]
])

/** The refused command as Upstash would name it (never its arguments), or undefined. */
function refusedName (args: string[]): string | undefined {
  const name = args[0].toLowerCase()
  const sub = args[1]?.toLowerCase() ?? ''
  if (ADMINISTRATIVE.has(name)) return name
  if (ADMINISTRATIVE_SUBCOMMANDS.get(name)?.has(sub) === true) return `${name} ${sub}`
  const allowed = ONLY_AS.get(name)
  return allowed !== undefined && !allowed(args) ? name : undefined
}

function checkSupported (args: string[]): void {
  const name = args[0].toLowerCase()
  if (NOT_OVER_REST.has(name)) throw new BadRequest(`ERR ${name.toUpperCase()} is not supported over REST`)
  if ((name === 'xread' || name === 'xreadgroup') && args.some((a) => a.toLowerCase() === 'block')) {
    throw new BadRequest('ERR blocking commands are not supported over REST')
  }
  const refused = refusedName(args)
  if (refused !== undefined) throw new BadRequest(`ERR Command is not available: '${refused.toUpperCase()}'`)
}

// Upstash accepts the script flag `allow-key-locking` (@upstash/ratelimit's
// scripts open with `#!lua flags=allow-key-locking`); Redis knows no such
// flag and refuses the script. The bridge drops it before Redis sees it, and
// keeps the client's sha1 working: EVALSHA of the script as the client wrote
// it runs the script as Redis loaded it (SCRIPT LOAD loads it without the
// flag too; its answer is the sha1 of what Redis has, which works as well).
const UPSTASH_ONLY_FLAG = /^(#!lua[^\n]*?flags=)(\S*)/

function scriptFlags (): (args: string[]) => string[] {
  const loaded = new Map<string, string>() // the client's sha1 -> the sha1 of what Redis has
  const strip = (source: string): string | undefined => {
    const match = UPSTASH_ONLY_FLAG.exec(source)
    if (match === null || !match[2].split(',').includes('allow-key-locking')) return undefined
    const kept = match[2].split(',').filter((f) => f !== 'allow-key-locking' && f !== '')
    const stripped = kept.length > 0 ? source.replace(UPSTASH_ONLY_FLAG, `$1${kept.join(',')}`) : source.replace(/^#!lua[^\n]*/, '#!lua')
    if (loaded.size >= 10_000) loaded.clear()
    loaded.set(sha1(source), sha1(stripped))
    return stripped
  }
  return (args) => {
    const name = args[0].toLowerCase()
    if ((name === 'eval' || name === 'eval_ro') && args.length > 1) {
      const stripped = strip(args[1])
      return stripped === undefined ? args : [args[0], stripped, ...args.slice(2)]
    }
    if ((name === 'evalsha' || name === 'evalsha_ro') && args.length > 1) {
      const sha = loaded.get(args[1].toLowerCase())
      return sha === undefined ? args : [args[0], sha, ...args.slice(2)]
    }
    if (name === 'script' && args[1]?.toLowerCase() === 'load' && args.length === 3) {
      const stripped = strip(args[2])
      return stripped === undefined ? args : [args[0], args[1], stripped]
    }
    return args
  }
}

function toArgs (raw: unknown): string[] {
  if (!Array.isArray(raw) || raw.length === 0) throw new BadRequest('ERR a command must be a non-empty JSON array')
  return raw.map((part) => {
    if (typeof part === 'string') return part
    if (typeof part === 'number' || typeof part === 'boolean') return String(part)
    throw new BadRequest('ERR command arguments must be strings or numbers')
  })
}

function parseBatch (body: string): string[][] {
  const parsed: unknown = JSON.parse(body)
  if (!Array.isArray(parsed) || parsed.length === 0) throw new BadRequest('ERR a pipeline must be a non-empty array of commands')
  const commands = parsed.map(toArgs)
  commands.forEach(checkSupported) // before anything runs: a batch with a refused command runs nothing
  return commands
}

/** Redis quotes the first arguments of an unknown command; Upstash does not, and neither do we. */
function publicMessage (err: Error): string {
  return err.message.replace(/, with args beginning with:.*$/s, '')
}

// ---- request bodies

/**
 * Counts the commands of a JSON array of arrays as its bytes arrive, so that an
 * oversized pipeline is refused after its first kilobytes instead of being
 * parsed whole (600 000 commands held the event loop for seconds).
 */
function commandCounter (): (chunk: Buffer) => number {
  let depth = 0
  let inString = false
  let escaped = false
  let count = 0
  return (chunk) => {
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i]
      if (inString) {
        if (escaped) escaped = false
        else if (byte === 0x5c) escaped = true
        else if (byte === 0x22) inString = false
      } else if (byte === 0x22) {
        inString = true
      } else if (byte === 0x5b || byte === 0x7b) {
        if (++depth === 2) count++
      } else if (byte === 0x5d || byte === 0x7d) {
        depth--
      }
    }
    return count
  }
}

/**
 * The body, or a BadRequest as soon as it passes a limit. The rest of a refused
 * body is read and dropped rather than cut off: a client still sending when the
 * connection closed would lose the answer (EPIPE); past another `maxBytes` the
 * connection is cut all the same.
 */
async function readBody (req: http.IncomingMessage, maxBytes: number, maxCommands?: number): Promise<string> {
  const count = maxCommands === undefined ? undefined : commandCounter()
  return await new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    const refuse = (message: string): void => {
      req.removeListener('data', onData)
      let dropped = 0
      req.on('data', (chunk: Buffer) => {
        dropped += chunk.length
        if (dropped > maxBytes) req.socket.destroy()
      })
      reject(new BadRequest(message))
    }
    const onData = (chunk: Buffer): void => {
      size += chunk.length
      if (size > maxBytes) return refuse(`ERR max request size exceeded. Limit: ${maxBytes} bytes`)
      if (count !== undefined && maxCommands !== undefined && count(chunk) > maxCommands) {
        return refuse(`ERR max pipeline size exceeded. Limit: ${maxCommands} commands`)
      }
      chunks.push(chunk)
    }
    req.on('data', onData)
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.once('error', reject)
  })
}

// ---- answers

interface Budget { left: number, readonly limit: number }

/** Counts what an answer will weigh before it is built, so that a request cannot make the bridge build 500 MB. */
function spend (budget: Budget, bytes: number): void {
  budget.left -= bytes
  if (budget.left < 0) throw new TooLarge(`ERR max response size exceeded. Limit: ${budget.limit} bytes`)
}

function encode (reply: Reply, base64: boolean, budget: Budget): unknown {
  if (reply instanceof Error) throw reply
  if (Buffer.isBuffer(reply)) {
    spend(budget, base64 ? Math.ceil(reply.length / 3) * 4 : reply.length)
    return base64 ? reply.toString('base64') : reply.toString('utf8')
  }
  if (typeof reply === 'string') {
    spend(budget, base64 ? Math.ceil(Buffer.byteLength(reply) / 3) * 4 : reply.length)
    return base64 ? Buffer.from(reply).toString('base64') : reply
  }
  spend(budget, 8)
  if (Array.isArray(reply)) return reply.map((r) => r instanceof Error ? publicMessage(r) : encode(r, base64, budget))
  // ioredis turns some replies (HGETALL) into objects; Upstash sends the flat array Redis sent.
  if (reply !== null && typeof reply === 'object') return encode(Object.entries(reply).flat() as Reply, base64, budget)
  return reply
}

function entry (err: Error | null, reply: unknown, base64: boolean, budget: Budget): Entry {
  if (err !== null) return { error: publicMessage(err) }
  try {
    return { result: encode(reply as Reply, base64, budget) }
  } catch (e) {
    if (e instanceof TooLarge) throw e
    return { error: publicMessage(e as Error) }
  }
}

// ---- Redis connections

interface Pooled { redis: Redis, pending: number }

/** Runs `work` on the least busy connection, so that a PING is not queued behind someone's 1 000-command pipeline. */
async function onLeastBusy<T> (pool: Pooled[], work: (redis: Redis) => Promise<T>): Promise<T> {
  const conn = pool.reduce((best, c) => c.pending < best.pending ? c : best)
  conn.pending++
  try {
    return await work(conn.redis)
  } finally {
    conn.pending--
  }
}

const SCRIPT_KILLERS = new Map([
  ['eval', 'SCRIPT'], ['evalsha', 'SCRIPT'], ['eval_ro', 'SCRIPT'], ['evalsha_ro', 'SCRIPT'], ['fcall', 'FUNCTION'], ['fcall_ro', 'FUNCTION']
])

/**
 * Runs `work`; if it sent a script that is still running at the deadline, kills
 * it from the admin connection. Redis serves no other connection while a script
 * runs, so one `while true do end` would otherwise hold every client of the
 * bridge until an operator stepped in. A script that already wrote cannot be
 * killed (Redis answers UNKILLABLE); that one needs SHUTDOWN NOSAVE from its owner.
 */
async function killingRunawayScripts<T> (commands: string[][], admin: Redis, ms: number, work: () => Promise<T>): Promise<T> {
  const killers = new Set(commands.map((c) => SCRIPT_KILLERS.get(c[0].toLowerCase())).filter((k) => k !== undefined))
  if (killers.size === 0) return await work()
  const timer = setTimeout(() => {
    for (const killer of killers) admin.call(killer, 'KILL').catch(() => {}) // NOTBUSY: it ended by itself meanwhile
  }, ms)
  try {
    return await work()
  } finally {
    clearTimeout(timer)
  }
}

async function runCommand (redis: Redis, args: string[], base64: boolean, budget: Budget): Promise<Entry> {
  const reply = await redis.callBuffer(args[0], ...args.slice(1)) as Reply
  return { result: encode(reply, base64, budget) }
}

/** Each reply is weighed and encoded as it arrives and then dropped, so the memory a pipeline holds is bounded by the answer's limit. */
async function runPipeline (redis: Redis, commands: string[][], base64: boolean, budget: Budget): Promise<Entry[]> {
  const entries: Entry[] = new Array<Entry>(commands.length)
  let tooLarge: TooLarge | undefined
  await Promise.all(commands.map(async ([name, ...args], i) => {
    let reply: unknown
    try {
      reply = await redis.callBuffer(name, ...args)
    } catch (err) {
      entries[i] = { error: publicMessage(err as Error) }
      return
    }
    try {
      if (tooLarge === undefined) entries[i] = entry(null, reply, base64, budget)
    } catch (err) {
      tooLarge = err as TooLarge
    }
  }))
  if (tooLarge !== undefined) throw tooLarge
  return entries
}

async function runTransaction (redis: Redis, commands: string[][], base64: boolean, budget: Budget): Promise<Entry[]> {
  const multi = redis.multi()
  for (const [name, ...args] of commands) multi.callBuffer(name, ...args)
  const results = await multi.exec()
  if (results === null) throw new BadRequest('EXECABORT Transaction discarded')
  return results.map(([err, reply]) => entry(err, reply, base64, budget))
}

// ---- subscriptions

type Kind = 'subscribe' | 'psubscribe'
interface Stream { res: http.ServerResponse, kind: Kind, target: string }
interface Topic { streams: Set<Stream>, ready: Promise<unknown> }

function writeEvent (res: http.ServerResponse, fields: string[]): void {
  res.write(fields.join(',').split('\n').map((line) => `data: ${line}\n`).join('') + '\n')
}

/**
 * Every stream shares one subscriber connection, with each channel and pattern
 * subscribed once however many streams follow it (a connection per stream let
 * 150 streams exhaust a `maxclients 100` Redis for everyone). When that
 * connection ends, every stream ends, as Upstash's do; clients resubscribe and
 * the next stream opens a new connection.
 */
function sharedSubscriber (redisUrl: string, max: number, nextToken: () => string) {
  const streams = new Set<Stream>()
  const topics: Record<Kind, Map<string, Topic>> = { subscribe: new Map(), psubscribe: new Map() }
  let current: { redis: Redis, ready: Promise<void> } | undefined

  function deliver (topic: Topic | undefined, fields: string[]): void {
    for (const stream of topic?.streams ?? []) if (stream.res.headersSent) writeEvent(stream.res, fields)
  }

  function endAll (): void {
    for (const { res } of streams) if (res.headersSent) res.end()
    streams.clear()
    topics.subscribe.clear()
    topics.psubscribe.clear()
  }

  function connection (): { redis: Redis, ready: Promise<void> } {
    if (current !== undefined) return current
    const redis = new Redis(redisUrl, {
      protocol: 2, lazyConnect: true, enableOfflineQueue: false, autoResubscribe: false, maxRetriesPerRequest: 1,
      commandTimeout: 5000, retryStrategy: () => null, connectionName: 'rest-bridge-subscriber'
    })
    redis.on('error', () => {}) // a lost Redis ends the streams below
    redis.on('message', (channel: string, message: string) => deliver(topics.subscribe.get(channel), ['message', channel, message]))
    redis.on('pmessage', (pattern: string, channel: string, message: string) => deliver(topics.psubscribe.get(pattern), ['pmessage', pattern, channel, message]))
    const opened = { redis, ready: redis.connect() }
    redis.once('end', () => {
      if (current !== opened) return
      current = undefined
      endAll()
    })
    current = opened
    return opened
  }

  function leave (stream: Stream): void {
    if (!streams.delete(stream)) return
    const topic = topics[stream.kind].get(stream.target)
    topic?.streams.delete(stream)
    if (topic !== undefined && topic.streams.size === 0) {
      topics[stream.kind].delete(stream.target)
      const redis = current?.redis
      const gone = stream.kind === 'subscribe' ? redis?.unsubscribe(stream.target) : redis?.punsubscribe(stream.target)
      gone?.catch(() => {})
    }
    if (streams.size === 0 && current !== undefined) {
      // Nobody follows anything: the connection is not kept open for nothing (the next stream opens one).
      const idle = current
      current = undefined
      idle.redis.disconnect()
    }
  }

  async function join (res: http.ServerResponse, kind: Kind, target: string): Promise<void> {
    if (streams.size >= max) throw new Unavailable(`ERR too many subscriptions. Limit: ${max}`)
    const stream: Stream = { res, kind, target }
    streams.add(stream)
    // Not req's 'close': a request without a body is complete at once, and then it never fires when the client goes away.
    res.on('close', () => leave(stream))
    const { redis, ready } = connection()
    let topic = topics[kind].get(target)
    if (topic === undefined) {
      topic = { streams: new Set(), ready: ready.then(async () => kind === 'subscribe' ? await redis.subscribe(target) : await redis.psubscribe(target)) }
      topics[kind].set(target, topic)
    }
    topic.streams.add(stream)
    try {
      await topic.ready
    } catch (err) {
      leave(stream)
      throw err
    }
    if (!streams.has(stream)) return // the client or Redis went away meanwhile
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'upstash-sync-token': nextToken() })
    writeEvent(res, [kind, target, '1']) // Upstash's count is per stream, and a stream follows one channel
  }

  function close (): void {
    const redis = current?.redis
    current = undefined
    for (const { res } of streams) res.end()
    endAll()
    redis?.disconnect()
  }

  return { join, close }
}

// ---- the server

function authorized (req: http.IncomingMessage, url: URL, token: Buffer): boolean {
  const header = req.headers.authorization ?? ''
  const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : (url.searchParams.get('_token') ?? ''))
  return given.length === token.length && timingSafeEqual(given, token)
}

function statusOf (err: Error): number {
  if (err instanceof Unavailable) return 503
  return err instanceof BadRequest || err instanceof SyntaxError || err.name === 'ReplyError' ? 400 : 500
}

function checkLimits (limits: Limits): void {
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`rest-bridge: ${name} must be a positive integer, got ${String(value)}`)
  }
}

function connect (url: string, name: string, commandTimeout?: number): Redis {
  const redis = new Redis(url, { protocol: 2, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false, autoResendUnfulfilledCommands: false, commandTimeout, connectionName: name })
  redis.on('error', () => {}) // a down Redis becomes an error body per request
  // Upstash does not fail a request because its own connection to Redis sat idle: one that Redis
  // closed for idleness (its `timeout`) is reconnected while the request waits, within its deadline.
  holdWhileReconnecting(redis)
  return redis
}

export async function startRestBridge (opts: RestBridgeOptions): Promise<RestBridge> {
  const limits: Limits = { ...DEFAULT_LIMITS, ...Object.fromEntries(Object.entries(opts).filter(([k, v]) => k in DEFAULT_LIMITS && v !== undefined)) }
  checkLimits(limits)
  // A command may wait for a runaway script to be killed (Redis's own threshold is 5 s), but not forever.
  const commandTimeout = Math.max(limits.scriptTimeoutMs, 5000) + 5000
  const pool: Pooled[] = Array.from({ length: limits.connections }, (_, i) => ({ redis: connect(opts.redisUrl, `rest-bridge-${i + 1}`, commandTimeout), pending: 0 }))
  const admin = connect(opts.redisUrl, 'rest-bridge-admin')
  const all = [admin, ...pool.map((c) => c.redis)]
  try {
    await Promise.all(all.map(async (r) => await r.connect()))
  } catch (err) {
    all.forEach((r) => r.disconnect())
    throw err
  }
  const token = Buffer.from(opts.token)
  const requests = { command: 0, pipeline: 0, multiExec: 0, subscribe: 0 }
  // One token per answer, taken when that answer is written; seeded from the clock so that a restarted bridge still moves forward.
  let lastToken = Date.now()
  const nextToken = (): string => String(++lastToken)
  const scripts = scriptFlags()
  const subscriptions = sharedSubscriber(opts.redisUrl, limits.maxSubscriptions, nextToken)

  function send (res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'upstash-sync-token': nextToken() })
    res.end(text)
  }

  async function answer (first: string | undefined, segments: string[], body: string, base64: boolean): Promise<Entry | Entry[]> {
    const budget: Budget = { left: limits.maxAnswerBytes, limit: limits.maxAnswerBytes }
    if (first === 'pipeline' || first === 'multi-exec') {
      const commands = parseBatch(body).map(scripts)
      if (first === 'pipeline') requests.pipeline++
      else requests.multiExec++
      const run = first === 'pipeline' ? runPipeline : runTransaction
      return await killingRunawayScripts(commands, admin, limits.scriptTimeoutMs,
        async () => await onLeastBusy(pool, async (redis) => await run(redis, commands, base64, budget)))
    }
    const args = scripts(segments.length > 0 ? (body !== '' ? [...segments, body] : segments) : toArgs(JSON.parse(body)))
    checkSupported(args)
    requests.command++
    return await killingRunawayScripts([args], admin, limits.scriptTimeoutMs,
      async () => await onLeastBusy(pool, async (redis) => await runCommand(redis, args, base64, budget)))
  }

  async function handle (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://bridge')
    if (!authorized(req, url, token)) {
      send(res, 401, { error: 'Unauthorized' })
      return
    }
    const base64 = String(req.headers['upstash-encoding'] ?? '').toLowerCase() === 'base64'
    const segments = url.pathname.split('/').filter((s) => s !== '').map((s) => decodeURIComponent(s))
    const first = segments[0]?.toLowerCase()
    const batch = first === 'pipeline' || first === 'multi-exec'
    const body = await readBody(req, limits.maxBodyBytes, batch ? limits.maxPipelineCommands : undefined)
    if ((first === 'subscribe' || first === 'psubscribe') && segments.length === 2) {
      requests.subscribe++
      await subscriptions.join(res, first, segments[1])
      return
    }
    send(res, 200, await answer(first, segments, body, base64))
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      if (res.headersSent) {
        res.end()
        return
      }
      send(res, statusOf(err), { error: err instanceof SyntaxError ? 'ERR failed to parse the request body as JSON' : publicMessage(err) })
    })
  })
  server.keepAliveTimeout = 5000
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo

  return {
    url: `http://${opts.host ?? '127.0.0.1'}:${port}`,
    port,
    requests,
    async close () {
      subscriptions.close()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      all.forEach((r) => r.disconnect())
    }
  }
}

// ---- the command

const ENV_LIMITS: Record<string, keyof Limits> = {
  REST_BRIDGE_MAX_BODY_BYTES: 'maxBodyBytes',
  REST_BRIDGE_MAX_ANSWER_BYTES: 'maxAnswerBytes',
  REST_BRIDGE_MAX_PIPELINE_COMMANDS: 'maxPipelineCommands',
  REST_BRIDGE_SCRIPT_TIMEOUT_MS: 'scriptTimeoutMs',
  REST_BRIDGE_CONNECTIONS: 'connections',
  REST_BRIDGE_MAX_SUBSCRIPTIONS: 'maxSubscriptions'
}

function limitsFromEnv (env: NodeJS.ProcessEnv): Partial<Limits> {
  const limits: Partial<Limits> = {}
  for (const [variable, name] of Object.entries(ENV_LIMITS)) {
    const value = env[variable]
    if (value !== undefined && value !== '') limits[name] = Number(value)
  }
  return limits
}

if (require.main === module) {
  const redisUrl = process.env.REDIS_URL
  const token = process.env.UPSTASH_REDIS_REST_TOKEN ?? process.env.REST_BRIDGE_TOKEN
  if (redisUrl === undefined || redisUrl === '' || token === undefined || token === '') {
    process.stderr.write('rest-bridge needs REDIS_URL (the Redis to serve, e.g. redis://127.0.0.1:6379) and UPSTASH_REDIS_REST_TOKEN (any token your app will send)\n')
    process.exit(1)
  }
  startRestBridge({ redisUrl, token, port: Number(process.env.REST_BRIDGE_PORT ?? 8079), host: process.env.REST_BRIDGE_HOST ?? '127.0.0.1', ...limitsFromEnv(process.env) })
    .then((bridge) => {
      process.stdout.write(`Upstash REST bridge listening. Point your app at it with:\n  UPSTASH_REDIS_REST_URL=${bridge.url}\n  UPSTASH_REDIS_REST_TOKEN=<the token you set>\n`)
      const stop = (): void => { void bridge.close().then(() => process.exit(0)) }
      process.once('SIGINT', stop)
      process.once('SIGTERM', stop)
    })
    .catch((err: Error) => {
      process.stderr.write(`rest-bridge could not start: ${err.message}\n`)
      process.exit(1)
    })
}
