#!/usr/bin/env node
import http from 'node:http'
import { timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'

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
// read already follows every write, so the token only has to move on).

export interface RestBridgeOptions {
  /** The Redis to serve, e.g. redis://127.0.0.1:6379. */
  redisUrl: string
  token: string
  port?: number
  host?: string
  /** Largest request body accepted (default 10 MiB). */
  maxBodyBytes?: number
}

export interface RestBridge {
  url: string
  port: number
  /** Requests answered, by path kind; the tests use it to count round trips. */
  readonly requests: { command: number, pipeline: number, multiExec: number, subscribe: number }
  close: () => Promise<void>
}

type Reply = Buffer | string | number | null | Reply[] | Error

const UNSUPPORTED = new Set([
  'blpop', 'brpop', 'brpoplpush', 'blmove', 'blmpop', 'bzpopmin', 'bzpopmax', 'bzmpop', 'wait', 'waitaof',
  'subscribe', 'psubscribe', 'ssubscribe', 'unsubscribe', 'punsubscribe', 'monitor', 'select', 'quit', 'reset',
  'multi', 'exec', 'discard', 'watch', 'unwatch', 'client', 'hello', 'auth', 'shutdown', 'debug', 'sync', 'psync', 'replicaof', 'slaveof'
])

class BadRequest extends Error {}

function toArgs (raw: unknown): string[] {
  if (!Array.isArray(raw) || raw.length === 0) throw new BadRequest('ERR a command must be a non-empty JSON array')
  return raw.map((part) => {
    if (typeof part === 'string') return part
    if (typeof part === 'number' || typeof part === 'boolean') return String(part)
    throw new BadRequest('ERR command arguments must be strings or numbers')
  })
}

function checkSupported (args: string[]): void {
  const name = args[0].toLowerCase()
  if (UNSUPPORTED.has(name)) throw new BadRequest(`ERR ${name.toUpperCase()} is not supported over REST`)
  if ((name === 'xread' || name === 'xreadgroup') && args.some((a) => a.toLowerCase() === 'block')) {
    throw new BadRequest('ERR blocking commands are not supported over REST')
  }
}

function encode (reply: Reply, base64: boolean): unknown {
  if (reply instanceof Error) throw reply
  if (Buffer.isBuffer(reply)) return base64 ? reply.toString('base64') : reply.toString('utf8')
  if (typeof reply === 'string') return base64 ? Buffer.from(reply).toString('base64') : reply
  if (Array.isArray(reply)) return reply.map((r) => r instanceof Error ? r.message : encode(r, base64))
  // ioredis turns some replies (HGETALL) into objects; Upstash sends the flat array Redis sent.
  if (reply !== null && typeof reply === 'object') return encode(Object.entries(reply).flat() as Reply, base64)
  return reply
}

function entry (err: Error | null, reply: unknown, base64: boolean): { result?: unknown, error?: string } {
  if (err !== null) return { error: err.message }
  try {
    return { result: encode(reply as Reply, base64) }
  } catch (e) {
    return { error: (e as Error).message }
  }
}

function authorized (req: http.IncomingMessage, url: URL, token: Buffer): boolean {
  const header = req.headers.authorization ?? ''
  const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : (url.searchParams.get('_token') ?? ''))
  return given.length === token.length && timingSafeEqual(given, token)
}

async function readBody (req: http.IncomingMessage, limit: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > limit) throw new BadRequest('ERR request body too large')
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

export async function startRestBridge (opts: RestBridgeOptions): Promise<RestBridge> {
  const redis = new Redis(opts.redisUrl, { protocol: 2, lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false, commandTimeout: 5000, connectionName: 'rest-bridge' })
  redis.on('error', () => {}) // a down Redis becomes an error body per request
  await redis.connect()
  const token = Buffer.from(opts.token)
  const limit = opts.maxBodyBytes ?? 10 * 1024 * 1024
  const streams = new Set<{ res: http.ServerResponse, sub: Redis }>()
  const requests = { command: 0, pipeline: 0, multiExec: 0, subscribe: 0 }
  const syncToken = (): string => String(requests.command + requests.pipeline + requests.multiExec)

  function send (res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'upstash-sync-token': syncToken() })
    res.end(text)
  }

  async function subscribe (res: http.ServerResponse, kind: 'subscribe' | 'psubscribe', target: string): Promise<void> {
    requests.subscribe++
    const sub = redis.duplicate({ lazyConnect: true, enableOfflineQueue: false, autoResubscribe: false, commandTimeout: undefined, retryStrategy: () => null })
    sub.on('error', () => {})
    const stream = { res, sub }
    streams.add(stream)
    const end = (): void => {
      streams.delete(stream)
      sub.disconnect()
      if (!res.writableEnded) res.end()
    }
    // Not req's 'close': a request without a body is complete at once, and then it never fires when the client goes away.
    res.on('close', end)
    sub.on('end', end) // when the backing Redis goes away the stream ends, as Upstash's does
    const write = (fields: string[]): void => {
      res.write(fields.join(',').split('\n').map((line) => `data: ${line}\n`).join('') + '\n')
    }
    sub.on('message', (channel: string, message: string) => write(['message', channel, message]))
    sub.on('pmessage', (pattern: string, channel: string, message: string) => write(['pmessage', pattern, channel, message]))
    try {
      await sub.connect()
      const count = kind === 'subscribe' ? await sub.subscribe(target) : await sub.psubscribe(target)
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'upstash-sync-token': syncToken() })
      write([kind, target, String(count)])
    } catch (err) {
      streams.delete(stream)
      sub.disconnect()
      if (!res.headersSent) send(res, 500, { error: (err as Error).message })
    }
  }

  async function handle (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://bridge')
    if (!authorized(req, url, token)) {
      send(res, 401, { error: 'Unauthorized' })
      return
    }
    const base64 = String(req.headers['upstash-encoding'] ?? '').toLowerCase() === 'base64'
    const segments = url.pathname.split('/').filter((s) => s !== '').map((s) => decodeURIComponent(s))
    const body = await readBody(req, limit)
    const first = segments[0]?.toLowerCase()

    if ((first === 'subscribe' || first === 'psubscribe') && segments.length === 2) {
      await subscribe(res, first, segments[1])
      return
    }
    if (first === 'pipeline' || first === 'multi-exec') {
      const parsed: unknown = JSON.parse(body)
      if (!Array.isArray(parsed) || parsed.length === 0) throw new BadRequest('ERR a pipeline must be a non-empty array of commands')
      const commands = parsed.map(toArgs)
      commands.forEach(checkSupported)
      const batch = first === 'pipeline' ? redis.pipeline() : redis.multi()
      for (const [name, ...args] of commands) batch.callBuffer(name, ...args)
      if (first === 'pipeline') requests.pipeline++
      else requests.multiExec++
      const results = await batch.exec()
      if (results === null) throw new BadRequest('EXECABORT Transaction discarded')
      send(res, 200, results.map(([err, reply]) => entry(err, reply, base64)))
      return
    }
    let args: string[]
    if (segments.length > 0) {
      args = body !== '' ? [...segments, body] : segments
    } else {
      args = toArgs(JSON.parse(body))
    }
    checkSupported(args)
    requests.command++
    const reply = await redis.callBuffer(args[0], ...args.slice(1)) as Reply
    send(res, 200, { result: encode(reply, base64) })
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      if (res.headersSent) {
        res.end()
        return
      }
      send(res, err instanceof BadRequest || err instanceof SyntaxError || err.name === 'ReplyError' ? 400 : 500, { error: err instanceof SyntaxError ? 'ERR failed to parse the request body as JSON' : err.message })
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
      for (const { res, sub } of streams) {
        sub.disconnect()
        res.end()
      }
      streams.clear()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      redis.disconnect()
    }
  }
}

if (require.main === module) {
  const redisUrl = process.env.REDIS_URL
  const token = process.env.UPSTASH_REDIS_REST_TOKEN ?? process.env.REST_BRIDGE_TOKEN
  if (redisUrl === undefined || redisUrl === '' || token === undefined || token === '') {
    process.stderr.write('rest-bridge needs REDIS_URL (the Redis to serve, e.g. redis://127.0.0.1:6379) and UPSTASH_REDIS_REST_TOKEN (any token your app will send)\n')
    process.exit(1)
  }
  startRestBridge({ redisUrl, token, port: Number(process.env.REST_BRIDGE_PORT ?? 8079), host: process.env.REST_BRIDGE_HOST ?? '127.0.0.1' })
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
