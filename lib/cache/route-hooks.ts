import { createHash } from 'node:crypto'
import type { FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import type { CacheClient, CacheSetOptions } from './client'
import { parseDuration } from '../duration'

// Route response caching: a GET/HEAD route with `config.cache` gets an
// onRequest hook that answers hits before the handler runs, and an onSend
// hook that stores 200 responses after they are sent.

/** `config: { cache: { ttl: 30 } }` on a GET route caches its 200 responses. */
export interface RouteCacheConfig {
  ttl?: number | string
  /** Cache key for a request (default: the URL with its query string). */
  key?: (request: FastifyRequest) => string
  tags?: readonly string[] | ((request: FastifyRequest) => readonly string[])
}

export interface StoredResponse { body: string, base64?: boolean, type?: string }

export interface RouteCacheDeps {
  /** The current binding's reader (undefined while the cache is skipped). */
  reader: () => Pick<CacheClient, 'peekShared' | 'getShared'> | undefined
  write: (key: string, stored: StoredResponse, options: CacheSetOptions) => Promise<void>
  redact: (err: unknown) => Error
}

function toArray<T> (value: T | T[] | undefined): T[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value]
}

/** The onRoute hook that adds the two hooks to every route with `config.cache`. */
export function routeCacheHooks (deps: RouteCacheDeps): (route: RouteOptions) => void {
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
    const client = deps.reader()
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
      await deps.write(entry.key, stored, { ttl: entry.config.ttl, tags })
    } catch (err) {
      request.log.warn({ err: deps.redact(err) }, 'route response not cached')
    }
  }

  return (route: RouteOptions): void => {
    const config = route.config?.cache
    if (config === undefined) return
    const methods = toArray(route.method)
    if (!methods.every((m) => m === 'GET' || m === 'HEAD')) throw new Error(`config.cache on ${methods.join(',')} ${route.url}: only GET and HEAD responses can be cached`)
    if (config.ttl !== undefined) parseDuration(config.ttl, `config.cache.ttl of ${route.url}`)
    route.onRequest = [...toArray(route.onRequest), reader(config)]
    route.onSend = [...toArray(route.onSend), store]
  }
}
