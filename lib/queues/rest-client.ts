import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { Readable } from 'node:stream'
import type { IRedisClient, IRedisTransaction } from 'bullmq'
import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import { billedOnFailure, isNoScript, type Meter } from '../redis-commands'
import { reduceRedisError, withoutCommand } from '../redact'
import { bullmqScriptCost } from './costs'

// BullMQ's own client contract (IRedisClient, the one its ioredis, node-redis
// and Bun adapters implement) over Upstash REST, for producing only: BullMQ
// builds every key and argument and registers its own Lua scripts through
// defineCommand, from the installed package, so a version bump cannot
// diverge; this adapter only carries them over HTTP.
//
// HTTP carries text and BullMQ packs job options with msgpack into binary
// arguments: those travel as hex, and a short prelude in front of each script
// decodes them before BullMQ's script runs, unchanged. A script is sent once
// (EVALSHA, then EVAL on NOSCRIPT; SCRIPT LOAD before a pipeline), so an `add`
// is one HTTP request.
//
// Every error leaves reduced to Redis's words: @upstash/redis would quote the
// whole command, i.e. BullMQ's script and the caller's packed job data.

const PRELUDE = `-- redis-tiers: the ARGV positions in the last argument came as hex over HTTP
local __hexed = table.remove(ARGV)
for __i in string.gmatch(__hexed, '%d+') do
  local __n = tonumber(__i)
  ARGV[__n] = (string.gsub(ARGV[__n], '..', function (h) return string.char(tonumber(h, 16)) end))
end
`

interface Script { keys: number, lua: string, sha: string, /** billed per call, the EVALSHA included */ cost: number }
type Arg = string | number | Buffer

type Batch = ReturnType<UpstashRedis['pipeline']>

/** One entry of a pipeline: a script, or a plain command added to the Upstash pipeline as it is sent. */
type Entry = { script: Script, keys: string[], argv: string[] } | { add: (batch: Batch) => void, hash?: true }

function encode (script: Script, args: unknown[]): { keys: string[], argv: string[] } {
  const flat = (args.length === 1 && Array.isArray(args[0]) ? args[0] : args) as Arg[]
  const keys = flat.slice(0, script.keys).map(String)
  const hexed: number[] = []
  const argv = flat.slice(script.keys).map((arg, i) => {
    if (Buffer.isBuffer(arg)) {
      hexed.push(i + 1)
      return arg.toString('hex')
    }
    return String(arg)
  })
  argv.push(hexed.join(','))
  return { keys, argv }
}

/** What a script call that answered `error` (or nothing) is billed. */
function billed (script: Script, error: unknown): number {
  return error !== undefined ? billedOnFailure(error, script.cost) : script.cost
}

/** `call`'s answer; its failure without the command text. */
async function reduced<T> (call: Promise<T>): Promise<T> {
  try {
    return await call
  } catch (err) {
    throw reduceRedisError(err)
  }
}

/** HGETALL as ioredis gives it: an object (Upstash answers a flat [field, value, ...] list, or null). */
function pairs (reply: unknown): Record<string, string> {
  if (reply !== null && typeof reply === 'object' && !Array.isArray(reply)) return reply as Record<string, string>
  const list = Array.isArray(reply) ? reply as string[] : []
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < list.length; i += 2) out[list[i]] = list[i + 1]
  return out
}

class RestTransaction implements IRedisTransaction {
  private readonly entries: Entry[] = []
  constructor (private readonly client: RestBullmqClient, private readonly atomic: boolean) {}

  private push (add: (batch: Batch) => void, hash?: true): this {
    this.entries.push({ add, hash })
    return this
  }

  hgetall (key: string): this { return this.push((b) => b.hgetall(key), true) }
  hset (key: string, data: Record<string, string | number>): this { return this.push((b) => b.hset(key, data)) }
  hscan (key: string, cursor: string | number, options?: { COUNT?: number }): this { return this.push((b) => b.hscan(key, cursor, { count: options?.COUNT })) }
  smembers (key: string): this { return this.push((b) => b.smembers(key)) }
  sscan (key: string, cursor: string | number, options?: { COUNT?: number }): this { return this.push((b) => b.sscan(key, cursor, { count: options?.COUNT })) }
  zrange (key: string, start: number, end: number): this { return this.push((b) => b.zrange(key, start, end)) }
  lrange (key: string, start: number, end: number): this { return this.push((b) => b.lrange(key, start, end)) }
  llen (key: string): this { return this.push((b) => b.llen(key)) }
  del (...keys: string[]): this { return this.push((b) => b.del(...keys)) }

  runCommand (name: string, args: unknown[]): this {
    const script = this.client.script(name)
    this.entries.push({ script, ...encode(script, args) })
    return this
  }

  async exec (): Promise<Array<[Error | null, unknown]> | null> {
    return await this.client.batch(this.entries, this.atomic)
  }
}

export class RestBullmqClient extends EventEmitter implements IRedisClient {
  status = 'ready'
  readonly isCluster = false
  options: Record<string, unknown> = {}
  private readonly scripts = new Map<string, Script>()
  /** Scripts known to be in the server's script cache. */
  private readonly loaded = new Set<string>()

  /** `meter` is told of every HTTP request with the commands it is billed. */
  constructor (private readonly rest: UpstashRedis, private readonly meter: Meter = () => {}) {
    super()
  }

  script (name: string): Script {
    const script = this.scripts.get(name)
    if (script === undefined) throw new Error(`BullMQ command ${name} was never defined`)
    return script
  }

  private async raw<T> (...command: Array<string | number>): Promise<T> {
    this.meter(1)
    return await reduced(this.rest.exec<T>(command.map(String) as [string, ...string[]]))
  }

  async connect (): Promise<void> {}
  disconnect (): void {
    this.status = 'end'
    this.emit('end')
  }

  async quit (): Promise<string> {
    this.disconnect()
    return 'OK'
  }

  duplicate (): IRedisClient {
    throw new Error('a second connection is not available over REST: BullMQ workers and queue events need a TCP Redis (REDIS_URL)')
  }

  defineCommand (name: string, definition: { numberOfKeys: number, lua: string }): void {
    const lua = PRELUDE + definition.lua
    this.scripts.set(name, { keys: definition.numberOfKeys, lua, sha: createHash('sha1').update(lua).digest('hex'), cost: bullmqScriptCost(name) })
  }

  async runCommand (name: string, args: unknown[]): Promise<unknown> {
    const script = this.script(name)
    const { keys, argv } = encode(script, args)
    try {
      const result = await reduced(this.rest.evalsha(script.sha, keys, argv))
      this.loaded.add(script.sha)
      this.meter(script.cost)
      return result
    } catch (err) {
      this.meter(billed(script, err))
      if (!isNoScript(err)) throw err
      this.loaded.delete(script.sha)
      return await this.eval(script, keys, argv)
    }
  }

  private async eval (script: Script, keys: string[], argv: string[]): Promise<unknown> {
    this.meter(script.cost)
    return await reduced(this.rest.eval(script.lua, keys, argv))
  }

  /** A pipeline or MULTI/EXEC as one HTTP request (after one SCRIPT LOAD per script this process has not sent yet). */
  async batch (entries: Entry[], atomic: boolean): Promise<Array<[Error | null, unknown]>> {
    for (const entry of entries) {
      if ('script' in entry && !this.loaded.has(entry.script.sha)) {
        await this.raw('SCRIPT', 'LOAD', entry.script.lua)
        this.loaded.add(entry.script.sha)
      }
    }
    const batch = atomic ? this.rest.multi() : this.rest.pipeline()
    for (const entry of entries) {
      if ('script' in entry) batch.evalsha(entry.script.sha, entry.keys, entry.argv)
      else entry.add(batch)
    }
    let replies: Awaited<ReturnType<Batch['exec']>>
    try {
      replies = await reduced(batch.exec({ keepErrors: true }))
    } finally {
      // Billed as answered: what each entry ran (nothing for one answered NOSCRIPT); the whole batch if no answer came.
      this.meter(entries.reduce((n, entry, i) => n + ('script' in entry ? billed(entry.script, replies?.[i]?.error) : 1), 0))
    }
    const results: Array<[Error | null, unknown]> = []
    for (const [i, reply] of replies.entries()) {
      const entry = entries[i]
      if (reply.error !== undefined && 'script' in entry && isNoScript(reply.error)) {
        // The server lost its scripts (a restart): the script did not run, so running it again is safe.
        this.loaded.delete(entry.script.sha)
        results.push([null, await this.eval(entry.script, entry.keys, entry.argv)])
      } else {
        const hash = 'add' in entry && entry.hash === true
        results.push(reply.error !== undefined ? [new Error(withoutCommand(reply.error)), null] : [null, hash ? pairs(reply.result) : reply.result])
      }
    }
    return results
  }

  multi (): IRedisTransaction { return new RestTransaction(this, true) }
  pipeline (): IRedisTransaction { return new RestTransaction(this, false) }

  async hgetall (key: string): Promise<Record<string, string>> { return pairs(await this.raw('HGETALL', key)) }
  async hget (key: string, field: string): Promise<string | null> { return await this.raw('HGET', key, field) }
  async hmget (key: string, ...fields: string[]): Promise<Array<string | null>> { return await this.raw('HMGET', key, ...fields) }
  async hset (key: string, data: Record<string, string | number>): Promise<number> { return await this.raw('HSET', key, ...Object.entries(data).flat()) }
  async hdel (key: string, ...fields: string[]): Promise<number> { return await this.raw('HDEL', key, ...fields) }
  async hexists (key: string, field: string): Promise<number> { return await this.raw('HEXISTS', key, field) }
  async get (key: string): Promise<string | null> { return await this.raw('GET', key) }
  async set (key: string, value: string | number, options?: { PX?: number, EX?: number }): Promise<string | null> {
    return await this.raw('SET', key, value, ...(options?.PX !== undefined ? ['PX', options.PX] : options?.EX !== undefined ? ['EX', options.EX] : []))
  }

  async del (...keys: string[]): Promise<number> { return await this.raw('DEL', ...keys) }
  async zrange (key: string, start: number, end: number, options?: { WITHSCORES?: boolean }): Promise<string[]> { return await this.raw('ZRANGE', key, start, end, ...(options?.WITHSCORES === true ? ['WITHSCORES'] : [])) }
  async zrevrange (key: string, start: number, end: number, options?: { WITHSCORES?: boolean }): Promise<string[]> { return await this.raw('ZREVRANGE', key, start, end, ...(options?.WITHSCORES === true ? ['WITHSCORES'] : [])) }
  async zcard (key: string): Promise<number> { return await this.raw('ZCARD', key) }
  async zscore (key: string, member: string): Promise<string | null> { return await this.raw('ZSCORE', key, member) }
  async lrange (key: string, start: number, end: number): Promise<string[]> { return await this.raw('LRANGE', key, start, end) }
  async llen (key: string): Promise<number> { return await this.raw('LLEN', key) }
  async ltrim (key: string, start: number, end: number): Promise<string> { return await this.raw('LTRIM', key, start, end) }
  async lpos (key: string, value: string): Promise<number | null> { return await this.raw('LPOS', key, value) }
  async smembers (key: string): Promise<string[]> { return await this.raw('SMEMBERS', key) }
  async xadd (key: string, id: string, fields: Record<string, string | number>, options?: { MAXLEN?: number, approximate?: boolean }): Promise<string> {
    const trim = options?.MAXLEN !== undefined ? ['MAXLEN', ...(options.approximate === true ? ['~'] : []), options.MAXLEN] : []
    return await this.raw('XADD', key, ...trim, id, ...Object.entries(fields).flat())
  }

  async xread (): Promise<never> { throw new Error('XREAD is a blocking read: queue events need a TCP Redis (REDIS_URL)') }
  async xtrim (key: string, strategy: 'MAXLEN', threshold: number, options?: { approximate?: boolean }): Promise<number> {
    return await this.raw('XTRIM', key, strategy, ...(options?.approximate === true ? ['~'] : []), threshold)
  }

  async bzpopmin (): Promise<never> { throw new Error('BZPOPMIN is a blocking command: workers need a TCP Redis (REDIS_URL)') }
  async info (): Promise<string> { return await this.raw('INFO') }
  async clientSetName (): Promise<string> { return 'OK' } // no connection to name over HTTP
  async clientList (): Promise<string> { return '' }
  async clientInfo (): Promise<string> { return '' }
  async scan (cursor: string | number, options: { MATCH?: string, COUNT?: number }): Promise<[string, string[]]> {
    const [next, keys] = await this.raw<[string | number, string[]]>('SCAN', cursor, ...(options.MATCH !== undefined ? ['MATCH', options.MATCH] : []), ...(options.COUNT !== undefined ? ['COUNT', options.COUNT] : []))
    return [String(next), keys]
  }

  scanStream (options: { match: string, count?: number }): Readable {
    const scan = this.scan.bind(this)
    return Readable.from((async function * () {
      let cursor = '0'
      do {
        const [next, keys] = await scan(cursor, { MATCH: options.match, COUNT: options.count })
        cursor = next
        if (keys.length > 0) yield keys
      } while (cursor !== '0')
    })(), { objectMode: true })
  }
}
