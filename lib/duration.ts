// Durations: a number is seconds (Redis's unit, fractions allowed); a string
// may carry a unit: '500ms', '30s', '5m', '1h', '1d'; bare digits are seconds.

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

export function parseDuration (value: number | string, what: string): number {
  let ms: number
  if (typeof value === 'number') {
    ms = value * 1000
  } else {
    const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(String(value))
    if (match === null) throw new TypeError(`${what} must be a number of seconds or a duration such as '500ms', '30s', '5m' (got ${JSON.stringify(value)})`)
    ms = Number(match[1]) * UNITS[match[2] ?? 's']
  }
  if (!Number.isFinite(ms) || ms < 1) throw new TypeError(`${what} must be at least 1 ms (got ${JSON.stringify(value)})`)
  return Math.round(ms)
}
