import createError from '@fastify/error'

// Errors are values with a code and a message that says what to do. None of
// them may carry a secret: callers pass text that went through lib/redact.

// The errors a caller can cause, each with its status code. Plugins throw
// these, never `fastify.httpErrors`, so they work without @fastify/sensible.

/** Invalid input: a channel, job id, user id or option out of its bounds (400). */
export const InvalidInputError = createError<[string]>('REDIS_TIERS_INVALID_INPUT', '%s', 400)

/** A bus channel name that Redis would take as a pattern or a different channel (400): a TypeError by name too, as a wrong argument is. */
export class InvalidChannelError extends TypeError {
  readonly code = 'REDIS_TIERS_INVALID_CHANNEL'
  readonly statusCode = 400
}

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

/** A call made wrongly at boot (a queue defined twice, a processor that is not a function): the message says how to call it (500). */
export const DefineError = createError<[string]>('REDIS_TIERS_DEFINE', '%s', 500)

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

/**
 * The one wording of a tier failure a caller hears of, on every feature: what Redis did not do
 * (`what`: 'answer the heartbeat', 'accept the event', 'confirm the delete'), why when known
 * (already safe to show), and that the call may be tried again.
 */
export function tierFailure (feature: string, what: string, cause?: string): FeatureUnavailableError {
  return new FeatureUnavailableError(feature, `Redis did not ${what}${cause === undefined ? '' : `: ${cause}`}; try again`)
}

/** REDIS_REQUIRED=true and no Redis tier answered the probe. */
export const RedisRequiredError = createError<[string]>('REDIS_TIERS_REQUIRED', 'REDIS_REQUIRED=true but no Redis tier is reachable: %s', 500)

/** A decorator name is owned by another plugin. */
export const DecoratorTakenError = createError<[string, string, string]>('REDIS_TIERS_DECORATOR_TAKEN', 'fastify.%s is already decorated, probably by %s; %s', 500)

/** A bus used after the app closed it. */
export const BusClosedError = createError('REDIS_TIERS_BUS_CLOSED', 'the bus is closed', 500)

/** A call that did not settle within its deadline; `ETIMEDOUT`, as a socket's, so diagnoses read it as a timeout. */
export class DeadlineError extends Error {
  code = 'ETIMEDOUT'
}

/** The boot probe of a tier ran out of REDIS_CONNECT_TIMEOUT_MS. */
export class ProbeTimeout extends Error {
  override name = 'ProbeTimeout'
  code = 'ETIMEDOUT'
}

/** One of this module's coded errors: meant for the caller as it is, never re-worded as a tier failure. */
export function isOurError (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && code.startsWith('REDIS_TIERS_')
}
