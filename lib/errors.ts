import createError from '@fastify/error'

// Errors are values with a code and a message that says what to do. None of
// them may carry a secret: callers pass text that went through lib/redact.

// The errors a caller can cause, each with its status code. Plugins throw
// these, never `fastify.httpErrors`, so they work without @fastify/sensible.

/** Invalid input: a channel, job id, user id or option out of its bounds (400). */
export const InvalidInputError = createError<[string]>('REDIS_TIERS_INVALID_INPUT', '%s', 400)

/** No identity where one is needed (401). */
export const UnauthorizedError = createError<[string]>('REDIS_TIERS_UNAUTHORIZED', '%s', 401)

/** An identity that may not do this (403). */
export const ForbiddenError = createError<[string]>('REDIS_TIERS_FORBIDDEN', '%s', 403)

/** Nothing under that name for this caller (404). */
export const NotFoundError = createError<[string]>('REDIS_TIERS_NOT_FOUND', '%s', 404)

/** A rate limit refused the request (429): the message says when to retry, as the Retry-After header does. */
export const RateLimitedError = createError<[string]>('REDIS_TIERS_RATE_LIMITED', '%s', 429)

/** Bad configuration: boot fails with this message, which names the variable and the fix. */
export const ConfigError = createError<[string]>('REDIS_TIERS_CONFIG', '%s', 500)

const FeatureUnavailableBase = createError<[string, string]>('REDIS_TIERS_FEATURE_UNAVAILABLE', '%s is unavailable: %s', 503)

/**
 * A feature that was skipped at boot, whose tier is down right now, or that is
 * at capacity: becomes 503 with the reason. An expected state, not a bug: the
 * routes log it at warn, rate-limited per `feature`, without a stack.
 */
export class FeatureUnavailableError extends FeatureUnavailableBase {
  readonly feature: string
  constructor (feature: string, reason: string) {
    super(feature, reason)
    this.feature = feature
  }
}

/** REDIS_REQUIRED=true and no Redis tier answered the probe. */
export const RedisRequiredError = createError<[string]>('REDIS_TIERS_REQUIRED', 'REDIS_REQUIRED=true but no Redis tier is reachable: %s', 500)

/** A decorator name is owned by another plugin. */
export const DecoratorTakenError = createError<[string, string, string]>('REDIS_TIERS_DECORATOR_TAKEN', 'fastify.%s is already decorated, probably by %s; %s', 500)

/** A probe or PING that got no answer within its deadline. */
export class ProbeTimeout extends Error {
  override name = 'ProbeTimeout'
  code = 'ETIMEDOUT'
}
