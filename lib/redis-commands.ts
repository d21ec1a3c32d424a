
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
  /** A Redis Cluster: a script's keys must share a slot, and `scan` walks every master. */
  readonly cluster: boolean
  /** A cluster with sharded pub/sub (Redis 7): `publish` to a `{hash-tagged}` channel is SPUBLISH. */
  readonly shardedPubSub: boolean
  /** Commands sent so far (round trips). */
  readonly sent: () => number
}
