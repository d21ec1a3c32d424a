import { randomUUID, createHash } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { createCache, unavailableCache, type Cache, type CacheClient } from '../lib/cache/client'
import { redisCacheStore } from '../lib/cache/store'
import { parseDuration } from '../lib/duration'
import { parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { claimFeatureDecorator } from '../lib/decorators'
import { resolvePrefix } from '../lib/prefix'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import type { FeatureRequirement, Resolution } from '../lib/resolve-tier'
import type { Unsubscribe } from '../lib/bus'

export const cacheRequirement: FeatureRequirement = { feature: 'cache', tiers: ['tcp', 'rest'], fallback: 'memory', flag: 'CACHE_ENABLED', outage: 'fail-open' }

export interface CachePluginOptions {
  /** Decorator name (default `cache`; @fastify/caching also uses `cache`). */
  decorator?: string
  /** Key namespace; overrides CACHE_PREFIX (default: the name in package.json). */
  prefix?: string
}

/** `config: { cache: { ttl: 30 } }` on a GET route caches its 200 responses. */
export interface RouteCacheConfig {
  ttl?: number | string
  /** Cache key for a request (default: the URL with its query string). */
  key?: (request: FastifyRequest) => string
  tags?: readonly string[] | ((request: FastifyRequest) => readonly string[])
}

declare module 'fastify' {
  interface FastifyInstance {
    cache: Cache
  }
  interface FastifyContextConfig {
    cache?: RouteCacheConfig
  }
}

interface StoredResponse { body: string, base64?: boolean, type?: string }

function toArray<T> (value: T | T[] | undefined): T[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value]
}

async function cachePlugin (fastify: FastifyInstance, opts: CachePluginOptions): Promise<void> {
  const decorator = claimFeatureDecorator(fastify, opts.decorator, 'cache', '@fastify/caching')
  const { connections } = fastify
  const variable = connections.variable
  const prefix = resolvePrefix(opts.prefix, 'CACHE_PREFIX', variable)
  const settings = {
    defaultTtlMs: parseDurationVariable(variable, 'CACHE_DEFAULT_TTL', '60s'),
    l1MaxTtlMs: parseDurationVariable(variable, 'CACHE_L1_TTL', '10s'),
    timeoutMs: parseIntegerVariable(variable, 'CACHE_TIMEOUT_MS', 250, 1, 60000),
    l1MaxEntries: parseIntegerVariable(variable, 'CACHE_L1_MAX_ENTRIES', 10000, 0, 10_000_000),
    l1MaxBytes: parseIntegerVariable(variable, 'CACHE_L1_MAX_BYTES', 64 * 1024 * 1024, 1024, 2 ** 40)
  }

  const log = fastify.log.child({ plugin: 'cache' })
  const warn = rateLimitedWarn(log)
  const instanceId = randomUUID()
  const channel = `${prefix}:cache:invalidate`

  /** The client of one resolution and the invalidation subscription it needs. */
  interface Binding { client: Cache, reader?: Pick<CacheClient, 'peekShared' | 'getShared'>, stop?: Unsubscribe }

  async function bindTo (resolution: Resolution): Promise<Binding> {
    if (resolution.status === 'skipped') return { client: unavailableCache(resolution.reason) }
    const { tier } = resolution
    const commands = connections.commands(tier, settings.timeoutMs)
    const client = createCache({
      tier,
      reason: resolution.reason,
      instanceId,
      defaultTtlMs: settings.defaultTtlMs,
      l1MaxEntries: settings.l1MaxEntries,
      l1MaxBytes: settings.l1MaxBytes,
      l1MaxTtlMs: settings.l1MaxTtlMs,
      store: commands === null ? null : redisCacheStore(commands, prefix, channel, instanceId),
      commandsSent: () => commands?.sent() ?? 0,
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

  connections.describe('cache', () => ({ stats: cache.stats() }))
  fastify.decorate(decorator, cache)
  fastify.addHook('onClose', async () => { await binding.stop?.() })

  // Route response caching: GET/HEAD routes opt in with `config.cache`.
  const pending = new WeakMap<FastifyRequest, { key: string, config: RouteCacheConfig }>()

  function sendHit (reply: FastifyReply, hit: StoredResponse): void {
    reply.header('x-cache', 'HIT')
    if (hit.type !== undefined) reply.type(hit.type)
    void reply.send(hit.base64 === true ? Buffer.from(hit.body, 'base64') : hit.body)
  }

  function miss (request: FastifyRequest, reply: FastifyReply, key: string, config: RouteCacheConfig, done: (err?: Error) => void): void {
    reply.header('x-cache', 'MISS')
    pending.set(request, { key, config })
    done()
  }

  // onRequest, callback style and bound to its route's config (request.routeOptions
  // builds an object per access): an L1 hit is answered synchronously, before
  // parsing, validation and the handler, without a promise per request.
  const reader = (config: RouteCacheConfig) => function read (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    const client = binding.reader
    if (client === undefined) return done()
    let key = `route:GET:${config.key !== undefined ? config.key(request) : request.url}`
    if (key.length > 400) key = `route:GET:sha1:${createHash('sha1').update(key).digest('hex')}`
    const control = request.headers['cache-control']
    if (control !== undefined && /no-cache|no-store/i.test(control)) return miss(request, reply, key, config, done)
    const local = client.peekShared<StoredResponse>(key)
    if (local !== undefined) return sendHit(reply, local)
    client.getShared<StoredResponse>(key).then((hit) => hit !== undefined ? sendHit(reply, hit) : miss(request, reply, key, config, done), done)
  }

  // The response is sent first: the write is best-effort (fail-open, bounded by CACHE_TIMEOUT_MS,
  // errors counted), and a Redis that stalls must not add its timeout to every miss.
  function store (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: Error | null, payload?: unknown) => void): void {
    const entry = pending.get(request)
    done(null, payload)
    if (entry === undefined) return
    pending.delete(request)
    void save(request, reply, payload, entry)
  }

  async function save (request: FastifyRequest, reply: FastifyReply, payload: unknown, entry: { key: string, config: RouteCacheConfig }): Promise<void> {
    if (reply.statusCode !== 200 || (typeof payload !== 'string' && !Buffer.isBuffer(payload))) return
    const stored: StoredResponse = Buffer.isBuffer(payload) ? { body: payload.toString('base64'), base64: true } : { body: payload }
    const type = reply.getHeader('content-type')
    if (typeof type === 'string') stored.type = type
    const tags = typeof entry.config.tags === 'function' ? entry.config.tags(request) : entry.config.tags
    try {
      await cache.set(entry.key, stored, { ttl: entry.config.ttl, tags })
    } catch (err) {
      request.log.warn({ err: connections.redact(err) }, 'route response not cached')
    }
  }

  fastify.addHook('onRoute', (route) => {
    const config = route.config?.cache
    if (config === undefined) return
    const methods = toArray(route.method)
    if (!methods.every((m) => m === 'GET' || m === 'HEAD')) throw new Error(`config.cache on ${methods.join(',')} ${route.url}: only GET and HEAD responses can be cached`)
    if (config.ttl !== undefined) parseDuration(config.ttl, `config.cache.ttl of ${route.url}`)
    route.onRequest = [...toArray(route.onRequest), reader(config)]
    route.onSend = [...toArray(route.onSend), store]
  })
}

export default fp(cachePlugin, { name: 'cache', fastify: '5.x', dependencies: ['connections'] })
