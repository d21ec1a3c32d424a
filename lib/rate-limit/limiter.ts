import { LRUCache } from 'lru-cache'
import { InvalidInputError } from '../errors'
import { limitId, memoryRateLimitStore, type Algorithm, type Decision, type RateLimitRule, type RateLimitStore } from './store'

// A decision never waits on Redis longer than its deadline, and an outage
// never multiplies the limit by the number of instances:
// - a key refused once is refused in memory until its window frees a slot
//   (no round trip: a client hammering past its limit costs Redis nothing);
// - when the store fails or is late, the declared policy decides: `local`
//   counts in memory at the limit divided by the instances the fleet had the
//   last time Redis told us, `open` allows, `closed` refuses with the reason.

export type OutagePolicy = 'local' | 'open' | 'closed'

export interface ConsumeOptions {
  limit: number
  /** Milliseconds. */
  window: number
  algorithm?: Algorithm
}

export interface RateLimitDecision extends Decision {
  /** Who decided: the shared count, the local block list, or the outage policy. */
  source: 'shared' | 'blocked' | 'local' | 'open' | 'closed'
  /** Why a decision was not made on the shared count (the outage policy's reason). */
  reason?: string
  /** Requests refused for this key in this window, as this instance saw them (0 when allowed). */
  refused: number
}

export interface LimiterOptions {
  /**
   * The store of the tier the feature is bound to now (memory included). It
   * bounds its own calls: the Redis stores' commands carry the deadline
   * (RATE_LIMIT_TIMEOUT_MS), so a decision needs no timer of its own.
   */
  store: () => RateLimitStore
  /** Whether that store is shared by the fleet (tcp, rest) or is this process's own (memory). */
  shared: () => boolean
  /** The store's deadline, named in the reason of a decision it missed. */
  timeoutMs: number
  onOutage: OutagePolicy
  /** Instances sharing the limit, as last seen (at least 1). */
  instances: () => number
  /** Told once per decision the shared store could not make. */
  onStoreError?: (err: unknown) => void
  /** A store error as a caller may read it (Redis's own words, no command, key or address). */
  explain: (err: unknown) => string
  now?: () => number
}

export const MAX_KEY_LENGTH = 512
const MAX_LIMIT = 1_000_000_000

export interface Limiter {
  consume: (key: string, options: ConsumeOptions) => Promise<RateLimitDecision>
  /** Keys refused in memory right now. */
  blocked: () => number
}

export function validateConsume (key: unknown, options: ConsumeOptions): RateLimitRule {
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_KEY_LENGTH) {
    throw new InvalidInputError(`rate limit key: expected a string of 1-${MAX_KEY_LENGTH} characters`)
  }
  const { limit, window, algorithm = 'fixed-window' } = options
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIMIT) throw new InvalidInputError(`rate limit "limit": expected an integer from 1 to ${MAX_LIMIT}, got ${String(limit)}`)
  if (!Number.isSafeInteger(window) || window < 1) throw new InvalidInputError(`rate limit "window": expected a whole number of milliseconds of at least 1, got ${String(window)}`)
  if (algorithm !== 'fixed-window' && algorithm !== 'sliding-window') throw new InvalidInputError(`rate limit "algorithm": expected "fixed-window" or "sliding-window", got ${JSON.stringify(String(algorithm))}`)
  return { limit, windowMs: window, algorithm }
}

/** Why the shared count could not decide, in words a 503 or a log line can carry. */
function failure (err: Error, timeoutMs: number, explain: (err: unknown) => string): string {
  const late = (err as { code?: string }).code === 'ETIMEDOUT' || /timed out|did not answer/i.test(err.message)
  return late ? `the shared count did not answer within ${timeoutMs} ms (RATE_LIMIT_TIMEOUT_MS)` : `the shared count failed (${explain(err)})`
}

export function createLimiter (opts: LimiterOptions): Limiter {
  const now = opts.now ?? Date.now
  // id + rule -> when the key may try again, and how often it was refused meanwhile.
  // Bounded: forgetting a key only costs it one round trip.
  const blocked = new LRUCache<string, { until: number, refused: number }>({ max: 100_000 })
  const local = memoryRateLimitStore()
  // A hot key's hash is computed once, not per decision.
  const ids = new LRUCache<string, string>({ max: 10_000 })
  const idOf = (key: string): string => {
    let id = ids.get(key)
    if (id === undefined) ids.set(key, id = limitId(key))
    return id
  }

  async function onOutage (id: string, rule: RateLimitRule, at: number, reason: string): Promise<RateLimitDecision> {
    if (opts.onOutage === 'open') return { allowed: true, limit: rule.limit, remaining: rule.limit, resetMs: rule.windowMs, source: 'open', reason, refused: 0 }
    if (opts.onOutage === 'closed') return { allowed: false, limit: rule.limit, remaining: 0, resetMs: rule.windowMs, source: 'closed', reason, refused: 1 }
    const share = Math.max(1, Math.floor(rule.limit / Math.max(1, opts.instances())))
    const decision = await local.consume(id, { ...rule, limit: share }, at)
    return { ...decision, source: 'local', reason, refused: decision.allowed ? 0 : 1 }
  }

  return {
    async consume (key, options) {
      const rule = validateConsume(key, options)
      const id = idOf(key)
      const ruleKey = `${id}:${rule.algorithm}:${rule.limit}:${rule.windowMs}`
      const at = now()
      const block = blocked.get(ruleKey)
      if (block !== undefined && block.until > at) {
        block.refused++
        return { allowed: false, limit: rule.limit, remaining: 0, resetMs: block.until - at, source: 'blocked', refused: block.refused }
      }
      let decision: Decision
      try {
        decision = await opts.store().consume(id, rule, at)
      } catch (err) {
        opts.onStoreError?.(err)
        return await onOutage(id, rule, at, failure(err as Error, opts.timeoutMs, opts.explain))
      }
      if (!decision.allowed) blocked.set(ruleKey, { until: at + decision.resetMs, refused: 1 }, { ttl: decision.resetMs })
      return { ...decision, source: opts.shared() ? 'shared' : 'local', refused: decision.allowed ? 0 : 1 }
    },
    blocked: () => blocked.size
  }
}
