import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ForbiddenError } from '../lib/errors'

// Demo: GET /events/:channel streams a channel, POST /events/:channel
// publishes the JSON body to it. DEMO-ONLY identity: the user is whoever the
// `x-user-id` header (or `userId` query parameter, since a browser's
// EventSource cannot set headers) says; a real app passes its own
// authorize(), e.g. from a verified session or JWT. A user may read and
// publish `public:*` channels and their own `user:<id>:*` channels.

const USER_ID = /^[A-Za-z0-9_-]{1,64}$/

export function demoUserId (request: FastifyRequest): string | undefined {
  const header = request.headers['x-user-id']
  const query = (request.query as Record<string, unknown> | undefined)?.userId
  const id = typeof header === 'string' ? header : typeof query === 'string' ? query : undefined
  return id !== undefined && USER_ID.test(id) ? id : undefined
}

export function demoMayUse (request: FastifyRequest, channel: string): boolean {
  const user = demoUserId(request)
  return channel.startsWith('public:') || (user !== undefined && channel.startsWith(`user:${user}:`))
}

interface ChannelRoute { Params: { channel: string }, Querystring: { event?: string } }

/** A demo event is small: a large body would sit in Redis for SSE_HISTORY_TTL (1 h) per copy. */
export const DEMO_EVENT_BODY_LIMIT = 64 * 1024

export default async function eventRoutes (fastify: FastifyInstance): Promise<void> {
  const params = { type: 'object', properties: { channel: { type: 'string', minLength: 1, maxLength: 128 } }, required: ['channel'] }

  fastify.get<ChannelRoute>('/events/:channel', { schema: { params } }, async (request, reply) => {
    await fastify.sse.stream(request, reply, [request.params.channel], { authorize: demoMayUse })
  })

  fastify.post<ChannelRoute>('/events/:channel', {
    bodyLimit: DEMO_EVENT_BODY_LIMIT,
    schema: { params, querystring: { type: 'object', properties: { event: { type: 'string', maxLength: 64 } } } }
  }, async (request, reply) => {
    if (!demoMayUse(request, request.params.channel)) throw new ForbiddenError(`not allowed to publish to ${request.params.channel}`)
    const id = await fastify.sse.publish(request.params.channel, request.body ?? null, { event: request.query.event })
    return await reply.code(201).send({ id })
  })
}
