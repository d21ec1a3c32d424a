import type { FastifyInstance } from 'fastify'

// /health/live answers while the process runs, whatever Redis does: use it
// for liveness probes so a Redis outage never gets the app restarted.
// /health PINGs the tiers in use and answers 503 when one of them is down.

export default async function healthRoutes (fastify: FastifyInstance): Promise<void> {
  fastify.get('/health/live', async () => ({ status: 'ok' }))

  fastify.get('/health', async (_request, reply) => {
    const report = await fastify.connections.health()
    return await reply.code(report.status === 'down' ? 503 : 200).send(report)
  })
}
