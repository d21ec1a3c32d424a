import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'

// Demo: a slow computation behind route response caching. The first request
// for a key answers after ~200 ms (Cache-Status: fwd=miss); the next ones within
// 30 s come from the cache (Cache-Status: hit) with the same `computedAt`.

export default async function cacheDemoRoutes (fastify: FastifyInstance): Promise<void> {
  fastify.get<{ Params: { key: string } }>('/cache/demo/:key', {
    schema: { params: { type: 'object', properties: { key: { type: 'string', minLength: 1, maxLength: 100 } }, required: ['key'] } },
    config: { cache: { ttl: 30, tags: ['demo'] } }
  }, async (request) => {
    await sleep(200)
    return { key: request.params.key, computedAt: new Date().toISOString() }
  })
}
