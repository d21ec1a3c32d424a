import { randomUUID } from 'node:crypto'
import { parseChoiceVariable, parseDurationVariable, parseIntegerVariable } from '../lib/config'
import { defineFeature, type FeatureApi, type FeatureStatus } from '../lib/feature'
import { parseDuration } from '../lib/duration'
import { createLimiter, type ConsumeOptions, type OutagePolicy, type RateLimitDecision } from '../lib/rate-limit/limiter'
import { fleetCount } from '../lib/rate-limit/instances'
import { fastifyRateLimitStore, type FastifyRateLimitStoreClass } from '../lib/rate-limit/fastify-store'
import { memoryRateLimitStore, rateLimitStoreFor, type Algorithm, type RateLimitStore } from '../lib/rate-limit/store'
import type { FeatureRequirement } from '../lib/resolve-tier'

export type { RateLimitDecision, OutagePolicy, Algorithm, FastifyRateLimitStoreClass }

// Its outage behaviour is its own RATE_LIMIT_ON_OUTAGE policy (local, open,
// closed), applied per decision within RATE_LIMIT_TIMEOUT_MS: the binding
// stays where it is and a failed call is decided by the policy.
export const rateLimitRequirement: FeatureRequirement = { feature: 'rate-limit', fallback: 'memory', flag: 'RATE_LIMIT_ENABLED', outage: 'fail-open' }

export interface RateLimitPluginOptions {
  /** Key namespace; overrides RATE_LIMIT_PREFIX (default: the name in package.json). */
  prefix?: string
}

export interface RateLimitConsumeOptions extends Omit<ConsumeOptions, 'window'> {
  /** The window: seconds, or a duration such as '1m' or '500ms' (as every duration in this package). */
  window: number | string
}

export interface RateLimitStats {
  decisions: number
  /** Decisions by who made them: the shared count, the local block list, or the outage policy. */
  by: Record<RateLimitDecision['source'], number>
  storeErrors: number
  /** Decisions made by RATE_LIMIT_ON_OUTAGE because the shared count failed (not the memory tier's own). */
  byPolicy: number
  /** Instances sharing the limit, as last counted. */
  instances: number
}

export interface RateLimit extends FeatureStatus {
  /** Counts one request for `key` and decides. Rejects (400) on an invalid key or options, (503) when the feature is off. */
  consume: (key: string, options: RateLimitConsumeOptions) => Promise<RateLimitDecision>
  /** @fastify/rate-limit's custom store, backed by this limiter: `register(fastifyRateLimit, { store: fastify.rateLimiter.store })`. */
  readonly store: FastifyRateLimitStoreClass
  stats: () => RateLimitStats
}

declare module 'fastify' {
  interface FastifyInstance {
    rateLimiter: RateLimit
  }
}

export default defineFeature<RateLimitPluginOptions, RateLimitStore>({
  name: 'rate-limit',
  decorator: 'rateLimiter',
  setup (feature, opts) {
    const { variable } = feature
    const prefix = feature.prefix(opts.prefix)
    const settings = {
      timeoutMs: parseIntegerVariable(variable, 'RATE_LIMIT_TIMEOUT_MS', 50, 1, 60_000),
      onOutage: parseChoiceVariable(variable, 'RATE_LIMIT_ON_OUTAGE', ['local', 'open', 'closed'] as const) ?? 'local',
      algorithm: parseChoiceVariable(variable, 'RATE_LIMIT_ALGORITHM', ['fixed-window', 'sliding-window'] as const) ?? 'fixed-window',
      instancesRefreshMs: parseDurationVariable(variable, 'RATE_LIMIT_INSTANCES_REFRESH', '10m')
    }

    const fleet = fleetCount(() => feature.binding?.commands ?? null, `${prefix}:rl:instances`, randomUUID(), settings.instancesRefreshMs)
    const stats: RateLimitStats = { decisions: 0, by: { shared: 0, blocked: 0, local: 0, open: 0, closed: 0 }, storeErrors: 0, byPolicy: 0, instances: 1 }
    const limiter = createLimiter({
      store: () => feature.store ?? memoryRateLimitStore(),
      shared: () => feature.binding?.shared ?? false,
      timeoutMs: settings.timeoutMs,
      onOutage: settings.onOutage,
      instances: fleet.count,
      explain: (err) => feature.connections.explain(feature.tier, err),
      onStoreError (err) {
        stats.storeErrors++
        feature.warn('rate-limit-store', `rate limit: the shared count failed on ${feature.tier ?? 'no tier'}, decided by RATE_LIMIT_ON_OUTAGE=${settings.onOutage}: ${feature.connections.redact(err).message}`)
      }
    })
    const counted = (decision: RateLimitDecision): RateLimitDecision => {
      stats.decisions++
      stats.by[decision.source]++
      if (decision.reason !== undefined) stats.byPolicy++
      const due = fleet.due()
      if (due !== null) feature.background(due)
      return decision
    }
    const decide = async (key: string, options: ConsumeOptions): Promise<RateLimitDecision> => counted(await limiter.consume(key, options))

    const api: FeatureApi<RateLimit> = {
      async consume (key, options) {
        feature.use()
        return await decide(key, { ...options, window: parseDuration(options?.window, 'rate limit "window"') })
      },
      // Turned off (RATE_LIMIT_ENABLED=false), the store allows: a host's routes keep working without a limit.
      store: fastifyRateLimitStore(() => feature.store === null ? allowAll : { consume: decide, blocked: limiter.blocked }, () => settings.algorithm),
      stats: () => ({ ...stats, by: { ...stats.by }, instances: fleet.count() })
    }
    feature.onClose(async () => await fleet.leave().catch(() => {}))
    return {
      requirement: { ...rateLimitRequirement, outagePolicy: settings.onOutage },
      timeoutMs: settings.timeoutMs,
      open: (binding) => rateLimitStoreFor(binding.commands, prefix),
      describe: () => ({ algorithm: settings.algorithm, timeoutMs: settings.timeoutMs, stats: api.stats() }),
      api
    }
  }
})

const allowAll = {
  consume: async (_key: string, options: ConsumeOptions): Promise<RateLimitDecision> => ({ allowed: true, limit: options.limit, remaining: options.limit, resetMs: options.window, source: 'open', refused: 0 }),
  blocked: () => 0
}
