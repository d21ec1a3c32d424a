import fp from 'fastify-plugin'
import sensible from '@fastify/sensible'
import type { FastifyInstance } from 'fastify'
import connections, { type ConnectionsOptions } from './plugins/connections'
import healthRoutes from './routes/health'

// The whole ecosystem as one Fastify plugin: mount it with
// `fastify.register(app, { env: { REDIS_URL: ... } })`; options override env.

export interface AppOptions extends ConnectionsOptions {
  /** Register the /health routes (default true). */
  healthRoutes?: boolean
}

async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  // A host app may already use @fastify/sensible; registering it twice fails boot.
  if (!fastify.hasDecorator('httpErrors')) await fastify.register(sensible)
  await fastify.register(connections, { env: opts.env, processEnv: opts.processEnv })
  if (opts.healthRoutes !== false) await fastify.register(healthRoutes)
}

export default fp(app, { name: 'redis-tiers-app', fastify: '5.x' })
export type { ConnectionsOptions }
export { connections }
