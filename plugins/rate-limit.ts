import { randomUUID } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { parseChoiceVariable, parseDurationVariable, parseIntegerVariable } from '../lib/config'
import { claimFeatureDecorator } from '../lib/decorators'
import { parseDuration } from '../lib/duration'
import { FeatureUnavailableError } from '../lib/errors'
import { resolvePrefix } from '../lib/prefix'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import { createLimiter, type ConsumeOptions, type OutagePolicy, type RateLimitDecision } from '../lib/rate-limit/limiter'
import { fleetCount } from '../lib/rate-limit/instances'
import { fastifyRateLimitStore, type FastifyRateLimitStoreClass } from '../lib/rate-limit/fastify-store'
import { memoryRateLimitStore, redisRateLimitStore, type Algorithm, type RateLimitStore } from '../lib/rate-limit/store'
import type { FeatureRequirement, Resolution, Tier } from '../lib/resolve-tier'
import type { RedisCommands } from '../lib/redis-commands'

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
  /** Instances sharing the limit, as last counted. */
  instances: number
}

export interface RateLimit {
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
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

async function rateLimitPlugin (fastify: FastifyInstance, opts: RateLimitPluginOptions): Promise<void> {
  claimFeatureDecorator(fastify, 'rateLimiter')
  const { connections } = fastify
  const variable = connections.variable
  const prefix = resolvePrefix(opts.prefix, 'RATE_LIMIT_PREFIX', variable)
  const settings = {
    timeoutMs: parseIntegerVariable(variable, 'RATE_LIMIT_TIMEOUT_MS', 50, 1, 60_000),
    onOutage: parseChoiceVariable(variable, 'RATE_LIMIT_ON_OUTAGE', ['local', 'open', 'closed'] as const) ?? 'local',
    algorithm: parseChoiceVariable(variable, 'RATE_LIMIT_ALGORITHM', ['fixed-window', 'sliding-window'] as const) ?? 'fixed-window',
    instancesRefreshMs: parseDurationVariable(variable, 'RATE_LIMIT_INSTANCES_REFRESH', '10m')
  }
  const warn = rateLimitedWarn(fastify.log.child({ plugin: 'rate-limit' }))

  interface Binding { resolution: Resolution, commands: RedisCommands | null, store: RateLimitStore | null }
  const bindTo = (resolution: Resolution): Binding => {
    if (resolution.status === 'skipped') return { resolution, commands: null, store: null }
    const commands = connections.commands(resolution.tier, settings.timeoutMs, 'rate-limit')
    return { resolution, commands, store: commands === null ? memoryRateLimitStore() : redisRateLimitStore(commands, prefix) }
  }
  let binding = bindTo(connections.resolve({ ...rateLimitRequirement, outagePolicy: settings.onOutage }, async (next) => { binding = bindTo(next) }))

  const fleet = fleetCount(() => binding.commands, `${prefix}:rl:instances`, randomUUID(), settings.instancesRefreshMs)
  const pending = new Set<Promise<void>>()
  const stats: RateLimitStats = { decisions: 0, by: { shared: 0, blocked: 0, local: 0, open: 0, closed: 0 }, storeErrors: 0, instances: 1 }
  const limiter = createLimiter({
    store: () => binding.store ?? memoryRateLimitStore(),
    shared: () => binding.resolution.shared,
    timeoutMs: settings.timeoutMs,
    onOutage: settings.onOutage,
    instances: fleet.count,
    onStoreError (err) {
      stats.storeErrors++
      warn('rate-limit-store', `rate limit: the shared count failed on ${binding.resolution.tier ?? 'no tier'}, decided by RATE_LIMIT_ON_OUTAGE=${settings.onOutage}: ${connections.redact(err).message}`)
    }
  })
  const counted = (decision: RateLimitDecision): RateLimitDecision => {
    stats.decisions++
    stats.by[decision.source]++
    const due = fleet.due()
    if (due !== null) {
      pending.add(due)
      void due.finally(() => pending.delete(due))
    }
    return decision
  }
  const decide = async (key: string, options: ConsumeOptions): Promise<RateLimitDecision> => counted(await limiter.consume(key, options))

  const rateLimit: RateLimit = {
    get available () { return binding.resolution.status === 'active' },
    get tier () { return binding.resolution.tier },
    get reason () { return binding.resolution.reason },
    async consume (key, options) {
      if (binding.store === null) throw new FeatureUnavailableError('rate-limit', binding.resolution.reason)
      return await decide(key, { ...options, window: parseDuration(options?.window, 'rate limit "window"') })
    },
    // Turned off (RATE_LIMIT_ENABLED=false), the store allows: a host's routes keep working without a limit.
    store: fastifyRateLimitStore(() => binding.store === null ? allowAll : { consume: decide, blocked: limiter.blocked }, () => settings.algorithm),
    stats: () => ({ ...stats, by: { ...stats.by }, instances: fleet.count() })
  }

  connections.describe('rate-limit', () => ({ algorithm: settings.algorithm, timeoutMs: settings.timeoutMs, stats: rateLimit.stats() }))
  fastify.decorate('rateLimiter', rateLimit)
  fastify.addHook('onClose', async () => {
    await Promise.allSettled([...pending])
    await fleet.leave().catch(() => {})
  })
}

const allowAll = {
  consume: async (_key: string, options: ConsumeOptions): Promise<RateLimitDecision> => ({ allowed: true, limit: options.limit, remaining: options.limit, resetMs: options.window, source: 'open', refused: 0 }),
  blocked: () => 0
}

export default fp(rateLimitPlugin, { name: 'rate-limit', fastify: '5.x', dependencies: ['connections'] })
