import type { Decision } from './store'

// The headers @fastify/rate-limit sends, for routes that call
// `fastify.rateLimiter.consume()` themselves: `x-ratelimit-*` by default, the
// IETF draft's `ratelimit-*` with `draft: true`; `retry-after` on a refusal.
// Seconds, rounded up, as theirs.

export function rateLimitHeaders (decision: Decision, draft = false): Record<string, number> {
  const label = draft ? 'ratelimit' : 'x-ratelimit'
  const seconds = Math.ceil(decision.resetMs / 1000)
  return {
    [`${label}-limit`]: decision.limit,
    [`${label}-remaining`]: decision.remaining,
    [`${label}-reset`]: seconds,
    ...(decision.allowed ? {} : { 'retry-after': seconds })
  }
}
