import { createHash, randomBytes } from 'node:crypto'
import type { FastifyReply, FastifyRequest, InjectOptions, RouteOptions } from 'fastify'
import type { CacheClient, CacheSetOptions, Envelope } from './client'
import { parseDuration } from '../duration'

// Route response caching that speaks HTTP. A GET/HEAD route with
// `config.cache` gets an onRequest hook that answers from the cache before
// the handler runs, and an onSend hook that stores cacheable responses after
// they are sent. Per instance, concurrent requests for one key share one
// lookup and at most one handler run (a "flight"); hits carry Cache-Status
// (RFC 9211), Age, ETag and max-age (RFC 9111), and answer If-None-Match
// with 304.

/** `config: { cache: { ttl: 30 } }` on a GET route caches its 200 responses. */
export interface RouteCacheConfig {
  ttl?: number | string
  /** Cache key for a request (default: the URL with its query string). */
  key?: (request: FastifyRequest) => string
  tags?: readonly string[] | ((request: FastifyRequest) => readonly string[])
  /** Past its TTL, serve the entry at once for this long while one background handler run refreshes it. */
  staleWhileRevalidate?: number | string
  /** Past its TTL, serve the entry for this long in place of a failed handler (5xx or a thrown error). */
  staleIfError?: number | string
  /** Request headers that select the representation (e.g. `['accept-language']`): folded into the key, sent as `Vary`. */
  vary?: readonly string[]
}

/** A response as stored: its representation headers and body, its validator, and when it was stored. */
export interface StoredResponse {
  body: string
  base64?: true
  headers: Record<string, string | string[]>
  etag: string
  /** Epoch ms: `Age` on any instance. */
  storedAt: number
}

export const CACHE_STATUS_NAME = 'redis-tiers'

export interface RouteCacheDeps {
  /** The current binding's reader (undefined while the cache is skipped). */
  reader: () => Pick<CacheClient, 'peekShared' | 'lookupShared'> | undefined
  write: (key: string, stored: StoredResponse, options: CacheSetOptions) => Promise<void>
  /** A request through the app's router: a stale-while-revalidate refresh. */
  inject: (options: InjectOptions) => Promise<unknown>
  defaultTtlMs: number
  redact: (err: unknown) => Error
  warn: (key: string, message: string) => void
}

interface Route {
  config: RouteCacheConfig
  ttlMs: number | undefined
  swrMs: number
  sieMs: number
  vary: readonly string[]
  varyHeader: string | undefined
}

/** What a flight ends with: an entry to answer every waiter with, or null (each waiter runs the handler itself). */
interface Shared { envelope: Envelope, status: string }
interface Flight { promise: Promise<Shared | null>, settle: (shared: Shared | null) => void }

interface Pending {
  key: string
  route: Route
  /** The flight this request leads: settled in onSend. */
  flight?: Flight
  /** An expired entry still inside the staleIfError window. */
  stale?: Envelope
  /** Cache-Status of a response the handler produced. */
  fwd: 'miss' | 'bypass'
  store: boolean
  /** A stale-while-revalidate refresh: the key stays marked as refreshing until its write lands. */
  refresh?: true
}

// Never stored with a response: hop-by-hop, recomputed per answer, or ours.
const UNSTORED = new Set(['content-length', 'date', 'connection', 'keep-alive', 'transfer-encoding', 'set-cookie', 'age', 'etag', 'x-cache', 'cache-status'])
const UNCACHEABLE_CONTROL = /(?:^|,)\s*(?:private|no-store|no-cache)\b/i

function toArray<T> (value: T | T[] | undefined): T[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value]
}

function isStored (value: unknown): value is StoredResponse {
  const stored = value as Partial<StoredResponse> | null
  return typeof stored === 'object' && stored !== null && typeof stored.etag === 'string' && typeof stored.storedAt === 'number' && typeof stored.body === 'string'
}

/** If-None-Match uses the weak comparison (RFC 9110, 13.1.2). */
function matches (ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false
  const opaque = etag.replace(/^W\//, '')
  return ifNoneMatch.split(',').some((tag) => {
    const t = tag.trim()
    return t === '*' || t.replace(/^W\//, '') === opaque
  })
}

function strongEtag (body: string): string {
  return `"${createHash('sha1').update(body).digest('base64url')}"`
}

/** The onRoute hook that adds the two hooks to every route with `config.cache`. */
export function routeCacheHooks (deps: RouteCacheDeps): (route: RouteOptions) => void {
  const pending = new WeakMap<FastifyRequest, Pending>()
  const flights = new Map<string, Flight>()
  const refreshing = new Set<string>()
  const ours = new WeakSet<object>()
  // Marks our own refresh requests; unguessable, so a client cannot skip the cache with it.
  const refreshHeader = 'x-redis-tiers-refresh'
  const refreshSecret = randomBytes(16).toString('hex')

  function keyFor (route: Route, request: FastifyRequest): string {
    let key = `route:GET:${route.config.key !== undefined ? route.config.key(request) : request.url}`
    for (const name of route.vary) key += `\n${name}:${String(request.headers[name] ?? '')}`
    if (key.length > 400) key = `route:GET:sha1:${createHash('sha1').update(key).digest('hex')}`
    return key
  }

  function startFlight (key: string): Flight {
    let settle!: (shared: Shared | null) => void
    const promise = new Promise<Shared | null>((resolve) => { settle = resolve })
    const flight: Flight = {
      promise,
      settle: (shared) => {
        if (flights.get(key) === flight) flights.delete(key)
        settle(shared)
      }
    }
    flights.set(key, flight)
    return flight
  }

  // The headers of an answer from an entry only change when its Age or TTL
  // crosses a whole second: they are built once per second per L1 entry, so
  // that a hit is one reply.headers() call.
  interface Prepared { age: number, ttl: number, status: string, headers: Record<string, string | string[]>, body: string | Buffer }
  const prepared = new WeakMap<Envelope, Prepared>()

  function prepare (envelope: Envelope, status: string, now: number): Prepared {
    const stored = envelope.v as StoredResponse
    const age = Math.max(0, Math.floor((now - stored.storedAt) / 1000))
    const ttl = Math.floor((envelope.e - now) / 1000)
    const last = prepared.get(envelope)
    if (last !== undefined && last.age === age && last.ttl === ttl && last.status === status) return last
    const headers: Record<string, string | string[]> = { ...stored.headers, etag: stored.etag, age: String(age) }
    if (stored.headers['cache-control'] === undefined) headers['cache-control'] = `max-age=${Math.max(0, ttl)}`
    headers['cache-status'] = `${CACHE_STATUS_NAME}; ${status}; ttl=${ttl}`
    headers['x-cache'] = 'HIT'
    const body = last?.body ?? (stored.base64 === true ? Buffer.from(stored.body, 'base64') : stored.body)
    const fresh: Prepared = { age, ttl, status, headers, body }
    prepared.set(envelope, fresh)
    return fresh
  }

  /** The headers of an answer from the cache; returns the body to send, or null for a 304. */
  function answer (request: FastifyRequest, reply: FastifyReply, envelope: Envelope, status: string): string | Buffer | null {
    const ready = prepare(envelope, status, Date.now())
    reply.headers(ready.headers)
    if (matches(request.headers['if-none-match'], (envelope.v as StoredResponse).etag)) {
      reply.code(304)
      return null
    }
    return ready.body
  }

  function sendCached (request: FastifyRequest, reply: FastifyReply, envelope: Envelope, status: string): void {
    const body = answer(request, reply, envelope, status)
    void (body === null ? reply.send() : reply.send(body))
  }

  /** One background handler run per key and instance, through the router, as the request that found the entry stale. */
  function refresh (request: FastifyRequest, key: string): void {
    if (refreshing.has(key)) return
    refreshing.add(key)
    const headers = { ...request.headers, [refreshHeader]: refreshSecret }
    delete headers['if-none-match']
    delete headers['cache-control']
    deps.inject({ method: 'GET', url: request.url, headers }).catch((err: unknown) => {
      refreshing.delete(key)
      deps.warn('cache-refresh', `stale-while-revalidate refresh of ${request.url} failed: ${deps.redact(err).message}`)
    })
  }

  // onRequest, callback style and bound to its route: an L1 hit is answered
  // synchronously, before parsing, validation and the handler.
  const reader = (route: Route) => function read (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void): void {
    const client = deps.reader()
    if (client === undefined) return done()
    const key = keyFor(route, request)
    const head = request.method === 'HEAD'
    if (request.headers[refreshHeader] === refreshSecret) {
      pending.set(request, { key, route, fwd: 'miss', store: true, refresh: true })
      return done()
    }
    const control = request.headers['cache-control']
    if (control !== undefined && /no-cache|no-store/i.test(control)) {
      pending.set(request, { key, route, fwd: 'bypass', store: !head && !/no-store/i.test(control) })
      return done()
    }
    const local = client.peekShared(key)
    if (local !== undefined && isStored(local.v)) return sendCached(request, reply, local, 'hit')
    const flight = flights.get(key)
    if (flight !== undefined) {
      // Another request for this key is looking it up or running the handler: its answer is ours.
      flight.promise.then((shared) => {
        if (shared !== null) sendCached(request, reply, shared.envelope, shared.status === 'fwd=miss' ? 'fwd=miss; collapsed' : shared.status)
        else {
          pending.set(request, { key, route, fwd: 'miss', store: !head })
          done()
        }
      }, done)
      return
    }
    const own = head ? undefined : startFlight(key)
    client.lookupShared(key).then((envelope) => {
      const now = Date.now()
      const found = envelope !== undefined && isStored(envelope.v) ? envelope : undefined
      if (found !== undefined && found.e > now) {
        own?.settle({ envelope: found, status: 'hit' })
        return sendCached(request, reply, found, 'hit')
      }
      // A refresh may have landed in L1 while this lookup was on its way to Redis.
      const refreshed = found !== undefined ? client.peekShared(key) : undefined
      if (refreshed !== undefined && isStored(refreshed.v)) {
        own?.settle({ envelope: refreshed, status: 'hit' })
        return sendCached(request, reply, refreshed, 'hit')
      }
      if (found !== undefined && now < found.e + route.swrMs) {
        own?.settle({ envelope: found, status: 'fwd=stale' })
        refresh(request, key)
        return sendCached(request, reply, found, 'fwd=stale')
      }
      pending.set(request, { key, route, flight: own, stale: found !== undefined && now < found.e + route.sieMs ? found : undefined, fwd: 'miss', store: !head })
      // A leader whose onSend never runs (its reply hijacked, say) must not keep its waiters waiting.
      if (own !== undefined) reply.raw.once('close', () => own.settle(null))
      done()
    }, (err: Error) => {
      own?.settle(null)
      done(err)
    })
  }

  /** A 200 with a string or Buffer body, no cookie, nothing private, and no Vary beyond the route's own. */
  function cacheable (reply: FastifyReply, payload: unknown, route: Route): payload is string | Buffer {
    if (reply.statusCode !== 200 || (typeof payload !== 'string' && !Buffer.isBuffer(payload))) return false
    if (reply.hasHeader('set-cookie')) return false
    const control = reply.getHeader('cache-control')
    if (control !== undefined && UNCACHEABLE_CONTROL.test(String(control))) return false
    const vary = reply.getHeader('vary')
    if (vary === undefined) return true
    return String(vary).split(',').every((name) => route.vary.includes(name.trim().toLowerCase()))
  }

  function toStored (reply: FastifyReply, payload: string | Buffer): StoredResponse {
    const body = Buffer.isBuffer(payload) ? payload.toString('base64') : payload
    const headers: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(reply.getHeaders())) {
      if (value !== undefined && !UNSTORED.has(name)) headers[name] = typeof value === 'number' ? String(value) : value
    }
    const own = reply.getHeader('etag')
    const stored: StoredResponse = { body, headers, etag: typeof own === 'string' ? own : strongEtag(body), storedAt: Date.now() }
    if (Buffer.isBuffer(payload)) stored.base64 = true
    return stored
  }

  // The response is sent first: the write is best-effort (fail-open, bounded by CACHE_TIMEOUT_MS,
  // errors counted), and a Redis that stalls must not add its timeout to every miss.
  function store (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: Error | null, payload?: unknown) => void): void {
    const entry = pending.get(request)
    if (entry === undefined) return done(null, payload)
    pending.delete(request)
    const { route } = entry
    if (route.varyHeader !== undefined) {
      const vary = reply.getHeader('vary')
      reply.header('vary', vary === undefined ? route.varyHeader : `${String(vary)}, ${route.varyHeader}`)
    }
    if (reply.statusCode >= 500 && entry.stale !== undefined) {
      // staleIfError: the expired entry answers in place of the failure, for the waiters too.
      entry.flight?.settle({ envelope: entry.stale, status: 'fwd=miss; detail=stale-if-error' })
      reply.removeHeader('content-type')
      reply.code(200)
      const body = answer(request, reply, entry.stale, 'fwd=miss; detail=stale-if-error')
      return done(null, body ?? '')
    }
    if (!cacheable(reply, payload, route)) {
      if (entry.refresh === true) refreshing.delete(entry.key)
      entry.flight?.settle(null)
      reply.header('cache-status', `${CACHE_STATUS_NAME}; fwd=${entry.fwd}`)
      reply.header('x-cache', 'MISS')
      return done(null, payload)
    }
    const stored = toStored(reply, payload)
    const ttlMs = route.ttlMs ?? deps.defaultTtlMs
    entry.flight?.settle({ envelope: { v: stored, e: stored.storedAt + ttlMs }, status: 'fwd=miss' })
    reply.header('etag', stored.etag)
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', `max-age=${Math.floor(ttlMs / 1000)}`)
    reply.header('cache-status', `${CACHE_STATUS_NAME}; fwd=${entry.fwd}${entry.store ? '; stored' : ''}`)
    reply.header('x-cache', 'MISS')
    const notModified = matches(request.headers['if-none-match'], stored.etag)
    if (notModified) reply.code(304)
    done(null, notModified ? '' : payload)
    if (entry.store) void save(request, entry, stored, ttlMs)
  }

  async function save (request: FastifyRequest, entry: Pending, stored: StoredResponse, ttlMs: number): Promise<void> {
    const { config, swrMs, sieMs } = entry.route
    const tags = typeof config.tags === 'function' ? config.tags(request) : config.tags
    const keepMs = Math.max(swrMs, sieMs)
    try {
      await deps.write(entry.key, stored, { ttl: `${ttlMs}ms`, tags, staleIfErrorTtl: keepMs > 0 ? `${keepMs}ms` : undefined })
    } catch (err) {
      request.log.warn({ err: deps.redact(err) }, 'route response not cached')
    } finally {
      if (entry.refresh === true) refreshing.delete(entry.key)
    }
  }

  return (options: RouteOptions): void => {
    const config = options.config?.cache
    if (config === undefined) return
    const methods = toArray(options.method)
    if (!methods.every((m) => m === 'GET' || m === 'HEAD')) throw new Error(`config.cache on ${methods.join(',')} ${options.url}: only GET and HEAD responses can be cached`)
    // Fastify derives the HEAD route from the GET one, hooks included: add ours once.
    if (toArray(options.onRequest).some((hook) => ours.has(hook))) return
    const duration = (value: number | string | undefined, name: string): number => value === undefined ? 0 : parseDuration(value, `config.cache.${name} of ${options.url}`)
    const vary = (config.vary ?? []).map((name) => name.toLowerCase())
    const route: Route = {
      config,
      ttlMs: config.ttl === undefined ? undefined : duration(config.ttl, 'ttl'),
      swrMs: duration(config.staleWhileRevalidate, 'staleWhileRevalidate'),
      sieMs: duration(config.staleIfError, 'staleIfError'),
      vary,
      varyHeader: vary.length > 0 ? vary.join(', ') : undefined
    }
    const read = reader(route)
    ours.add(read)
    options.onRequest = [...toArray(options.onRequest), read]
    options.onSend = [...toArray(options.onSend), store]
  }
}
