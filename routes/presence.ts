import type { FastifyInstance, FastifyRequest } from 'fastify'
import { UnauthorizedError } from '../lib/errors'

// Presence routes. Identity comes from fastify.presence.identify(): in the
// demo app the DEMO-ONLY `x-user-id` header; a real app passes its own
// `identify` (e.g. from a verified JWT). No identity: 401.

interface HeartbeatBody { status?: string, meta?: unknown, device?: string }

export default async function presenceRoutes (fastify: FastifyInstance): Promise<void> {
  async function who (request: FastifyRequest): Promise<string> {
    const id = await fastify.presence.identify(request)
    if (id === undefined) throw new UnauthorizedError('no identity: presence needs a user (demo: send x-user-id)')
    return id
  }

  fastify.post<{ Body: HeartbeatBody | null }>('/presence/heartbeat', {
    schema: {
      body: {
        type: ['object', 'null'],
        properties: { status: { type: 'string', maxLength: 64 }, device: { type: 'string', maxLength: 64 }, meta: {} },
        additionalProperties: false
      }
    }
  }, async (request) => {
    const userId = await who(request)
    const { joined } = await fastify.presence.heartbeat(userId, request.body ?? {})
    return { userId, online: true, joined }
  })

  fastify.delete<{ Querystring: { device?: string } }>('/presence', async (request, reply) => {
    await fastify.presence.leave(await who(request), { device: request.query.device })
    return await reply.code(204).send()
  })

  fastify.get<{ Querystring: { limit?: number, cursor?: string } }>('/presence/online', {
    schema: { querystring: { type: 'object', properties: { limit: { type: 'integer', minimum: 1, maximum: 500 }, cursor: { type: 'string', pattern: '^[0-9]{1,9}$' } } } }
  }, async (request) => {
    const [page, count] = await Promise.all([fastify.presence.list({ limit: request.query.limit, cursor: request.query.cursor }), fastify.presence.count()])
    return { ...page, count }
  })

  fastify.get<{ Params: { userId: string } }>('/presence/:userId', async (request) => {
    const entry = await fastify.presence.get(request.params.userId)
    if (entry === null) {
      const lastSeen = await fastify.presence.lastSeen(request.params.userId)
      return { userId: request.params.userId, online: false, lastSeen }
    }
    return { ...entry, online: true }
  })
}
