import { LRUCache } from 'lru-cache'
import type { CacheStore, Envelope, InvalidationMessage, Variants } from './store'
import { parseDuration } from '../duration'
import { InvalidInputError, tierFailure } from '../errors'
import type { Tier } from '../resolve-tier'

// The cache client, the same on every tier: a bounded in-process L1 in front
// of an optional Redis store (tcp or rest; none on the memory tier, where L1
// is the store). Values are kept as JSON text on every tier, so what comes
// back is what JSON gives back, wherever it was cached.

export interface CacheSetOptions {
  /** Seconds, or a duration string such as '500ms', '30s', '5m'. Default: CACHE_DEFAULT_TTL. */
  ttl?: number | string
  tags?: readonly string[]
  /**
   * Keep the value this much longer than `ttl`, stale: getOrSet serves it when
   * its loader fails, and cached routes for their staleWhileRevalidate and
   * staleIfError windows.
   */
  staleIfErrorTtl?: number | string
}

export type GetOrSetOptions = CacheSetOptions

export interface CacheStats {
  hits: number
  l1Hits: number
  l2Hits: number
  misses: number
  loaderRuns: number
  staleServed: number
  redisErrors: number
  /** Round trips to Redis on the current tier (the commands they are billed: `fastify.connections.usage`). */
  redisCommands: number
  /** Writes kept out of Redis while the command budget guard sheds. */
  l2WritesShed: number
  /** Values not stored because they exceed CACHE_MAX_VALUE_BYTES (a loader's or a route's: served, not cached). */
  tooLarge: number
  /** Route responses not stored because their route already holds its maximum of entries. */
  variantsCapped: number
  l1Entries: number
  l1Bytes: number
}

export interface Cache {
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
  get: <T = unknown>(key: string) => Promise<T | undefined>
  set: (key: string, value: unknown, opts?: CacheSetOptions) => Promise<void>
  del: (key: string) => Promise<void>
  has: (key: string) => Promise<boolean>
  getOrSet: <T>(key: string, loader: () => T | Promise<T>, opts?: GetOrSetOptions) => Promise<T>
  invalidateTags: (tags: readonly string[]) => Promise<void>
  /** Removes every key of this cache's namespace, and nothing else. */
  clear: () => Promise<void>
  stats: () => CacheStats
}

export interface CacheClientOptions {
  tier: Tier
  reason: string
  instanceId: string
  defaultTtlMs: number
  l1MaxEntries: number
  l1MaxBytes: number
  /** How long a redis-tier value may live in L1: bounds staleness if an invalidation message is lost. */
  l1MaxTtlMs: number
  store: CacheStore | null
  /** Commands sent by the store, for stats. */
  commandsSent: () => number
  /** The daily command budget is spent and guarded: leave Redis alone, serve from L1 and the loader. */
  shed: () => boolean
  /** CACHE_MAX_VALUE_BYTES: the largest value stored, as JSON bytes. */
  maxValueBytes: number
  /** A Redis call failed (already counted); log it at a bounded rate. */
  onStoreError: (err: Error, operation: string) => void
  /** The 503 of a Redis failure a caller must hear of (`what`: e.g. 'confirm the delete'); default: without the cause. */
  failure?: (what: string, err: unknown) => Error
}

export const MAX_KEY_LENGTH = 512
export const MAX_TAG_LENGTH = 128

function validateName (value: unknown, what: 'key' | 'tag'): string {
  const max = what === 'key' ? MAX_KEY_LENGTH : MAX_TAG_LENGTH
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new InvalidInputError(`cache ${what} must be a non-empty string of at most ${max} characters (got ${typeof value === 'string' ? `${value.length} characters` : typeof value})`)
  }
  return value
}

function validateTags (tags: unknown): readonly string[] {
  if (tags === undefined) return []
  if (!Array.isArray(tags)) throw new InvalidInputError('cache tags must be an array of strings')
  return tags.map((tag) => validateName(tag, 'tag'))
}

interface L1Entry {
  json: string
  tags: readonly string[]
  /** Parsed once for internal readers that never hand the value to user code (route caching). */
  shared?: Envelope
}

const FAILED: unique symbol = Symbol('failed')

/** What became of a write: `stored` only when the store (Redis, or L1 on the memory tier) holds it. */
export type WriteOutcome = 'stored' | 'too-large' | 'too-many-variants' | 'store-failed' | 'budget'

/** A value ready to write: its JSON, envelope and lifetimes. */
interface Encoded { valueJson: string, json: string, tags: readonly string[], ttlMs: number, keepMs: number }

export interface CacheClient extends Cache {
  applyInvalidation: (message: unknown) => void
  /** Forget every L1 copy (Redis came back empty: their shared copies are gone). */
  dropL1: () => void
  /**
   * The entry from L1, then Redis, fresh or stale (kept past its TTL by
   * `staleIfErrorTtl`), without a private copy: shared between callers, never
   * to be mutated. A result that is not fresh counts as a miss.
   */
  lookupShared: (key: string) => Promise<Envelope | undefined>
  /** L1 only and synchronous, shared like lookupShared; undefined when L1 has no fresh entry (no miss is counted). */
  peekShared: (key: string) => Envelope | undefined
  /** Whether the last call to Redis failed or timed out (always false on the memory tier). */
  storeFailing: () => boolean
  /** A route's write: what became of it, so that Cache-Status says `stored` only when it was; counted within `variants`. */
  storeShared: (key: string, value: unknown, options: CacheSetOptions, variants: Variants) => Promise<WriteOutcome>
}

export type { Envelope }

export function createCache (opts: CacheClientOptions): CacheClient {
  const { store } = opts
  const counters = { l1Hits: 0, l2Hits: 0, misses: 0, loaderRuns: 0, staleServed: 0, redisErrors: 0, l2WritesShed: 0, tooLarge: 0, variantsCapped: 0 }
  // The memory tier's own count of each route's live entries (on tcp/rest Redis counts them for the fleet).
  const localVariants = new Map<string, Map<string, number>>()
  const tagIndex = new Map<string, Set<string>>()
  const inflight = new Map<string, Promise<unknown>>()
  // On the memory tier L1 is the store and cannot be turned off.
  const l1Entries = store === null ? Math.max(1, opts.l1MaxEntries) : opts.l1MaxEntries
  const l1 = l1Entries > 0
    ? new LRUCache<string, L1Entry>({
      max: l1Entries,
      maxSize: opts.l1MaxBytes,
      sizeCalculation: (entry, key) => Math.max(1, entry.json.length * 2 + key.length * 2),
      dispose: (entry, key) => untag(key, entry.tags)
    })
    : null

  function dropL1 (): void {
    l1?.clear()
    tagIndex.clear()
  }

  function untag (key: string, tags: readonly string[]): void {
    for (const tag of tags) {
      const keys = tagIndex.get(tag)
      keys?.delete(key)
      if (keys?.size === 0) tagIndex.delete(tag)
    }
  }

  function remember (key: string, json: string, tags: readonly string[], ttlMs: number): void {
    if (l1 === null || ttlMs < 1) return
    l1.set(key, { json, tags }, { ttl: ttlMs })
    for (const tag of tags) {
      let keys = tagIndex.get(tag)
      if (keys === undefined) tagIndex.set(tag, keys = new Set())
      keys.add(key)
    }
  }

  // Whether the last Redis call failed: a route's miss then does not wait for its write.
  let failing = false
  let lastError: Error | undefined

  function failed (err: Error, operation: string): typeof FAILED {
    failing = true
    lastError = err
    counters.redisErrors++
    opts.onStoreError(err, operation)
    return FAILED
  }

  /** A Redis call that fails open: an error or timeout is counted, logged at a bounded rate, and returned as FAILED. */
  async function attempt<T> (operation: string, call: () => Promise<T>): Promise<T | typeof FAILED> {
    try {
      const result = await call()
      failing = false
      return result
    } catch (err) {
      return failed(err as Error, operation)
    }
  }

  /** Invalidations must not fail silently (a stale value would be served): they reject with a 503-able error. */
  async function confirm<T> (operation: string, call: () => Promise<T>): Promise<T> {
    const result = await attempt(operation, call)
    if (result === FAILED) throw opts.failure?.(`confirm the ${operation}`, lastError) ?? tierFailure('cache', `confirm the ${operation}`)
    return result
  }

  /** L1 only, synchronous; a fresh read counts as an L1 hit. */
  function readLocal (key: string, shared: boolean): { envelope: Envelope, fresh: boolean } | undefined {
    const local = l1?.get(key)
    if (local === undefined) return undefined
    const envelope = shared ? (local.shared ??= JSON.parse(local.json) as Envelope) : JSON.parse(local.json) as Envelope
    const fresh = envelope.e > Date.now()
    if (fresh) counters.l1Hits++
    return { envelope, fresh }
  }

  /**
   * The envelope for a key, fresh or stale, from L1 then Redis; undefined on a
   * miss or a Redis failure. `shared` returns one parsed copy per L1 entry
   * instead of a fresh one per call: only for callers that never mutate it.
   */
  async function lookup (key: string, shared = false): Promise<{ envelope: Envelope, fresh: boolean } | undefined> {
    const local = readLocal(key, shared)
    if (store === null || local?.fresh === true || opts.shed()) return local
    // No async wrapper here: this is the path of every L2 hit.
    const raw: string | null | typeof FAILED = await store.get(key).then((value) => { failing = false; return value }, (err: Error) => failed(err, 'read'))
    if (raw === FAILED || raw === null || raw === undefined) return undefined
    const envelope = JSON.parse(raw) as Envelope
    const freshFor = envelope.e - Date.now()
    if (freshFor <= 0) return { envelope, fresh: false }
    counters.l2Hits++
    remember(key, raw, [], Math.min(freshFor, opts.l1MaxTtlMs))
    return { envelope, fresh: true }
  }

  function encode (value: unknown, options: GetOrSetOptions): Encoded {
    if (value === undefined) throw new InvalidInputError('undefined cannot be cached (it is what a miss returns); cache null instead')
    const tags = validateTags(options.tags)
    const ttlMs = options.ttl === undefined ? opts.defaultTtlMs : parseDuration(options.ttl, 'ttl')
    const keepMs = ttlMs + (options.staleIfErrorTtl === undefined ? 0 : parseDuration(options.staleIfErrorTtl, 'staleIfErrorTtl'))
    const valueJson = JSON.stringify(value) as string | undefined
    if (valueJson === undefined) throw new InvalidInputError(`a ${typeof value} cannot be cached: values must be JSON`)
    return { valueJson, json: `{"v":${valueJson},"e":${Date.now() + ttlMs}}`, tags, ttlMs, keepMs }
  }

  function tooLarge (json: string): boolean {
    return json.length * 3 > opts.maxValueBytes && Buffer.byteLength(json) > opts.maxValueBytes
  }

  /** The memory tier's variant cap: expired entries are forgotten once the route is full. */
  function admitLocally (key: string, keepMs: number, variants: Variants): boolean {
    let live = localVariants.get(variants.id)
    if (live === undefined) localVariants.set(variants.id, live = new Map<string, number>())
    const now = Date.now()
    if (!live.has(key) && live.size >= variants.max) {
      for (const [k, until] of live) if (until <= now) live.delete(k)
      if (live.size >= variants.max) return false
    }
    live.set(key, now + keepMs)
    return true
  }

  async function commit (key: string, encoded: Encoded, variants?: Variants): Promise<WriteOutcome> {
    const { json, tags, ttlMs, keepMs } = encoded
    if (tooLarge(json)) {
      counters.tooLarge++
      return 'too-large'
    }
    if (store === null && variants !== undefined && !admitLocally(key, keepMs, variants)) {
      counters.variantsCapped++
      return 'too-many-variants'
    }
    l1?.delete(key) // drops old tags
    remember(key, json, tags, store === null ? keepMs : Math.min(ttlMs, opts.l1MaxTtlMs))
    if (store === null) return 'stored'
    if (opts.shed()) {
      counters.l2WritesShed++
      return 'budget'
    }
    const written = await attempt('write', async () => await store.set(key, json, keepMs, tags, variants))
    if (written === FAILED) return 'store-failed'
    if (written) return 'stored'
    // Refused by the route's variant cap: the copy in L1 would be a variant Redis does not count.
    l1?.delete(key)
    counters.variantsCapped++
    return 'too-many-variants'
  }

  return {
    available: true,
    tier: opts.tier,
    reason: opts.reason,

    async get<T> (key: string) {
      validateName(key, 'key')
      const found = await lookup(key)
      if (found?.fresh === true) return found.envelope.v as T
      counters.misses++
      return undefined
    },

    async lookupShared (key: string) {
      const found = await lookup(key, true)
      if (found?.fresh !== true) counters.misses++
      return found?.envelope
    },

    peekShared (key: string) {
      const local = readLocal(key, true)
      return local?.fresh === true ? local.envelope : undefined
    },

    async has (key) {
      validateName(key, 'key')
      const fresh = (await lookup(key))?.fresh === true
      if (!fresh) counters.misses++
      return fresh
    },

    async set (key, value, options = {}) {
      validateName(key, 'key')
      const outcome = await commit(key, encode(value, options))
      if (outcome === 'too-large') throw new InvalidInputError(`cache value for this key is larger than CACHE_MAX_VALUE_BYTES (${opts.maxValueBytes} bytes as JSON): store less, or raise CACHE_MAX_VALUE_BYTES`)
    },

    storeFailing: () => failing,

    async storeShared (key, value, options, variants) {
      return await commit(key, encode(value, options), variants)
    },

    async getOrSet<T> (key: string, loader: () => T | Promise<T>, options: GetOrSetOptions = {}): Promise<T> {
      validateName(key, 'key')
      const local = readLocal(key, false)
      if (local?.fresh === true) return local.envelope.v as T
      const pending = inflight.get(key)
      if (pending !== undefined) return await (pending as Promise<T>)
      const run = (async (): Promise<T> => {
        const found = await lookup(key)
        if (found?.fresh === true) return found.envelope.v as T
        counters.misses++
        counters.loaderRuns++
        let value: T
        try {
          value = await loader()
        } catch (err) {
          if (found !== undefined && options.staleIfErrorTtl !== undefined) {
            counters.staleServed++
            return found.envelope.v as T
          }
          throw err
        }
        // Too large to store: served all the same, and counted (stats().tooLarge).
        const encoded = encode(value, options)
        await commit(key, encoded)
        return JSON.parse(encoded.valueJson) as T
      })()
      inflight.set(key, run)
      try {
        return await run
      } finally {
        inflight.delete(key)
      }
    },

    async del (key) {
      validateName(key, 'key')
      l1?.delete(key)
      if (store !== null) await confirm('delete', async () => await store.del([key]))
    },

    async invalidateTags (tags) {
      const valid = validateTags(tags)
      for (const tag of valid) {
        for (const key of [...(tagIndex.get(tag) ?? [])]) l1?.delete(key)
      }
      if (store !== null) {
        const removed = await confirm('tag invalidation', async () => await store.invalidateTags(valid))
        for (const key of removed) l1?.delete(key)
      }
    },

    async clear () {
      dropL1()
      localVariants.clear()
      if (store !== null) await confirm('clear', async () => await store.clear())
    },

    stats () {
      return {
        ...counters,
        hits: counters.l1Hits + counters.l2Hits,
        redisCommands: opts.commandsSent(),
        l1Entries: l1?.size ?? 0,
        l1Bytes: l1?.calculatedSize ?? 0
      }
    },

    dropL1,

    applyInvalidation (message) {
      const m = message as Partial<InvalidationMessage> | null
      if (m === null || typeof m !== 'object' || m.from === opts.instanceId) return
      if (m.clear === true) dropL1()
      if (Array.isArray(m.keys)) for (const key of m.keys) l1?.delete(String(key))
    }
  }
}

/** What a skipped cache is: present, typed, and every call rejects with `refusal()` (our 503 with the reason). */
export function unavailableCache (refusal: () => Error): Cache {
  const reject = async (): Promise<never> => { throw refusal() }
  return {
    available: false,
    tier: null,
    get reason () { return refusal().message },
    get: reject,
    set: reject,
    del: reject,
    has: reject,
    getOrSet: reject,
    invalidateTags: reject,
    clear: reject,
    stats: () => ({ hits: 0, l1Hits: 0, l2Hits: 0, misses: 0, loaderRuns: 0, staleServed: 0, redisErrors: 0, redisCommands: 0, l2WritesShed: 0, tooLarge: 0, variantsCapped: 0, l1Entries: 0, l1Bytes: 0 })
  }
}
