import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import connections, { type ConnectionsOptions } from './plugins/connections'
import cache, { type CachePluginOptions } from './plugins/cache'
import sse, { type SsePluginOptions } from './plugins/sse'
import presence, { type PresencePluginOptions } from './plugins/presence'
import queues, { type QueuesPluginOptions } from './plugins/queues'
import rateLimit, { type RateLimitPluginOptions } from './plugins/rate-limit'
import { parseBooleanVariable } from './lib/config'
import { ConfigError } from './lib/errors'
import healthRoutes, { type HealthOptions } from './routes/health'
import metricsRoutes, { type MetricsOptions } from './routes/metrics'
import statusRoutes, { type StatusPageOptions } from './routes/status'
import cacheDemoRoutes from './routes/cache'
import eventRoutes, { demoUserId } from './routes/events'
import presenceRoutes from './routes/presence'
import jobRoutes from './routes/jobs'
import rateLimitDemoRoutes from './routes/rate-limit'
import { quietOutages } from './routes/outage-errors'

// The whole ecosystem as one Fastify plugin: mount it with
// `fastify.register(app, { env: { REDIS_URL: ... } })`; options override env.
// Mounted with default options it adds /health and nothing that trusts a
// header: the demo routes and their `x-user-id` identity are opt-in.

export interface AppOptions extends ConnectionsOptions {
  /** Register the /health routes (default true). */
  healthRoutes?: boolean
  /** What /health shows: `{ showEndpoints: true }` adds the tiers' redacted addresses (default: only with the demo routes). */
  health?: HealthOptions
  /**
   * Register the /presence routes (default: when `presence.identify` is given, or with the demo).
   * They trust whatever `identify` says, so they are never mounted without one.
   */
  presenceRoutes?: boolean
  /**
   * Register the demo routes (/cache/demo, /events, /jobs/report and its `report` queue, /presence, /rate-limit/demo)
   * with the DEMO-ONLY `x-user-id` identity. Default: DEMO_ROUTES, else false.
   */
  demoRoutes?: boolean
  /**
   * Mount GET /metrics (Prometheus text). Default: METRICS, else on with the demo routes, off otherwise.
   * Pass `{ authorize(request) }` to put your own access check in front of it (an object turns it on).
   */
  metrics?: boolean | MetricsOptions
  /**
   * Mount the live status page (GET /status, /status/stream, /status.json). Default: STATUS_PAGE, else
   * on with the demo routes, off otherwise. Pass `{ authorize(request) }` to put your own access check
   * in front of it (an object turns it on).
   */
  statusPage?: boolean | StatusPageOptions
  cache?: CachePluginOptions
  sse?: SsePluginOptions
  presence?: PresencePluginOptions
  queues?: QueuesPluginOptions
  rateLimit?: RateLimitPluginOptions
}

async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  await fastify.register(connections, { env: opts.env, processEnv: opts.processEnv })
  const demo = opts.demoRoutes ?? parseBooleanVariable(fastify.connections.variable, 'DEMO_ROUTES', false)
  const identify = opts.presence?.identify ?? (demo ? demoUserId : undefined)
  const withPresenceRoutes = opts.presenceRoutes ?? identify !== undefined
  const metrics = mounted(opts.metrics, 'METRICS', fastify.connections.variable, demo)
  const statusPage = mounted(opts.statusPage, 'STATUS_PAGE', fastify.connections.variable, demo)
  if (withPresenceRoutes && identify === undefined) {
    throw new ConfigError('Invalid configuration: presenceRoutes needs presence.identify(request), the user a request comes from (e.g. from a verified session); the routes never trust a header on their own')
  }
  // Feature plugins come before routes: route options such as `config.cache` are read as routes are added.
  await fastify.register(cache, opts.cache ?? {})
  await fastify.register(sse, opts.sse ?? {})
  await fastify.register(presence, { ...opts.presence, identify })
  await fastify.register(queues, opts.queues ?? {})
  await fastify.register(rateLimit, opts.rateLimit ?? {})
  // The routes share one encapsulated scope: its error handler keeps outages out of the host's error logs.
  await fastify.register(async (routes) => {
    quietOutages(routes)
    if (opts.healthRoutes !== false) await routes.register(healthRoutes, { showEndpoints: demo, ...opts.health })
    if (metrics !== null) await routes.register(metricsRoutes, metrics)
    if (statusPage !== null) await routes.register(statusRoutes, statusPage)
    if (demo) {
      await routes.register(cacheDemoRoutes)
      await routes.register(eventRoutes)
      await routes.register(jobRoutes)
      await routes.register(rateLimitDemoRoutes)
    }
    if (withPresenceRoutes) await routes.register(presenceRoutes)
  })
  const maxParamLength = fastify.initialConfig.routerOptions?.maxParamLength ?? 100
  if ((demo || withPresenceRoutes) && maxParamLength < 128) {
    fastify.log.warn({ maxParamLength }, `the router's maxParamLength is ${maxParamLength}: channels, job ids and user ids of up to 128 characters will get 414; create Fastify with { routerOptions: { maxParamLength: 256 } }`)
  }
  const open = [...(statusPage !== null && statusPage.authorize === undefined ? ['the status page (STATUS_PAGE or statusPage: /status, /status.json, /status/stream)'] : []),
    ...(metrics !== null && metrics.authorize === undefined ? ['/metrics (METRICS or metrics)'] : [])]
  if (open.length > 0) {
    fastify.addHook('onReady', async () => {
      fastify.log.warn({ unprotected: open }, `${open.join(' and ')} mounted without an authorize: anyone who can reach this server sees the tiers, features and usage; pass { authorize(request) } (statusPage: { authorize }, metrics: { authorize }) or put them behind your own access control`)
    })
  }
  if (demo) {
    fastify.addHook('onReady', async () => {
      fastify.log.warn({ demoRoutes: true }, 'demo routes are mounted: the demo identity (x-user-id header) is active and must not face the internet; unset DEMO_ROUTES (or pass demoRoutes: false) in production')
    })
  }
}

/** A route group's options when it is mounted (an object turns it on; else the option, the variable, or the demo), or null. */
function mounted<T extends object> (option: boolean | T | undefined, variable: string, read: (name: string) => string | undefined, demo: boolean): T | Record<string, never> | null {
  if (typeof option === 'object') return option
  return (option ?? parseBooleanVariable(read, variable, demo)) ? {} : null
}

export default fp(app, { name: 'redis-tiers-app', fastify: '5.x' })
