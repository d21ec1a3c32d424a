import type { FastifyBaseLogger } from 'fastify'

/**
 * A Redis outage produces one error per command or reconnect attempt; logging
 * each would flood the logs and cost money. The first error of a kind is
 * logged at once, then at most one line per interval with how many were
 * suppressed in between.
 */
export function rateLimitedWarn (log: FastifyBaseLogger, intervalMs = 10_000): (key: string, message: string, extra?: Record<string, unknown>) => void {
  const last = new Map<string, { at: number, suppressed: number }>()
  return (key, message, extra = {}) => {
    const now = Date.now()
    const seen = last.get(key)
    if (seen !== undefined && now - seen.at < intervalMs) {
      seen.suppressed++
      return
    }
    last.set(key, { at: now, suppressed: 0 })
    log.warn({ ...extra, suppressed: seen?.suppressed ?? 0 }, message)
  }
}
