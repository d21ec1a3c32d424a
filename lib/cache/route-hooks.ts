import { createHash, randomBytes } from 'node:crypto'
import type { FastifyReply, FastifyRequest, InjectOptions, RouteOptions } from 'fastify'
import type { CacheClient, CacheSetOptions, Envelope, WriteOutcome } from './client'
import type { Variants } from './store'
import { parseConfigDuration } from '../duration'
import { ConfigError } from '../errors'

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
  /**
   * Request headers that select the representation (e.g. `['accept-language']`): hashed into the key,
   * sent as `Vary`. Naming `authorization` or `cookie` stores one entry per credential, sent as `private`.
   */
  vary?: readonly string[]
  /**
   * The query parameters that select the representation (e.g. `['page', 'sort']`): any others are
   * ignored and create no entry. Default: the whole query string counts.
   */
  query?: readonly string[]
  /**
   * The response is the same for everyone: requests with `Authorization` or `Cookie` are served from
   * and stored into the shared entry. Default false: such requests bypass the cache (RFC 9111, 3.5)
   * unless `vary` names their credential header or the response says `public`/`s-maxage`.
   */
  shared?: boolean
  /** Entries this route may hold at once across the fleet (default CACHE_ROUTE_MAX_VARIANTS); past it, served but not stored. */
  maxVariants?: number
  /**
   * Honour a request's `Cache-Control: no-cache`/`max-age=0`/`Pragma: no-cache` (revalidate: run the handler,
   * one run for concurrent such requests) and `no-store`. Default CACHE_HONOR_NO_CACHE (false): ignored, as
   * nginx, Varnish and CDNs do, so that no client can multiply handler runs.
   */
  honorNoCache?: boolean
}

/** A response as stored: its representation headers and body, its validator, and when it was stored. */
export interface StoredResponse {
  body: string
  base64?: true
  headers: Record<string, string | string[]>
  etag: string
  /** Epoch ms: `Age` on any instance. */
  storedAt: number
  /** The response said `public`, `s-maxage` or `must-revalidate`: it may answer requests with credentials (RFC 9111, 3.5). */
  shareable?: true
  /** Stored per credential (the route varies on `authorization` or `cookie`): sent as `private`. */
  private?: true
}

export const CACHE_STATUS_NAME = 'redis-tiers'

export interface RouteCacheDeps {
  /** The current binding's reader (undefined while the cache is skipped). */
  reader: () => Pick<CacheClient, 'peekShared' | 'lookupShared' | 'storeFailing'> | undefined
  write: (key: string, stored: StoredResponse, options: CacheSetOptions, variants: Variants) => Promise<WriteOutcome>
  /** A request through the app's router: a stale-while-revalidate refresh. */
  inject: (options: InjectOptions) => Promise<unknown>
  defaultTtlMs: number
  /** CACHE_ROUTE_MAX_VARIANTS: entries a route may hold at once unless it says otherwise. */
  maxVariants: number
  /** CACHE_HONOR_NO_CACHE: whether routes honour a request's no-cache unless they say otherwise. */
  honorNoCache: boolean
  redact: (err: unknown) => Error
  warn: (key: string, message: string) => void
  /** Work the answer does not wait for (a refresh, an unconfirmed write): the feature runtime's background. */
  background: (work: Promise<unknown>) => void
}

interface Route {
  config: RouteCacheConfig
  ttlMs: number | undefined
  swrMs: number
  sieMs: number
  vary: readonly string[]
  varyHeader: string | undefined
  query: readonly string[] | undefined
  variants: Variants
  honorNoCache: boolean
  /** `vary` names a credential header: entries are per user and go out as private. */
  perUser: boolean
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
  fwd: 'miss' | 'bypass' | 'request'
  detail?: string
  store: boolean
  /** A request with credentials on a route that does not vary on them: stored only if the response says it is public. */
  publicOnly?: true
  /** A stale-while-revalidate refresh: the key stays marked as refreshing until its write lands. */
  refresh?: true
}

// Never stored with a response: hop-by-hop, recomputed per answer, or ours.
const UNSTORED = new Set(['content-length', 'date', 'connection', 'keep-alive', 'transfer-encoding', 'set-cookie', 'age', 'etag', 'x-cache', 'cache-status'])
const UNCACHEABLE_CONTROL = /(?:^|,)\s*(?:private|no-store|no-cache)\b/i
const SHAREABLE_CONTROL = /(?:^|,)\s*(?:public|s-maxage|must-revalidate)\b/i
/** Request headers that carry a user's identity: never a shared entry's key unless the route says how. */
const CREDENTIALS = ['authorization', 'cookie'] as const
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/
const NO_CACHE_REQUEST = /(?:^|,)\s*(?:no-cache|max-age\s*=\s*0)\b/i

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

function digest (text: string): string {
  return createHash('sha256').update(text).digest('base64url')
}

function strongEtag (body: string): string {
  return `"${createHash('sha1').update(body).digest('base64url')}"`
}

/** The part of a URL's query that selects the representation: the listed parameters, or all of it. */
function queryOf (url: string, listed: readonly string[] | undefined): string {
  const mark = url.indexOf('?')
  if (mark === -1) return ''
  const raw = url.slice(mark + 1)
  if (listed === undefined) return raw
  const params = new URLSearchParams(raw)
  return listed.map((name) => params.getAll(name).map((v) => `${name}=${v}`).join('&')).join('&')
}

/** `private` in place of `public`/`s-maxage`: an entry per credential must not be stored by a CDN. */
function privately (control: string | undefined, maxAge: number): string {
  if (control === undefined) return `private, max-age=${maxAge}`
  const kept = control.split(',').map((d) => d.trim()).filter((d) => d !== '' && !/^(?:public|private|s-maxage\s*=.*)$/i.test(d))
  return ['private', ...kept].join(', ')
}

/** A request directive that a route honouring no-cache acts on: revalidate, or revalidate and store nothing. */
function requestDirective (request: FastifyRequest): 'no-cache' | 'no-store' | undefined {
  const control = request.headers['cache-control']
  if (control !== undefined) return /no-store/i.test(control) ? 'no-store' : NO_CACHE_REQUEST.test(control) ? 'no-cache' : undefined
  return /no-cache/i.test(String(request.headers.pragma ?? '')) ? 'no-cache' : undefined
}

function durationOf (value: number | string | undefined, what: string): number {
  return value === undefined ? 0 : parseConfigDuration(value, what)
}

/** A route's `config.cache`, checked once when the route is added: a mistake fails boot with its name. */
function routeOf (config: RouteCacheConfig, url: string, deps: RouteCacheDeps): Route {
  const where = `config.cache of ${url}`
  const names = (value: unknown, option: string, pattern?: RegExp): readonly string[] | undefined => {
    if (value === undefined) return undefined
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string' && v !== '' && (pattern === undefined || pattern.test(v.toLowerCase())))) {
      throw new ConfigError(`${where}: ${option} must be an array of ${pattern === undefined ? 'non-empty strings' : 'header names'}`)
    }
    return value as string[]
  }
  const vary = (names(config.vary, 'vary', HEADER_NAME) ?? []).map((name) => name.toLowerCase())
  const max = config.maxVariants ?? deps.maxVariants
  if (!Number.isInteger(max) || max < 1 || max > 10_000_000) throw new ConfigError(`${where}: maxVariants must be a whole number from 1 to 10000000 (got ${String(config.maxVariants)})`)
  return {
    config,
    ttlMs: config.ttl === undefined ? undefined : durationOf(config.ttl, `${where}: ttl`),
    swrMs: durationOf(config.staleWhileRevalidate, `${where}: staleWhileRevalidate`),
    sieMs: durationOf(config.staleIfError, `${where}: staleIfError`),
    vary,
    varyHeader: vary.length > 0 ? vary.join(', ') : undefined,
    query: names(config.query, 'query'),
    variants: { id: digest(`GET ${url}`).slice(0, 12), max },
    honorNoCache: config.honorNoCache ?? deps.honorNoCache,
    perUser: vary.some((name) => (CREDENTIALS as readonly string[]).includes(name))
  }
}

/** The onRoute hook that adds the two hooks to every route with `config.cache`. */
export function routeCacheHooks (deps: RouteCacheDeps): (route: RouteOptions) => void {
  const pending = new WeakMap<FastifyRequest, Pending>()
  const flights = new Map<string, Flight>()
  // Requests that honour their no-cache share one handler run per key, apart from ordinary misses.
  const revalidations = new Map<string, Flight>()
  const refreshing = new Set<string>()
  const ours = new WeakSet<object>()
  // Marks our own refresh requests; unguessable, so a client cannot skip the cache with it.
  const refreshHeader = 'x-redis-tiers-refresh'
  const refreshSecret = randomBytes(16).toString('hex')

  /**
   * The entry of a request: the route, the scheme and host as Fastify resolves them (X-Forwarded-*
   * count only behind a trusted proxy), the path, and a hash of what selects the representation
   * (query, varied headers): no header value or query string is ever part of a key as sent.
   */
  function keyFor (route: Route, request: FastifyRequest): string {
    const url = request.url
    const mark = url.indexOf('?')
    const path = route.config.key !== undefined ? route.config.key(request) : mark === -1 ? url : url.slice(0, mark)
    let selected = route.config.key !== undefined ? '' : queryOf(url, route.query)
    for (const name of route.vary) selected += `\n${name}:${String(request.headers[name] ?? '')}`
    let where = `${request.protocol}://${request.host}${path}`
    if (where.length > 300) where = `sha256:${digest(where)}`
    // The braces keep a route's entries and its variant count in one cluster slot.
    return `route:{${route.variants.id}}:${where}${selected === '' ? '' : `#${digest(selected)}`}`
  }

  function startFlight (map: Map<string, Flight>, key: string): Flight {
    let settle!: (shared: Shared | null) => void
    const promise = new Promise<Shared | null>((resolve) => { settle = resolve })
    const flight: Flight = {
      promise,
      settle: (shared) => {
        if (map.get(key) === flight) map.delete(key)
        settle(shared)
      }
    }
    map.set(key, flight)
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
    if (stored.headers['cache-control'] === undefined) headers['cache-control'] = `${stored.private === true ? 'private, ' : ''}max-age=${Math.max(0, ttl)}`
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
    deps.background(deps.inject({ method: 'GET', url: request.url, headers }).catch((err: unknown) => {
      refreshing.delete(key)
      deps.warn('cache-refresh', `stale-while-revalidate refresh of ${request.url} failed: ${deps.redact(err).message}`)
    }))
  }

  /** The credential header of a request that a route does not key on (and has not declared shared), if any. */
  function unkeyedCredential (route: Route, request: FastifyRequest): string | undefined {
    if (route.config.shared === true) return undefined
    return CREDENTIALS.find((name) => request.headers[name] !== undefined && !route.vary.includes(name))
  }

  /** Joins the flight of `key` if there is one: its answer is ours, or (null) the handler runs for us too. */
  function join (map: Map<string, Flight>, key: string, request: FastifyRequest, reply: FastifyReply, ifNone: Pending, done: (err?: Error) => void): boolean {
    const flight = map.get(key)
    if (flight === undefined) return false
    flight.promise.then((shared) => {
      if (shared === null) {
        pending.set(request, ifNone)
        return done()
      }
      sendCached(request, reply, shared.envelope, shared.status === 'fwd=miss' || shared.status === 'fwd=request' ? `${shared.status}; collapsed` : shared.status)
    }, done)
    return true
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
    const credential = unkeyedCredential(route, request)
    if (credential !== undefined) {
      // Only an entry its response declared public may answer a request with credentials; no flight is shared with it.
      const local = client.peekShared(key)
      if (local !== undefined && isStored(local.v) && local.v.shareable === true) return sendCached(request, reply, local, 'hit')
      pending.set(request, { key, route, fwd: 'bypass', detail: credential, store: !head, publicOnly: true })
      return done()
    }
    const directive = route.honorNoCache ? requestDirective(request) : undefined
    if (directive !== undefined) {
      const revalidate: Pending = { key, route, fwd: 'request', store: !head && directive === 'no-cache' }
      if (join(revalidations, key, request, reply, revalidate, done)) return
      if (!head) revalidate.flight = startFlight(revalidations, key)
      return lead(request, reply, revalidate, done)
    }
    const local = client.peekShared(key)
    if (local !== undefined && isStored(local.v)) return sendCached(request, reply, local, 'hit')
    if (join(flights, key, request, reply, { key, route, fwd: 'miss', store: !head }, done)) return
    const own = head ? undefined : startFlight(flights, key)
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
      lead(request, reply, { key, route, flight: own, stale: found !== undefined && now < found.e + route.sieMs ? found : undefined, fwd: 'miss', store: !head }, done)
    }, (err: Error) => {
      own?.settle(null)
      done(err)
    })
  }

  /** The handler runs for this request; its flight (if it leads one) is settled in onSend. */
  function lead (request: FastifyRequest, reply: FastifyReply, entry: Pending, done: (err?: Error) => void): void {
    pending.set(request, entry)
    // A leader whose onSend never runs (its reply hijacked, say) must not keep its waiters waiting.
    const { flight } = entry
    if (flight !== undefined) reply.raw.once('close', () => flight.settle(null))
    done()
  }

  /** A 200 with a string or Buffer body, no cookie, nothing private, and no Vary beyond the route's own. */
  function cacheable (reply: FastifyReply, payload: unknown, entry: Pending): payload is string | Buffer {
    if (reply.statusCode !== 200 || (typeof payload !== 'string' && !Buffer.isBuffer(payload))) return false
    if (reply.hasHeader('set-cookie')) return false
    const control = reply.getHeader('cache-control')
    if (control !== undefined && UNCACHEABLE_CONTROL.test(String(control))) return false
    if (entry.publicOnly === true && (control === undefined || !SHAREABLE_CONTROL.test(String(control)))) return false
    const vary = reply.getHeader('vary')
    if (vary === undefined) return true
    return String(vary).split(',').every((name) => entry.route.vary.includes(name.trim().toLowerCase()))
  }

  function toStored (reply: FastifyReply, payload: string | Buffer, route: Route): StoredResponse {
    const body = Buffer.isBuffer(payload) ? payload.toString('base64') : payload
    const headers: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(reply.getHeaders())) {
      if (value !== undefined && !UNSTORED.has(name)) headers[name] = typeof value === 'number' ? String(value) : value
    }
    const own = reply.getHeader('etag')
    const stored: StoredResponse = { body, headers, etag: typeof own === 'string' ? own : strongEtag(body), storedAt: Date.now() }
    if (Buffer.isBuffer(payload)) stored.base64 = true
    if (route.perUser) stored.private = true
    else if (SHAREABLE_CONTROL.test(String(headers['cache-control'] ?? ''))) stored.shareable = true
    return stored
  }

  function status (entry: Pending, extra = ''): string {
    return `${CACHE_STATUS_NAME}; fwd=${entry.fwd}${entry.detail !== undefined ? `; detail=${entry.detail}` : ''}${extra}`
  }

  // A response is sent once its write is confirmed or refused (bounded by CACHE_TIMEOUT_MS), so that
  // Cache-Status says `stored` only for what Redis holds; the flight's waiters are answered before it.
  // While Redis is failing, the write goes on in the background and the answer says it is unconfirmed.
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
    if (!cacheable(reply, payload, entry)) {
      if (entry.refresh === true) refreshing.delete(entry.key)
      entry.flight?.settle(null)
      reply.header('cache-status', status(entry))
      reply.header('x-cache', 'MISS')
      return done(null, payload)
    }
    const ttlMs = route.ttlMs ?? deps.defaultTtlMs
    if (route.perUser) reply.header('cache-control', privately(reply.getHeader('cache-control') as string | undefined, Math.floor(ttlMs / 1000)))
    const stored = toStored(reply, payload, route)
    entry.flight?.settle({ envelope: { v: stored, e: stored.storedAt + ttlMs }, status: `fwd=${entry.fwd}` })
    reply.header('etag', stored.etag)
    if (!reply.hasHeader('cache-control')) reply.header('cache-control', `max-age=${Math.floor(ttlMs / 1000)}`)
    reply.header('x-cache', 'MISS')
    const notModified = matches(request.headers['if-none-match'], stored.etag)
    if (notModified) reply.code(304)
    const body = notModified ? '' : payload
    if (!entry.store) {
      reply.header('cache-status', status(entry))
      return done(null, body)
    }
    const saved = save(request, entry, stored, ttlMs)
    if (deps.reader()?.storeFailing() === true) {
      // Redis just failed or timed out: the answer does not wait for a write that would likely time out too.
      deps.background(saved)
      reply.header('cache-status', status(entry, '; detail=store-unconfirmed'))
      return done(null, body)
    }
    void saved.then((outcome) => {
      reply.header('cache-status', status(entry, outcome === 'stored' ? '; stored' : `; detail=${outcome}`))
      done(null, body)
    })
  }

  async function save (request: FastifyRequest, entry: Pending, stored: StoredResponse, ttlMs: number): Promise<WriteOutcome> {
    const { config, swrMs, sieMs, variants } = entry.route
    const keepMs = Math.max(swrMs, sieMs)
    try {
      const tags = typeof config.tags === 'function' ? config.tags(request) : config.tags
      return await deps.write(entry.key, stored, { ttl: `${ttlMs}ms`, tags, staleIfErrorTtl: keepMs > 0 ? `${keepMs}ms` : undefined }, variants)
    } catch (err) {
      request.log.warn({ err: deps.redact(err) }, 'route response not cached')
      return 'store-failed'
    } finally {
      if (entry.refresh === true) refreshing.delete(entry.key)
    }
  }

  return (options: RouteOptions): void => {
    const config = options.config?.cache
    if (config === undefined) return
    const methods = toArray(options.method)
    if (!methods.every((m) => m === 'GET' || m === 'HEAD')) throw new ConfigError(`config.cache on ${methods.join(',')} ${options.url}: only GET and HEAD responses can be cached`)
    // Fastify derives the HEAD route from the GET one, hooks included: add ours once.
    if (toArray(options.onRequest).some((hook) => ours.has(hook))) return
    const read = reader(routeOf(config, options.url, deps))
    ours.add(read)
    options.onRequest = [...toArray(options.onRequest), read]
    options.onSend = [...toArray(options.onSend), store]
  }
}
