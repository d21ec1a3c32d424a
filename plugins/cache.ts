import { randomUUID } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { createCache, unavailableCache, type Cache, type CacheClient } from '../lib/cache/client'
import { redisCacheStore } from '../lib/cache/store'
import { parseBooleanVariable, parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { claimFeatureDecorator } from '../lib/decorators'
import { resolvePrefix } from '../lib/prefix'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import type { FeatureRequirement, Resolution } from '../lib/resolve-tier'
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

async function cachePlugin (fastify: FastifyInstance, opts: CachePluginOptions): Promise<void> {
  claimFeatureDecorator(fastify, 'cache', '@fastify/caching')
  const { connections } = fastify
  const variable = connections.variable
  const prefix = resolvePrefix(opts.prefix, 'CACHE_PREFIX', variable)
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

  const log = fastify.log.child({ plugin: 'cache' })
  const warn = rateLimitedWarn(log)
  const instanceId = randomUUID()
  const channel = `${prefix}:cache:invalidate`

  /** The client of one resolution and the invalidation subscription it needs. */
  interface Binding { client: Cache, reader?: Pick<CacheClient, 'peekShared' | 'lookupShared' | 'storeShared' | 'storeFailing' | 'dropL1'>, stop?: Unsubscribe }

  async function bindTo (resolution: Resolution): Promise<Binding> {
    if (resolution.status === 'skipped') return { client: unavailableCache(resolution.reason) }
    const { tier } = resolution
    const commands = connections.commands(tier, settings.timeoutMs, 'cache')
    const client = createCache({
      tier,
      reason: resolution.reason,
      instanceId,
      defaultTtlMs: settings.defaultTtlMs,
      l1MaxEntries: settings.l1MaxEntries,
      l1MaxBytes: settings.l1MaxBytes,
      l1MaxTtlMs: settings.l1MaxTtlMs,
      maxValueBytes: settings.maxValueBytes,
      store: commands === null ? null : redisCacheStore(commands, prefix, channel, instanceId),
      commandsSent: () => commands?.sent() ?? 0,
      shed: () => connections.usage.shedding,
      onStoreError: (err, operation) => warn(`cache-${operation}`, `cache ${operation} failed on ${tier}, served without Redis: ${connections.redact(err).message}`, { tier })
    })
    // Other instances' writes drop our L1 copies; a lost message is bounded by CACHE_L1_TTL.
    const stop = tier !== 'memory' ? await connections.bus(tier).subscribe(channel, (message) => client.applyInvalidation(message)) : undefined
    return { client, reader: client, stop }
  }

  // A move starts a new client: memory entries were never shared and are dropped, L1 starts cold.
  let binding = await bindTo(connections.resolve(cacheRequirement, async (next) => {
    const fresh = await bindTo(next)
    const old = binding
    binding = fresh
    await old.stop?.()
  }))

  // The decorator is the same object for the life of the app; the binding behind it moves.
  const cache: Cache = {
    get available () { return binding.client.available },
    get tier () { return binding.client.tier },
    get reason () { return binding.client.reason },
    // Plain forwards (no async wrapper): one more promise per call would show on the L1-hit path.
    get: (key) => binding.client.get(key),
    set: (key, value, options) => binding.client.set(key, value, options),
    del: (key) => binding.client.del(key),
    has: (key) => binding.client.has(key),
    getOrSet: (key, loader, options) => binding.client.getOrSet(key, loader, options),
    invalidateTags: (tags) => binding.client.invalidateTags(tags),
    clear: () => binding.client.clear(),
    stats: () => binding.client.stats()
  }

  // L1 copies of values Redis no longer holds would be served for up to CACHE_L1_TTL while every other instance misses.
  const offRestarted = connections.on('restarted', ({ tier }) => { if (binding.client.tier === tier) binding.reader?.dropL1() })

  connections.describe('cache', () => ({ stats: cache.stats() }))
  fastify.decorate('cache', cache)
  fastify.addHook('onClose', async () => {
    offRestarted()
    await binding.stop?.()
  })

  // Route response caching: GET/HEAD routes opt in with `config.cache`.
  fastify.addHook('onRoute', routeCacheHooks({
    reader: () => binding.reader,
    write: async (key, stored, options, variants) => await (binding.reader?.storeShared(key, stored, options, variants) ?? 'store-failed'),
    inject: async (options) => await fastify.inject(options),
    defaultTtlMs: settings.defaultTtlMs,
    maxVariants: settings.maxVariants,
    honorNoCache: settings.honorNoCache,
    redact: connections.redact,
    warn: (key, message) => warn(key, message)
  }))
}

export default fp(cachePlugin, { name: 'cache', fastify: '5.x', dependencies: ['connections'] })
