import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { FeatureRequirement, Resolution } from '../../lib/resolve-tier'
import type { Bus } from '../../lib/bus'
import { FeatureUnavailableError } from '../../lib/errors'

// A test-only feature plugin: proves the resolver and the bus the way the real
// feature plugins (cache, presence, sse, queues) use them.

export const demoRequirement: FeatureRequirement = { feature: 'demo', tiers: ['tcp', 'rest'], fallback: 'memory', flag: 'DEMO_ENABLED' }
export const tcpOnlyRequirement: FeatureRequirement = { feature: 'jobs', tiers: ['tcp'], fallback: 'skip', flag: 'JOBS_ENABLED' }

export interface DemoClient {
  resolution: Resolution
  bus: () => Bus
}

declare module 'fastify' {
  interface FastifyInstance {
    demo: DemoClient
    jobs: DemoClient
  }
}

function client (fastify: FastifyInstance, requirement: FeatureRequirement): DemoClient {
  const resolution = fastify.connections.resolve(requirement)
  return {
    resolution,
    bus () {
      if (resolution.status === 'skipped') throw new FeatureUnavailableError(requirement.feature, resolution.reason)
      return fastify.connections.bus(resolution.tier)
    }
  }
}

export const demoFeature = fp(async (fastify) => {
  fastify.decorate('demo', client(fastify, demoRequirement))
  fastify.decorate('jobs', client(fastify, tcpOnlyRequirement))
  fastify.get('/demo/jobs', async () => {
    fastify.jobs.bus()
    return { ok: true }
  })
}, { name: 'demo-feature', dependencies: ['connections'] })
