import type { FastifyInstance } from 'fastify'
import { FeatureUnavailableError, RateLimitedError } from '../lib/errors'
import { rateLimitHeaders } from '../lib/rate-limit/headers'

// Demo: 10 requests a minute per client address, shared by every instance on
// tcp and rest. The answer says which tier counted and what is left; the 11th
// gets 429 with Retry-After, as @fastify/rate-limit answers it.

export default async function rateLimitDemoRoutes (fastify: FastifyInstance): Promise<void> {
  fastify.get('/rate-limit/demo', async (request, reply) => {
    const decision = await fastify.rateLimiter.consume(`demo:${request.ip}`, { limit: 10, window: '1m' })
    if (decision.source === 'closed') throw new FeatureUnavailableError('rate-limit', decision.reason ?? 'the shared count is unavailable')
    reply.headers(rateLimitHeaders(decision))
    if (!decision.allowed) throw new RateLimitedError(`Rate limit exceeded, retry in ${Math.ceil(decision.resetMs / 1000)} s`)
    return { allowed: true, remaining: decision.remaining, tier: fastify.rateLimiter.tier, decidedBy: decision.source }
  })
}
