import { ConfigError, InvalidInputError } from './errors'

// Durations: a number is seconds (Redis's unit, fractions allowed); a string
// may carry a unit: '500ms', '30s', '5m', '1h', '1d'; bare digits are seconds.
// One parser for every duration, so a caller's mistake is always our 400 and
// a setting's always a boot failure naming it, never a TypeError.

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/**
 * The longest duration accepted: one year (366 days). Redis would take far more, but nothing this
 * project keeps (cache entries, history, last-seen) is meant to outlive a year, and a typo such as
 * 1e12 (31 700 years) should be refused rather than pin an entry forever.
 */
export const MAX_DURATION_MS = 366 * UNITS.d

function toMs (value: unknown): number {
  if (typeof value === 'number') return value * 1000
  if (typeof value !== 'string') return Number.NaN
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(value)
  return match === null ? Number.NaN : Number(match[1]) * UNITS[match[2] ?? 's']
}

/** Why `value` is not a duration, or null when it is one. */
function refusal (value: unknown, what: string): string | null {
  const ms = toMs(value)
  const got = `(got ${String(JSON.stringify(value) ?? typeof value).slice(0, 40)})`
  if (Number.isNaN(ms)) return `${what} must be a number of seconds or a duration such as '500ms', '30s', '5m' ${got}`
  if (!(ms >= 1)) return `${what} must be at least 1 ms ${got}`
  if (!(ms <= MAX_DURATION_MS)) return `${what} must be at most 366 days ${got}`
  return null
}

/**
 * A duration a caller passed (a `ttl` option, a value from a request): milliseconds, or an
 * InvalidInputError (400). `invalid` makes another error for a value that is not one.
 */
export function parseDuration (value: number | string, what: string, invalid: (message: string) => Error = (message) => new InvalidInputError(message)): number {
  const why = refusal(value, what)
  if (why !== null) throw invalid(why)
  return Math.round(toMs(value))
}

/** A duration from configuration (a variable, a route's `config.cache`): milliseconds, or a ConfigError naming it. */
export function parseConfigDuration (value: number | string, what: string): number {
  return parseDuration(value, what, (message) => new ConfigError(`Invalid configuration: ${message}`))
}
