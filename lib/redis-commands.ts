import { createHash } from 'node:crypto'
import { Command, type Redis } from 'ioredis'
import type { Redis as UpstashRedis } from '@upstash/redis'
import { withTimeout } from './deadline'

// The few Redis commands the feature stores need, behind one interface so a
// store is written once for tcp and rest. Every call has a deadline and is
// counted (on Upstash REST each command is billed).

export interface RedisCommands {
  readonly tier: 'tcp' | 'rest'
  get: (key: string) => Promise<string | null>
  /** Run a Lua script; tcp uses EVALSHA with an EVAL fallback, rest always EVAL (one round trip). */
  eval: (script: string, keys: string[], args: Array<string | number>) => Promise<unknown>
  scan: (cursor: string, match: string, count: number) => Promise<[string, string[]]>
  /** DEL that frees the memory in the background (large sets do not stall Redis). */
  unlink: (keys: string[]) => Promise<number>
  publish: (channel: string, message: string) => Promise<number>
  /** Commands sent so far (round trips). */
  readonly sent: () => number
}

function sha1 (text: string): string {
  return createHash('sha1').update(text).digest('hex')
}

export function tcpCommands (client: Redis, timeoutMs: number): RedisCommands {
  let sent = 0
  // A Command whose timer we start ourselves: ioredis then keeps ours instead of
  // adding its own (REDIS_COMMAND_TIMEOUT_MS), so each call costs one timer and no race.
  function send<T> (name: string, args: Array<string | number>): Promise<T> {
    sent++
    const command = new Command(name, args, { replyEncoding: 'utf8' })
    command.setTimeout(timeoutMs)
    return client.sendCommand(command) as Promise<T>
  }
  const shas = new Map<string, string>()
  return {
    tier: 'tcp',
    get: (key) => send<string | null>('get', [key]), // no async wrapper: this is the hot path of an L2 hit
    async eval (script, keys, args) {
      let sha = shas.get(script)
      if (sha === undefined) {
        sha = sha1(script)
        shas.set(script, sha)
      }
      try {
        return await send('evalsha', [sha, keys.length, ...keys, ...args])
      } catch (err) {
        if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
        return await send('eval', [script, keys.length, ...keys, ...args])
      }
    },
    scan: async (cursor, match, count) => await send<[string, string[]]>('scan', [cursor, 'MATCH', match, 'COUNT', count]),
    unlink: async (keys) => await send<number>('unlink', [...keys]),
    publish: async (channel, message) => await send<number>('publish', [channel, message]),
    sent: () => sent
  }
}

export function restCommands (client: UpstashRedis, timeoutMs: number): RedisCommands {
  let sent = 0
  const run = async <T>(fn: () => Promise<T>): Promise<T> => {
    sent++
    return await withTimeout(fn(), timeoutMs)
  }
  return {
    tier: 'rest',
    get: async (key) => await run(async () => await client.get<string>(key)),
    eval: async (script, keys, args) => await run(async () => await client.eval(script, keys, args.map(String))),
    async scan (cursor, match, count) {
      const [next, keys] = await run(async () => await client.scan(cursor, { match, count }))
      return [String(next), keys]
    },
    unlink: async (keys) => await run(async () => await client.unlink(...keys)),
    publish: async (channel, message) => await run(async () => await client.publish(channel, message)),
    sent: () => sent
  }
}
