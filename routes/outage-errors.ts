import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { FeatureUnavailableError } from '../lib/errors'
import { rateLimitedWarn } from '../lib/rate-limited-log'

// A 503 from a feature is an expected state (a tier is down, the feature is
// skipped or at capacity), not a bug: anonymous callers must not be able to
// fill the logs with stack traces by hammering a route during an outage. It
// is logged at warn, without a stack, at most once per 10 s per feature (the
// next line carries how many were suppressed). Every other error goes to the
// parent error handler unchanged, so a 500 keeps its stack.

export function quietOutages (fastify: FastifyInstance): void {
  const warn = rateLimitedWarn(fastify.log.child({ plugin: 'routes' }))
  fastify.setErrorHandler(async (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    if (!(err instanceof FeatureUnavailableError)) throw err
    warn(`outage-${err.feature}`, err.message, { feature: err.feature, url: request.routeOptions.url, statusCode: 503 })
    return await reply.code(503).send({ statusCode: 503, code: err.code, error: 'Service Unavailable', message: err.message })
  })
}
