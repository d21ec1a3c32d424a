import { randomUUID } from 'node:crypto'
import { createCache, unavailableCache, type Cache, type CacheClient } from '../lib/cache/client'
import { redisCacheStore } from '../lib/cache/store'
import { parseBooleanVariable, parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { defineFeature, type FeatureApi, type TierBinding } from '../lib/feature'
import type { FeatureRequirement } from '../lib/resolve-tier'
import type { Unsubscribe } from '../lib/bus'
import { routeCacheHooks, type RouteCacheConfig } from '../lib/cache/route-hooks'

export type { RouteCacheConfig }

export const cacheRequirement: FeatureRequirement = { feature: 'cache', fallback: 'memory', flag: 'CACHE_ENABLED', outage: 'fail-open' }

export interface CachePluginOptions {
  /** Key namespace; overrides CACHE_PREFIX (default: the name in package.json). */
  prefix?: string
}

declare module 'fastify' {
  interface FastifyInstance {
    cache: Cache
  }
  interface FastifyContextConfig {
    cache?: RouteCacheConfig
  }
}

/** The client of one binding and the invalidation subscription it needs. */
interface CacheBinding { client: CacheClient, stop?: Unsubscribe }

export default defineFeature<CachePluginOptions, CacheBinding>({
  name: 'cache',
  likelyOwner: '@fastify/caching',
  setup (feature, opts) {
    const { connections, variable } = feature
    const prefix = feature.prefix(opts.prefix)
    const settings = {
      defaultTtlMs: parseDurationVariable(variable, 'CACHE_DEFAULT_TTL', '60s'),
      l1MaxTtlMs: parseDurationVariable(variable, 'CACHE_L1_TTL', '10s'),
      timeoutMs: parseIntegerVariable(variable, 'CACHE_TIMEOUT_MS', 250, 1, 60000),
      l1MaxEntries: parseIntegerVariable(variable, 'CACHE_L1_MAX_ENTRIES', 10000, 0, 10_000_000),
      l1MaxBytes: parseIntegerVariable(variable, 'CACHE_L1_MAX_BYTES', 64 * 1024 * 1024, 1024, 2 ** 40),
      maxValueBytes: parseIntegerVariable(variable, 'CACHE_MAX_VALUE_BYTES', 1024 * 1024, 1024, 512 * 1024 * 1024),
      maxVariants: parseIntegerVariable(variable, 'CACHE_ROUTE_MAX_VARIANTS', 1000, 1, 10_000_000),
      honorNoCache: parseBooleanVariable(variable, 'CACHE_HONOR_NO_CACHE', false)
    }
    const instanceId = randomUUID()
    const channel = `${prefix}:cache:invalidate`
    const skipped = unavailableCache(feature.refusal)
    const client = (): Cache => feature.store?.client ?? skipped

    // A move starts a new client: memory entries were never shared and are dropped, L1 starts cold.
    async function open ({ tier, reason, commands, bus }: TierBinding): Promise<CacheBinding> {
      const created = createCache({
        tier,
        reason,
        instanceId,
        defaultTtlMs: settings.defaultTtlMs,
        l1MaxEntries: settings.l1MaxEntries,
        l1MaxBytes: settings.l1MaxBytes,
        l1MaxTtlMs: settings.l1MaxTtlMs,
        maxValueBytes: settings.maxValueBytes,
        store: commands === null ? null : redisCacheStore(commands, prefix, channel, instanceId),
        commandsSent: () => commands?.sent() ?? 0,
        shed: () => connections.usage.shedding,
        onStoreError: (err, operation) => feature.warn(`cache-${operation}`, `cache ${operation} failed on ${tier}, served without Redis: ${connections.redact(err).message}`, { tier }),
        failure: feature.failure
      })
      // Other instances' writes drop our L1 copies; a lost message is bounded by CACHE_L1_TTL. Memory has no other instance.
      const stop = commands !== null ? await bus.subscribe(channel, (message) => created.applyInvalidation(message)) : undefined
      return { client: created, stop }
    }

    // Plain forwards (no async wrapper): one more promise per call would show on the L1-hit path.
    const api: FeatureApi<Cache> = {
      get: (key) => client().get(key),
      set: (key, value, options) => client().set(key, value, options),
      del: (key) => client().del(key),
      has: (key) => client().has(key),
      getOrSet: (key, loader, options) => client().getOrSet(key, loader, options),
      invalidateTags: (tags) => client().invalidateTags(tags),
      clear: () => client().clear(),
      stats: () => client().stats()
    }

    // L1 copies of values Redis no longer holds would be served for up to CACHE_L1_TTL while every other instance misses.
    feature.onRestarted(() => feature.store?.client.dropL1())

    // Route response caching: GET/HEAD routes opt in with `config.cache`.
    feature.fastify.addHook('onRoute', routeCacheHooks({
      reader: () => feature.store?.client,
      write: async (key, stored, options, variants) => await (feature.store?.client.storeShared(key, stored, options, variants) ?? 'store-failed'),
      inject: async (options) => await feature.fastify.inject(options),
      defaultTtlMs: settings.defaultTtlMs,
      maxVariants: settings.maxVariants,
      honorNoCache: settings.honorNoCache,
      redact: connections.redact,
      warn: (key, message) => feature.warn(key, message),
      background: feature.background
    }))

    return {
      requirement: cacheRequirement,
      timeoutMs: settings.timeoutMs,
      open,
      close: async (binding) => await binding.stop?.(),
      describe: () => ({ stats: api.stats() }),
      api
    }
  }
})
