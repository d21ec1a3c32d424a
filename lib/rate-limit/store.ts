import { createHash } from 'node:crypto'
import { LRUCache } from 'lru-cache'
import { lua, type RedisCommands } from '../redis-commands'

// Where rate-limit counts live, one small store per kind of tier behind one
// contract: a decision is one round trip (one script) on tcp and rest, and
// none in memory. Keys arrive hashed (`limitId`): they are often IP addresses
// or user ids, which must not appear in Redis key names.
//
// Windows are aligned per key, not to the clock: each key's window starts at
// an offset taken from its hash, so the keys of a fleet do not all reset in
// the same millisecond (the burst a fixed window is known for is per key, not
// global). Every instance computes the same window index from its own clock;
// clocks a few ms apart move a decision at a window's edge, never the count.

export type Algorithm = 'fixed-window' | 'sliding-window'

export interface RateLimitRule {
  /** Requests allowed per window. */
  limit: number
  windowMs: number
  algorithm: Algorithm
}

export interface Decision {
  allowed: boolean
  limit: number
  /** Requests still allowed in this window after this one. */
  remaining: number
  /** Milliseconds until a request would be allowed again (refused), or until the window resets (allowed). */
  resetMs: number
}

export interface RateLimitStore {
  /** Counts one request for `id` (a hashed key) under `rule` at `now`, and decides. */
  consume: (id: string, rule: RateLimitRule, now: number) => Promise<Decision>
}

/** The key as it may appear in Redis and in memory: a hash, never the key itself. */
export function limitId (key: string): string {
  return createHash('sha256').update(key).digest('base64url').slice(0, 22)
}

/** A rule's own counts: the same key under another window or algorithm counts apart (the limit is only where it refuses). */
function ruleName (rule: RateLimitRule): string {
  return `${rule.algorithm === 'fixed-window' ? 'f' : 's'}${rule.windowMs}`
}

interface Window {
  /** The window's number for this key (its start is index * windowMs + offset). */
  index: number
  /** Fraction of the window already elapsed, 0..1. */
  elapsed: number
  /** Milliseconds until this window ends. */
  endsIn: number
}

function windowOf (id: string, windowMs: number, now: number): Window {
  const offset = Buffer.from(id, 'base64url').readUInt32BE(0) % windowMs
  const since = now - offset
  const index = Math.floor(since / windowMs)
  const into = since - index * windowMs
  return { index, elapsed: into / windowMs, endsIn: windowMs - into }
}

/** The weighted count of a sliding window: the previous window's share that still overlaps, plus this one's. */
function slidingCount (previous: number, current: number, w: Window): number {
  return Math.floor(previous * (1 - w.elapsed)) + current
}

/** How long until a sliding window at `previous`/`current` admits one more request. */
function slidingWait (previous: number, current: number, limit: number, w: Window, windowMs: number): number {
  if (current < limit) {
    // previous * (1 - x) must fall below limit - current, x being the elapsed fraction.
    const x = 1 - (limit - current) / previous
    return Math.max(1, Math.ceil(x * windowMs - w.elapsed * windowMs))
  }
  // This window is full by itself: after it ends it becomes the previous one.
  return w.endsIn + Math.max(1, Math.ceil((1 - limit / current) * windowMs))
}

function decide (rule: RateLimitRule, w: Window, previous: number, current: number, allowed: boolean): Decision {
  const { limit, windowMs } = rule
  if (rule.algorithm === 'fixed-window') {
    return { allowed, limit, remaining: Math.max(0, limit - current), resetMs: w.endsIn }
  }
  const used = slidingCount(previous, current, w)
  return {
    allowed,
    limit,
    remaining: Math.max(0, limit - used),
    resetMs: allowed ? w.endsIn : slidingWait(previous, current, limit, w, windowMs)
  }
}

// Fixed window: one INCR, and the expiry when it created the key.
// Billed: the EVAL and INCR, plus PEXPIRE on the first request of a window.
const FIXED = lua(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`, (_keys, reply) => reply === undefined || Number(reply) === 1 ? 2 : 1)

// Sliding window (this window's count plus the previous one's, weighted by
// how much of it still overlaps): a refused request is not counted, so a
// client that keeps knocking does not push its own window further out.
// Billed: the EVAL and MGET; INCR when allowed; PEXPIRE on the window's first.
const SLIDING = lua(`
local counts = redis.call('MGET', KEYS[1], KEYS[2])
local previous = tonumber(counts[1]) or 0
local current = tonumber(counts[2]) or 0
if math.floor(previous * tonumber(ARGV[2])) + current >= tonumber(ARGV[1]) then
  return { 0, previous, current, 0 }
end
current = redis.call('INCR', KEYS[2])
local created = 0
if current == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  created = 1
end
return { 1, previous, current, created }`, (_keys, reply) => {
  if (!Array.isArray(reply)) return 3
  return 1 + Number(reply[0]) + Number(reply[3])
})

export function redisRateLimitStore (commands: RedisCommands, prefix: string): RateLimitStore {
  // The braces keep a sliding window's two keys in one cluster slot.
  const key = (id: string, rule: RateLimitRule, index: number): string => `${prefix}:rl:{${id}}:${ruleName(rule)}:${index}`
  return {
    async consume (id, rule, now) {
      const w = windowOf(id, rule.windowMs, now)
      if (rule.algorithm === 'fixed-window') {
        const current = Number(await commands.eval(FIXED, [key(id, rule, w.index)], [rule.windowMs]))
        return decide(rule, w, 0, current, current <= rule.limit)
      }
      // The previous window's count is read for a whole window after it ended.
      const reply = await commands.eval(SLIDING, [key(id, rule, w.index - 1), key(id, rule, w.index)], [rule.limit, 1 - w.elapsed, 2 * rule.windowMs]) as number[]
      return decide(rule, w, Number(reply[1]), Number(reply[2]), Number(reply[0]) === 1)
    }
  }
}

/** Memory tier: the same windows in this process, bounded (the least recently used keys are forgotten first). */
export function memoryRateLimitStore (maxKeys = 100_000): RateLimitStore {
  const counts = new LRUCache<string, number>({ max: maxKeys, ttlAutopurge: false })
  const key = (id: string, rule: RateLimitRule, index: number): string => `${id}:${ruleName(rule)}:${index}`
  const incr = (k: string, ttl: number): number => {
    const n = (counts.get(k) ?? 0) + 1
    counts.set(k, n, n === 1 ? { ttl } : { noUpdateTTL: true })
    return n
  }
  return {
    async consume (id, rule, now) {
      const w = windowOf(id, rule.windowMs, now)
      if (rule.algorithm === 'fixed-window') {
        const current = incr(key(id, rule, w.index), w.endsIn)
        return decide(rule, w, 0, current, current <= rule.limit)
      }
      const previous = counts.get(key(id, rule, w.index - 1)) ?? 0
      const current = counts.get(key(id, rule, w.index)) ?? 0
      if (slidingCount(previous, current, w) >= rule.limit) return decide(rule, w, previous, current, false)
      return decide(rule, w, previous, incr(key(id, rule, w.index), w.endsIn + rule.windowMs), true)
    }
  }
}

/** The store of a binding: the shared count on a Redis tier, this instance's on memory. */
export function rateLimitStoreFor (commands: RedisCommands | null, prefix: string): RateLimitStore {
  return commands === null ? memoryRateLimitStore() : redisRateLimitStore(commands, prefix)
}
