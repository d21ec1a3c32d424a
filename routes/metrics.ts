import type { FastifyInstance, FastifyRequest } from 'fastify'
import type * as PromClient from 'prom-client'
import type { RedisTier, Tier } from '../lib/resolve-tier'
import { ForbiddenError } from '../lib/errors'

// GET /metrics in Prometheus text format, through prom-client (loaded only
// when metrics are on). Every series is read from the live state and the
// features' own counters when scraped: nothing is added to a request's path.
// A registry of our own, so a host's default registry is never touched.

type Labels = Record<string, string>

export interface MetricsOptions {
  /** The host's own access check for GET /metrics (e.g. the scraper's bearer token): false answers 403. */
  authorize?: (request: FastifyRequest) => boolean | Promise<boolean>
}

export default async function metricsRoutes (fastify: FastifyInstance, opts: MetricsOptions): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only when metrics are mounted; the import above is types only
  const prom = require('prom-client') as typeof PromClient
  const registry = new prom.Registry()
  const { connections } = fastify
  const tierOf = (tier: Tier | null): string => tier ?? 'none'

  const { gauge, counter } = seriesOf(prom, registry)

  const redisTiers = (Object.keys(connections.tiers) as RedisTier[]).filter((t) => connections.tiers[t].configured)
  gauge('redis_tiers_tier_up', '1 while a configured Redis tier is reachable', ['tier'], () => redisTiers.map((t) => [{ tier: t }, connections.tiers[t].reachable ? 1 : 0]))
  gauge('redis_tiers_tier_full', '1 while a tier refuses writes because Redis is full (OOM under maxmemory); reads are served', ['tier'], () =>
    redisTiers.map((t) => [{ tier: t }, connections.tiers[t].refusing?.cause === 'full' ? 1 : 0]))
  gauge('redis_tiers_tier_quota_spent', '1 while the provider refuses every command of a tier because its request quota is spent', ['tier'], () =>
    redisTiers.map((t) => [{ tier: t }, connections.tiers[t].refusing?.cause === 'quota' ? 1 : 0]))
  gauge('redis_tiers_tier_latency_milliseconds', 'The last PING round trip of a tier', ['tier'], () => redisTiers.flatMap((t) => {
    const ms = connections.tiers[t].latencyMs
    return ms === null ? [] : [[{ tier: t }, ms] as [Labels, number]]
  }))
  gauge('redis_tiers_feature_active', '1 while a feature runs (on the tier in its label), 0 while it is skipped', ['feature', 'tier'], () =>
    Object.entries(fastify.features).map(([feature, state]) => [{ feature, tier: tierOf(state.tier) }, state.status === 'active' ? 1 : 0]))
  gauge('redis_tiers_feature_transitions', 'Moves of a feature between tiers since boot', ['feature'], () =>
    Object.entries(fastify.features).map(([feature, state]) => [{ feature }, state.transitions]))

  const { cache, sse, presence, queues } = fastify
  const on = (tier: Tier | null): Labels => ({ tier: tierOf(tier) })
  counter('redis_tiers_cache_hits_total', 'Cache hits, by level (l1: in process, l2: Redis)', ['tier', 'level'], () => {
    const s = cache.stats()
    return [[{ ...on(cache.tier), level: 'l1' }, s.l1Hits], [{ ...on(cache.tier), level: 'l2' }, s.l2Hits]]
  })
  counter('redis_tiers_cache_misses_total', 'Cache misses', ['tier'], () => [[on(cache.tier), cache.stats().misses]])
  counter('redis_tiers_cache_errors_total', 'Cache calls to Redis that failed or timed out (served without Redis)', ['tier'], () => [[on(cache.tier), cache.stats().redisErrors]])
  gauge('redis_tiers_cache_l1_entries', 'Entries in the in-process L1', ['tier'], () => [[on(cache.tier), cache.stats().l1Entries]])
  gauge('redis_tiers_sse_clients', 'SSE streams open on this instance', ['tier'], () => [[on(sse.tier), sse.stats().clients]])
  counter('redis_tiers_sse_events_total', 'SSE events, by what happened to them', ['tier', 'outcome'], () => {
    const s = sse.stats()
    return [[{ ...on(sse.tier), outcome: 'published' }, s.published], [{ ...on(sse.tier), outcome: 'delivered' }, s.delivered], [{ ...on(sse.tier), outcome: 'replayed' }, s.replayed]]
  })
  counter('redis_tiers_sse_clients_dropped_total', 'SSE clients cut off for not reading', ['tier'], () => [[on(sse.tier), sse.stats().slowClientsDropped]])
  gauge('redis_tiers_presence_online', 'Users online (all instances)', ['tier'], async () => presence.available ? [[on(presence.tier), await presence.count().catch(() => 0)]] : [])
  gauge('redis_tiers_queue_jobs', 'Jobs per queue and state', ['tier', 'queue', 'state'], async () => {
    if (!queues.available) return []
    const rows = await Promise.all(queues.names().map(async (queue) => {
      const counts = await queues.counts(queue).catch(() => null)
      return counts === null ? [] : Object.entries(counts).map(([state, n]) => [{ ...on(queues.tier), queue, state }, n] as [Labels, number])
    }))
    return rows.flat()
  })
  counter('redis_tiers_queue_jobs_finished_total', 'Jobs this instance finished, by outcome', ['tier', 'outcome'], () => {
    const s = queues.stats()
    return [[{ ...on(queues.tier), outcome: 'completed' }, s.completed], [{ ...on(queues.tier), outcome: 'failed' }, s.failed]]
  })
  const { rateLimiter } = fastify
  counter('redis_tiers_rate_limit_decisions_total', 'Rate-limit decisions, by who made them: shared (Redis), blocked (the local block list, no round trip), local (this instance counting alone: the memory tier, or RATE_LIMIT_ON_OUTAGE=local), open or closed (RATE_LIMIT_ON_OUTAGE)', ['tier', 'source'], () =>
    Object.entries(rateLimiter.stats().by).map(([source, n]) => [{ ...on(rateLimiter.tier), source }, n]))
  const { usage } = connections
  counter('redis_tiers_redis_commands_total', 'Redis commands billed, by feature and tier: a Lua script counts its EVAL and every command it runs', ['feature', 'tier'], () =>
    usage.entries().map((e) => [{ feature: e.feature, tier: e.tier }, e.commands]))
  counter('redis_tiers_redis_requests_total', 'Round trips to Redis (on Upstash REST, HTTP requests), by feature and tier', ['feature', 'tier'], () =>
    usage.entries().map((e) => [{ feature: e.feature, tier: e.tier }, e.requests]))
  gauge('redis_tiers_budget_commands', 'Today\'s command budget (UTC): used; limit and remaining only when REDIS_DAILY_COMMAND_BUDGET is set', ['kind'], () => {
    const { used, limit, remaining } = usage.budget()
    return [[{ kind: 'used' }, used], ...(limit === null || remaining === null ? [] : [[{ kind: 'limit' }, limit], [{ kind: 'remaining' }, remaining]] as Array<[Labels, number]>)]
  })
  gauge('redis_tiers_budget_exhaustion_timestamp_seconds', 'When the budget ran out today (spent), or runs out at today\'s rate (projected); absent when it lasts until the reset', ['kind'], () => {
    const { projectedExhaustion, exhaustedAt } = usage.budget()
    if (exhaustedAt !== null) return [[{ kind: 'spent' }, Date.parse(exhaustedAt) / 1000]]
    return projectedExhaustion === null ? [] : [[{ kind: 'projected' }, Date.parse(projectedExhaustion) / 1000]]
  })
  gauge('redis_tiers_budget_shedding', '1 while REDIS_BUDGET_GUARD sheds optional work (cache L2 writes, SSE history)', [], () => [[{}, usage.shedding ? 1 : 0]])

  fastify.get('/metrics', async (request, reply) => {
    if (opts.authorize !== undefined && !(await opts.authorize(request))) throw new ForbiddenError('not allowed to read the metrics')
    return await reply.type(registry.contentType).send(await registry.metrics())
  })
}

type Read = () => Array<[Labels, number]> | Promise<Array<[Labels, number]>>
type Maker = (name: string, help: string, labelNames: string[], read: Read) => void

/**
 * Series read when scraped: a gauge set from `read`, and a counter mirroring a feature's own
 * monotonic count (it restarts when the feature moves tier, as a counter may).
 */
function seriesOf ({ Gauge, Counter }: typeof PromClient, registry: PromClient.Registry): { gauge: Maker, counter: Maker } {
  const maker = (Metric: typeof Gauge | typeof Counter): Maker => (name, help, labelNames, read) => {
    const metric: PromClient.Gauge | PromClient.Counter = new Metric({
      name,
      help,
      labelNames,
      registers: [registry],
      async collect () {
        metric.reset()
        for (const [labels, value] of await read()) {
          if (metric instanceof Gauge) metric.set(labels, value)
          else metric.inc(labels, value)
        }
      }
    })
  }
  return { gauge: maker(Gauge), counter: maker(Counter) }
}
