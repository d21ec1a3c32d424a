import type { Meter } from './redis-commands'
import type { RedisTier } from './resolve-tier'

// What each feature costs in Redis commands, and the daily budget they share.
// Every round trip a feature store sends is told to its meter with the
// commands it is billed (a Lua script's own commands included), so a metered
// provider's bill can be read here before it arrives. The budget is this
// instance's count per UTC day (REDIS_DAILY_COMMAND_BUDGET): warned at 80 %
// and 100 % once a day each, and with REDIS_BUDGET_GUARD the features shed
// their optional work once it is spent instead of letting the provider refuse
// everything.

export interface UsageEntry {
  feature: string
  tier: RedisTier
  /** Round trips since boot (on Upstash REST, HTTP requests). */
  requests: number
  /** Commands billed since boot. */
  commands: number
  /** Commands billed since 00:00 UTC. */
  today: number
}

export interface BudgetReport {
  /** REDIS_DAILY_COMMAND_BUDGET, or null when none is set (commands are counted all the same). */
  limit: number | null
  /** Commands billed today (UTC) by every feature of this instance. */
  used: number
  remaining: number | null
  /** When the budget runs out at today's rate so far; null when it will not before the reset. */
  projectedExhaustion: string | null
  /** When it ran out today, if it did. */
  exhaustedAt: string | null
  /** The next 00:00 UTC. */
  resetsAt: string
  /** REDIS_BUDGET_GUARD: shed optional work once spent. */
  guard: boolean
  /** The guard is shedding now. */
  shedding: boolean
  /** Today's commands by feature, then tier. */
  features: Record<string, Partial<Record<RedisTier, number>>>
}

export interface UsageOptions {
  limit: number | null
  guard: boolean
  /** A threshold was crossed today: 80 or 100 (percent). */
  onThreshold: (percent: 80 | 100, report: BudgetReport) => void
  now?: () => number
}

export interface Usage {
  /** The meter of one feature on one tier (the same one for the life of the app). */
  meter: (feature: string, tier: RedisTier) => Meter
  entries: () => UsageEntry[]
  budget: () => BudgetReport
  /** The guard is on and today's budget is spent: optional work (cache L2 writes, SSE history) is shed. */
  readonly shedding: boolean
}

const DAY_MS = 86_400_000

/** The log line for a threshold crossed: what was used, what happens now, and the variables that change it. */
export function budgetWarning (percent: 80 | 100, budget: BudgetReport): string {
  const of = `${budget.used} of REDIS_DAILY_COMMAND_BUDGET=${budget.limit ?? ''}`
  if (percent === 80) {
    const eta = budget.projectedExhaustion === null ? 'it lasts until the reset at this rate' : `at this rate it runs out at ${budget.projectedExhaustion}`
    const then = budget.guard ? 'REDIS_BUDGET_GUARD will shed optional work once it is spent' : 'set REDIS_BUDGET_GUARD=true to shed optional work when it is spent'
    return `Redis command budget: ${of} used today (UTC, 80 %); ${eta}; raise REDIS_DAILY_COMMAND_BUDGET if that is too soon; ${then}`
  }
  const then = budget.guard
    ? `REDIS_BUDGET_GUARD is on: the cache stops reading and writing Redis (L1 and loaders serve) and SSE history pauses until ${budget.resetsAt}`
    : 'commands are still sent; set REDIS_BUDGET_GUARD=true to shed optional work instead'
  return `Redis command budget spent: ${of} today (UTC); ${then}`
}

export function createUsage (opts: UsageOptions): Usage {
  const now = opts.now ?? Date.now
  const entries = new Map<string, UsageEntry>()
  const startedAt = now()
  let dayEndsAt = 0
  let used = 0
  let exhaustedAt: number | null = null
  let warned = 0
  let shedding = false

  /** A new UTC day: today's counts start again, and so do the warnings and the guard. */
  function rollover (at: number): void {
    dayEndsAt = (Math.floor(at / DAY_MS) + 1) * DAY_MS
    used = 0
    exhaustedAt = null
    warned = 0
    shedding = false
    for (const entry of entries.values()) entry.today = 0
  }
  rollover(startedAt)

  function thresholds (): void {
    const limit = opts.limit
    if (limit === null) return
    if (warned < 80 && used >= limit * 0.8) {
      warned = 80
      if (used < limit) opts.onThreshold(80, budget())
    }
    if (warned < 100 && used >= limit) {
      warned = 100
      exhaustedAt = now()
      shedding = opts.guard
      opts.onThreshold(100, budget())
    }
  }

  function budget (): BudgetReport {
    const at = now()
    if (at >= dayEndsAt) rollover(at)
    const { limit } = opts
    const features: BudgetReport['features'] = {}
    for (const e of entries.values()) (features[e.feature] ??= {})[e.tier] = e.today
    let projected: number | null = null
    if (limit !== null && exhaustedAt === null && used > 0) {
      const rate = used / Math.max(1, at - Math.max(startedAt, dayEndsAt - DAY_MS))
      const eta = at + (limit - used) / rate
      if (eta < dayEndsAt) projected = eta
    }
    return {
      limit,
      used,
      remaining: limit === null ? null : Math.max(0, limit - used),
      projectedExhaustion: projected === null ? null : new Date(projected).toISOString(),
      exhaustedAt: exhaustedAt === null ? null : new Date(exhaustedAt).toISOString(),
      resetsAt: new Date(dayEndsAt).toISOString(),
      guard: opts.guard,
      shedding,
      features
    }
  }

  return {
    meter (feature, tier) {
      const id = `${feature}\0${tier}`
      let entry = entries.get(id)
      if (entry === undefined) entries.set(id, entry = { feature, tier, requests: 0, commands: 0, today: 0 })
      const counted = entry
      return (commands) => {
        const at = now()
        if (at >= dayEndsAt) rollover(at)
        counted.requests++
        counted.commands += commands
        counted.today += commands
        used += commands
        if (warned < 100) thresholds()
      }
    },
    entries: () => [...entries.values()].map((e) => ({ ...e })),
    budget,
    get shedding () {
      if (shedding && now() >= dayEndsAt) rollover(now())
      return shedding
    }
  }
}
