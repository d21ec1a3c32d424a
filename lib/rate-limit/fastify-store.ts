import { FeatureUnavailableError } from '../errors'
import type { Algorithm } from './store'
import type { Limiter } from './limiter'

// The limiter behind @fastify/rate-limit's custom-store contract, so a host
// keeps that plugin's route options, headers, allow list, ban and error
// builder, and gets the tiers, the deadline, the outage policy and the block
// list from here: `register(fastifyRateLimit, { store: fastify.rateLimiter.store })`.
// Its `continueExceeding` and `exponentialBackoff` options are not applied.

type Callback = (error: Error | null, result?: { current: number, ttl: number }) => void

/** The route a child store counts for, as @fastify/rate-limit hands it over (its merged route params). */
interface RouteParams { routeInfo?: { method?: string | string[], url?: string } }

export interface FastifyRateLimitStore {
  incr: (key: string, callback: Callback, timeWindow: number, max: number) => void
  child: (routeOptions: object) => FastifyRateLimitStore
}

export type FastifyRateLimitStoreClass = new (options?: unknown) => FastifyRateLimitStore

export function fastifyRateLimitStore (limiter: () => Limiter, algorithm: () => Algorithm): FastifyRateLimitStoreClass {
  return class RedisTiersRateLimitStore implements FastifyRateLimitStore {
    private readonly scope: string

    constructor (_options?: unknown, scope = 'global:') {
      this.scope = scope
    }

    incr (key: string, callback: Callback, timeWindow: number, max: number): void {
      // max 0 refuses everything, as @fastify/rate-limit's own stores do.
      if (max < 1) { callback(null, { current: 1, ttl: Math.max(1, timeWindow) }); return }
      limiter().consume(this.scope + String(key), { limit: max, window: Math.max(1, Math.trunc(timeWindow)), algorithm: algorithm() }).then((decision) => {
        if (decision.source === 'closed') { callback(new FeatureUnavailableError('rate-limit', decision.reason ?? 'the shared count is unavailable')); return }
        // @fastify/rate-limit refuses when current > max, and bans past max + ban.
        const current = decision.allowed ? decision.limit - decision.remaining : decision.limit + decision.refused
        callback(null, { current, ttl: decision.resetMs })
      }, (err: Error) => callback(err))
    }

    child (routeOptions: object): FastifyRateLimitStore {
      const { routeInfo } = routeOptions as RouteParams
      const method = [routeInfo?.method ?? ''].flat().join(',')
      return new RedisTiersRateLimitStore(undefined, `route:${method}:${routeInfo?.url ?? ''}:`)
    }
  }
}
