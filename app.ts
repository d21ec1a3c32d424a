import fp from 'fastify-plugin'
import sensible from '@fastify/sensible'
import type { FastifyInstance } from 'fastify'
import connections, { type ConnectionsOptions } from './plugins/connections'
import cache, { type CachePluginOptions } from './plugins/cache'
import sse, { type SsePluginOptions } from './plugins/sse'
import presence, { type PresencePluginOptions } from './plugins/presence'
import queues, { type QueuesPluginOptions } from './plugins/queues'
import healthRoutes from './routes/health'
import cacheDemoRoutes from './routes/cache'
import eventRoutes from './routes/events'
import presenceRoutes from './routes/presence'
import jobRoutes from './routes/jobs'

// The whole ecosystem as one Fastify plugin: mount it with
// `fastify.register(app, { env: { REDIS_URL: ... } })`; options override env.

export interface AppOptions extends ConnectionsOptions {
  /** Register the /health routes (default true). */
  healthRoutes?: boolean
  /** Register /presence routes (default true). */
  presenceRoutes?: boolean
  /** Register the demo routes: /cache/demo, /events, /jobs/report and its `report` queue (default true). */
  demoRoutes?: boolean
  cache?: CachePluginOptions
  sse?: SsePluginOptions
  presence?: PresencePluginOptions
  queues?: QueuesPluginOptions
}

async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  // A host app may already use @fastify/sensible; registering it twice fails boot.
  if (!fastify.hasDecorator('httpErrors')) await fastify.register(sensible)
  await fastify.register(connections, { env: opts.env, processEnv: opts.processEnv })
  // Feature plugins come before routes: route options such as `config.cache` are read as routes are added.
  await fastify.register(cache, opts.cache ?? {})
  await fastify.register(sse, opts.sse ?? {})
  await fastify.register(presence, opts.presence ?? {})
  await fastify.register(queues, opts.queues ?? {})
  if (opts.healthRoutes !== false) await fastify.register(healthRoutes)
  if (opts.demoRoutes !== false) {
    await fastify.register(cacheDemoRoutes)
    await fastify.register(eventRoutes)
    await fastify.register(jobRoutes)
  }
  // Presence routes use the presence plugin's identify(): a host app passes its own (demo: x-user-id).
  if (opts.presenceRoutes !== false) await fastify.register(presenceRoutes)
}

export default fp(app, { name: 'redis-tiers-app', fastify: '5.x' })
export type { ConnectionsOptions, CachePluginOptions, SsePluginOptions, PresencePluginOptions, QueuesPluginOptions }
export { connections, cache, sse, presence, queues }
