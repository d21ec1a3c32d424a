import type { RedisTier } from './resolve-tier'

// The few Redis commands the feature stores need, behind one interface so a
// store is written once for tcp and rest. Every call has a deadline and is
// metered: one round trip, and the commands a metered provider bills for it
// (Upstash bills every command a Lua script runs, as well as the EVAL).

/** A Lua script and what one call of it is billed, known from its source. */
export interface LuaScript {
  readonly source: string
  /**
   * Commands one call is billed, the EVAL included, from its number of keys and its reply: the
   * `redis.call`s it made on the path its reply shows (a script whose reply cannot show its path
   * returns its own count). A call that failed (undefined reply) counts what every path runs.
   */
  readonly cost: (keys: number, reply: unknown) => number
}

/** A script whose cost is `1 + commands` (a number, or a function of its keys and reply). */
export function lua (source: string, commands: number | ((keys: number, reply: unknown) => number)): LuaScript {
  return { source, cost: typeof commands === 'number' ? () => 1 + commands : (keys, reply) => 1 + commands(keys, reply) }
}

/** Told once per round trip, with the commands it is billed. */
export type Meter = (commands: number) => void

export interface RedisCommands {
  readonly tier: RedisTier
  get: (key: string) => Promise<string | null>
  /** Run a Lua script; tcp uses EVALSHA with an EVAL fallback, rest always EVAL (one round trip). */
  eval: (script: LuaScript, keys: string[], args: Array<string | number>) => Promise<unknown>
  scan: (cursor: string, match: string, count: number) => Promise<[string, string[]]>
  /** DEL that frees the memory in the background (large sets do not stall Redis). */
  unlink: (keys: string[]) => Promise<number>
  publish: (channel: string, message: string) => Promise<number>
  /** A Redis Cluster: a script's keys must share a slot, and `scan` walks every master. */
  readonly cluster: boolean
  /** A cluster with sharded pub/sub (Redis 7): `publish` to a `{hash-tagged}` channel is SPUBLISH. */
  readonly shardedPubSub: boolean
  /** Round trips sent so far through this adapter. */
  readonly sent: () => number
}

/** Redis's answer to EVALSHA of a script it does not hold (a new or restarted server): send the script itself. */
export function isNoScript (err: unknown): boolean {
  return /NOSCRIPT/.test(String((err as Error | undefined)?.message ?? err))
}

/**
 * What a script call that failed is billed: a NOSCRIPT answer ran nothing but the EVALSHA itself
 * (1); any other failure may have run the script, so `cost` (every path's commands) is billed.
 */
export function billedOnFailure (err: unknown, cost: number): number {
  return isNoScript(err) ? 1 : cost
}

/** The billed count of a reply that is a list (removed keys, swept users): its length, else 0. */
export function lengthOf (reply: unknown): number {
  return Array.isArray(reply) ? reply.length : 0
}
