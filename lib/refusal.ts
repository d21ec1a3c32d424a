import type { ReadVariable } from './config'

// A Redis that answers but refuses is not down: a full one (OOM under
// maxmemory) refuses writes and serves reads; a provider whose request quota
// is spent refuses everything while its endpoint and credentials are fine.
// Both are states with a cause and a fix, not a diagnosis of the network.

export type RefusalCause = 'full' | 'quota'

/** Why a reachable tier refuses commands: on its live state while it does. No address in `reason`. */
export interface Refusal {
  cause: RefusalCause
  /** One sentence: what is refused, why, and what to change. */
  reason: string
  since: string
}

const FULL = /\bOOM command not allowed\b|\bDB capacity quota exceeded\b/
const QUOTA = /max (?:daily )?requests? limit exceeded/i

/** Whether a command's error says the tier refuses rather than fails: full (writes) or quota (everything). */
export function refusalCause (err: unknown): RefusalCause | null {
  const message = err instanceof Error ? err.message : String(err)
  if (QUOTA.test(message)) return 'quota'
  if (FULL.test(message)) return 'full'
  return null
}

import type { LuaScript } from './redis-commands'

// Commands Redis refuses while full (its `denyoom` ones, as far as this app's scripts use them).
// A script that calls none (a sweep, a count: ZREMRANGEBYSCORE, DEL, PUBLISH) runs while full too.
const GROWS = /redis\.p?call\(\s*['"](?:SET|SETEX|PSETEX|SETNX|MSET|GETSET|APPEND|INCR|INCRBY|HSET|HMSET|HSETNX|ZADD|ZINCRBY|SADD|LPUSH|RPUSH|XADD)['"]/i
const grows = new WeakMap<LuaScript, boolean>()

/** Whether a script can add data: answered while a tier is full, it shows that Redis accepts writes again. */
export function addsData (script: LuaScript): boolean {
  let known = grows.get(script)
  if (known === undefined) {
    known = GROWS.test(script.source)
    grows.set(script, known)
  }
  return known
}

/** maxmemory and its policy as the server reported them; null where it would not say. */
export interface MemoryLimits {
  /** Bytes; 0 is no limit. */
  maxmemory: number | null
  policy: string | null
  usedMemory: number | null
}

export const UNKNOWN_MEMORY: MemoryLimits = { maxmemory: null, policy: null, usedMemory: null }

/** The fields of `INFO memory` this needs (the same on managed Redis that refuses CONFIG GET). */
export function parseMemoryInfo (text: string): MemoryLimits {
  const field = (name: string): string | null => new RegExp(`^${name}:(\\S+)`, 'm').exec(text)?.[1] ?? null
  const number = (name: string): number | null => {
    const value = Number(field(name) ?? Number.NaN)
    return Number.isFinite(value) ? value : null
  }
  return { maxmemory: number('maxmemory'), policy: field('maxmemory_policy'), usedMemory: number('used_memory') }
}

export function formatBytes (bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++ }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0).replace(/\.0$/, '')} ${units[unit]}`
}

/** "maxmemory 2 MB, noeviction", "no maxmemory, noeviction", or what is unknown. */
export function describeMemory (limits: MemoryLimits): string {
  const max = limits.maxmemory === null ? 'maxmemory unknown' : limits.maxmemory === 0 ? 'no maxmemory' : `maxmemory ${formatBytes(limits.maxmemory)}`
  return `${max}, ${limits.policy ?? 'eviction policy unknown'}`
}

/** A policy under which Redis deletes keys it chose when full, BullMQ's included. */
export function evicts (limits: MemoryLimits): boolean {
  return limits.policy !== null && limits.policy !== 'noeviction'
}

/** The boot warning for queues on a Redis that may evict their keys, or null. */
export function evictionWarning (tier: string, limits: MemoryLimits): string | null {
  if (!evicts(limits)) return null
  return `tier ${tier}: maxmemory-policy is ${limits.policy ?? ''} (${describeMemory(limits)}): when Redis fills it may evict BullMQ's keys (jobs, locks, schedulers), and BullMQ requires noeviction; ` +
    'set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, or the provider\'s console), or give the queues a Redis of their own (REDIS_URL of a worker and QUEUES_ENABLED=false here)'
}

/** What a feature keeps in Redis and the variables that bound it, as said in the full message. */
function kept (feature: string, read: ReadVariable): { what: string, lower?: string } | null {
  const value = (name: string, fallback: string): string => read(name) ?? fallback
  // Quoted as set: the feature parsed the same variable at boot and refused a bad value then.
  switch (feature) {
    case 'cache':
      return { what: `cache entries for CACHE_DEFAULT_TTL (${value('CACHE_DEFAULT_TTL', '60s')}) or their own TTL`, lower: 'CACHE_DEFAULT_TTL' }
    case 'sse':
      return { what: `SSE histories of SSE_HISTORY (${value('SSE_HISTORY', '1000')}) events per channel for SSE_HISTORY_TTL (${value('SSE_HISTORY_TTL', '1h')})`, lower: 'SSE_HISTORY or SSE_HISTORY_TTL' }
    case 'presence':
      return { what: `presence of users online (PRESENCE_TTL_MS ${value('PRESENCE_TTL_MS', '60000')}) and last seen for PRESENCE_LAST_SEEN_TTL (${value('PRESENCE_LAST_SEEN_TTL', '7d')})` }
    case 'queues':
      return { what: 'queue jobs until they run, then as removeOnComplete/removeOnFail keep them' }
    default:
      return null
  }
}

/**
 * The sentence of a full Redis: its limit and policy, what this app keeps there with the
 * variables that bound it (`features`: those active on the tier), and what to change.
 */
export function fullReason (limits: MemoryLimits, features: readonly string[], read: ReadVariable): string {
  const held = features.flatMap((f) => kept(f, read) ?? [])
  const keeps = held.length === 0 ? '' : `; this app keeps there ${held.map((k) => k.what).join(', ')}`
  const lower = held.flatMap((k) => k.lower === undefined ? [] : [k.lower])
  const policy = features.includes('queues')
    ? 'raise maxmemory (an eviction policy is no way out here: BullMQ requires noeviction)'
    : 'raise maxmemory, or set maxmemory-policy volatile-lru so that Redis evicts keys with a TTL (all of this app\'s cache, SSE and presence keys have one) instead of refusing writes'
  return `Redis is full (${describeMemory(limits)}): writes are refused, reads are served${keeps}; ${lower.length > 0 ? `lower ${lower.join(' or ')}, or ` : ''}${policy}`
}
