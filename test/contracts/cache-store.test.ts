import t, { type Test } from 'tap'
import { eventually } from '../helpers/build'
import { counter, namespace, startHarness, type OpenTier } from '../helpers/contract-harness'
import { redisCacheStore, type Variants } from '../../lib/cache/store'
import { createCache } from '../../lib/cache/client'
import type { Tier } from '../../lib/resolve-tier'

// The cache store contract: what the cache's second level promises, whatever
// holds it. A value set is read back until its keep time ends; del removes it;
// tags index live entries and invalidateTags removes exactly those (reporting
// the keys); clear empties one namespace and nothing else; a route's variants
// are capped (a known key always fits, an expired one frees its place); every
// write tells the other instances which keys to drop; and what the meter is
// told is what Redis ran (Upstash bills the commands inside a script).
//
// Implementations, each run through the same spec below:
//   tcp     redisCacheStore over the tcp driver's commands (ioredis)
//   rest    redisCacheStore over the rest driver's commands (@upstash/redis -> the REST bridge)
//   memory  the cache client with store: null (the memory tier's L1 is its store)
// A new tier or cache store is done when this suite passes for it: add it to IMPLEMENTATIONS.

const INSTANCE = 'instance-under-test'

/** The store contract in the cache's own terms: values, not envelopes; `invalidateTags` resolves undefined where it cannot say which keys. */
interface CacheSubject {
  set: (key: string, value: unknown, keepMs: number, tags?: readonly string[], variants?: Variants) => Promise<boolean>
  get: (key: string) => Promise<unknown>
  del: (keys: readonly string[]) => Promise<void>
  invalidateTags: (tags: readonly string[]) => Promise<string[] | undefined>
  clear: () => Promise<void>
}

interface CacheImplementation {
  tier: Tier
  open: (prefix: string) => CacheSubject
  /** The invalidation channel of a namespace, where this implementation publishes one (null: it publishes none). */
  channel: ((prefix: string) => string) | null
  /** Commands billed to the meter so far, on tiers that bill (null: memory). */
  billed: (() => number) | null
}

function redisImplementation (open: OpenTier): CacheImplementation {
  const { meter, total } = counter()
  const commands = open.commands(meter)
  const channel = (prefix: string): string => `${prefix}:cache:invalidate`
  return {
    tier: open.tier,
    channel,
    billed: total,
    open (prefix) {
      const store = redisCacheStore(commands, prefix, channel(prefix), INSTANCE)
      return {
        set: async (key, value, keepMs, tags = [], variants) => await store.set(key, JSON.stringify({ v: value, e: Date.now() + keepMs }), keepMs, tags, variants),
        async get (key) {
          const raw = await store.get(key)
          return raw === null ? undefined : (JSON.parse(raw) as { v: unknown }).v
        },
        del: async (keys) => await store.del(keys),
        invalidateTags: async (tags) => await store.invalidateTags(tags),
        clear: async () => await store.clear()
      }
    }
  }
}

function memoryImplementation (): CacheImplementation {
  return {
    tier: 'memory',
    channel: null,
    billed: null,
    open () {
      // One client per namespace: in memory a namespace is one instance's L1.
      const client = createCache({
        tier: 'memory',
        reason: 'contract',
        instanceId: INSTANCE,
        defaultTtlMs: 60_000,
        l1MaxEntries: 1000,
        l1MaxBytes: 1024 * 1024,
        l1MaxTtlMs: 10_000,
        maxValueBytes: 1024 * 1024,
        store: null,
        commandsSent: () => 0,
        shed: () => false,
        onStoreError: () => {}
      })
      return {
        async set (key, value, keepMs, tags = [], variants) {
          const options = { ttl: `${keepMs}ms`, tags }
          if (variants !== undefined) return await client.storeShared(key, value, options, variants) === 'stored'
          await client.set(key, value, options)
          return true
        },
        get: async (key) => await client.get(key),
        async del (keys) { for (const key of keys) await client.del(key) },
        async invalidateTags (tags) {
          await client.invalidateTags(tags)
          return undefined
        },
        clear: async () => await client.clear()
      }
    }
  }
}

function sorted (keys: string[] | undefined): string[] | undefined {
  return keys === undefined ? undefined : [...keys].sort()
}

function cacheContract (t: Test, impl: CacheImplementation, watch: (t: Test, channel: string) => Promise<unknown[]>, commandsRun: () => Promise<number>): void {
  t.test(`${impl.tier}: a value set is read back as JSON gives it back; del removes it; a key never set is a miss`, async (t) => {
    const store = impl.open(namespace('cache'))
    t.equal(await store.set('a', { n: 1, s: 'ü,"x"', list: [1, null] }, 60_000), true, 'set resolves true')
    t.same(await store.get('a'), { n: 1, s: 'ü,"x"', list: [1, null] })
    t.equal(await store.get('never-set'), undefined, 'a miss')
    await store.set('b', null, 60_000)
    t.equal(await store.get('b'), null, 'null is a value, not a miss')
    await store.del(['a', 'b', 'never-set'])
    t.equal(await store.get('a'), undefined, 'a deleted')
    t.equal(await store.get('b'), undefined, 'b deleted')
  })

  t.test(`${impl.tier}: an entry is gone once its keep time has passed`, async (t) => {
    const store = impl.open(namespace('cache'))
    const started = Date.now()
    await store.set('short', 'v', 800)
    await store.set('long', 'w', 60_000)
    t.equal(await store.get('short'), 'v', 'there before its keep time ends')
    await eventually(async () => await store.get('short') === undefined, 5000, 'the short entry expired')
    t.ok(Date.now() - started >= 700, `not gone before its keep time (gone after ${Date.now() - started} ms)`)
    t.equal(await store.get('long'), 'w', 'a longer-lived entry stays')
  })

  t.test(`${impl.tier}: invalidateTags removes every entry carrying one of the tags, and only those, resolving with their keys`, async (t) => {
    const store = impl.open(namespace('cache'))
    await store.set('a', 1, 60_000, ['x'])
    await store.set('b', 2, 60_000, ['x', 'y'])
    await store.set('c', 3, 60_000, ['y'])
    await store.set('d', 4, 60_000, ['z'])
    const removed = await store.invalidateTags(['x', 'no-such-tag'])
    if (removed !== undefined) t.same(sorted(removed), ['a', 'b'], 'the keys removed')
    t.equal(await store.get('a'), undefined)
    t.equal(await store.get('b'), undefined)
    t.equal(await store.get('c'), 3, 'an entry with another tag stays')
    t.equal(await store.get('d'), 4)
    const second = await store.invalidateTags(['y'])
    if (second !== undefined) t.same(sorted(second), ['c'], 'b is not reported twice')
    t.equal(await store.get('c'), undefined)
    t.equal(await store.get('d'), 4, 'an untouched tag keeps its entries')
    const none = await store.invalidateTags(['no-such-tag'])
    if (none !== undefined) t.same(none, [], 'an unknown tag removes nothing')
  })

  t.test(`${impl.tier}: an entry that expired is not reported by invalidateTags`, async (t) => {
    const store = impl.open(namespace('cache'))
    await store.set('gone', 1, 500, ['x'])
    await store.set('live', 2, 60_000, ['x'])
    await eventually(async () => await store.get('gone') === undefined, 5000, 'the short entry expired')
    const removed = await store.invalidateTags(['x'])
    if (removed !== undefined) t.same(removed, ['live'], 'only the live entry')
    t.equal(await store.get('live'), undefined, 'the live entry is removed')
  })

  t.test(`${impl.tier}: clear empties its namespace (glob characters in its name included) and nothing else`, async (t) => {
    const base = namespace('cache')
    const prefix = `${base}[1]*`
    const store = impl.open(prefix)
    // Unescaped, `<base>[1]*:c:*` would match this namespace's keys too.
    const foreign = impl.open(`${base}1`)
    await store.set('k', 1, 60_000, ['x'])
    await store.set('r', 2, 60_000, [], { id: 'route', max: 1 })
    await foreign.set('k', 'foreign', 60_000, ['x'])
    await store.clear()
    t.equal(await store.get('k'), undefined, 'its own entry is gone')
    t.equal(await store.get('r'), undefined, 'its route entries are gone')
    t.equal(await store.set('other', 3, 60_000, [], { id: 'route', max: 1 }), true, 'its route variant count is gone too')
    const tagged = await store.invalidateTags(['x'])
    if (tagged !== undefined) t.same(tagged, [], 'its tag index is gone')
    t.equal(await foreign.get('k'), 'foreign', 'the other namespace keeps its entry')
    const foreignTagged = await foreign.invalidateTags(['x'])
    if (foreignTagged !== undefined) t.same(foreignTagged, ['k'], 'and its tag index')
  })

  t.test(`${impl.tier}: a route holds at most its cap of live variants; a known key always fits; a refused set writes nothing`, async (t) => {
    const store = impl.open(namespace('cache'))
    const route = { id: 'GET /items', max: 2 }
    t.equal(await store.set('v1', 1, 60_000, [], route), true, 'first variant')
    t.equal(await store.set('v2', 2, 60_000, [], route), true, 'second variant')
    t.equal(await store.set('v3', 3, 60_000, [], route), false, 'past the cap: false')
    t.equal(await store.get('v3'), undefined, 'nothing written for the refused variant')
    t.equal(await store.set('v1', 10, 60_000, [], route), true, 'a known key is rewritten')
    t.equal(await store.get('v1'), 10)
    t.equal(await store.set('v3', 3, 60_000, [], { id: 'GET /other', max: 2 }), true, 'another route has its own cap')
  })

  t.test(`${impl.tier}: an expired variant frees its place under the cap`, async (t) => {
    const store = impl.open(namespace('cache'))
    const route = { id: 'GET /page', max: 1 }
    t.equal(await store.set('old', 1, 800, [], route), true)
    t.equal(await store.set('new', 2, 60_000, [], route), false, 'full while the first lives')
    await eventually(async () => await store.set('new', 2, 60_000, [], route), 5000, 'the expired variant made room')
    t.equal(await store.get('new'), 2)
  })

  const { channel } = impl
  t.test(`${impl.tier}: set, del, invalidateTags and clear tell the other instances what to drop`, { todo: channel === null ? 'the memory cache publishes no invalidation (DESIGN §3: one event path on every tier; createCache has no bus)' : false }, async (t) => {
    if (channel === null) {
      t.fail('the memory cache has an invalidation channel')
      return
    }
    const prefix = namespace('cache')
    const store = impl.open(prefix)
    const seen = await watch(t, channel(prefix))
    await store.set('a', 1, 60_000, ['x'])
    await eventually(() => seen.length === 1, 3000, 'the set message')
    await store.del(['a', 'b'])
    await eventually(() => seen.length === 2, 3000, 'the del message')
    await store.set('c', 1, 60_000, ['x'])
    await eventually(() => seen.length === 3, 3000, 'the second set message')
    await store.invalidateTags(['x'])
    await eventually(() => seen.length === 4, 3000, 'the invalidation message')
    await store.clear()
    await eventually(() => seen.length === 5, 3000, 'the clear message')
    t.same(seen, [
      { from: INSTANCE, keys: ['a'] },
      { from: INSTANCE, keys: ['a', 'b'] },
      { from: INSTANCE, keys: ['c'] },
      { from: INSTANCE, keys: ['c'] },
      { from: INSTANCE, clear: true }
    ])
  })

  const { billed } = impl
  if (billed === null) return
  t.test(`${impl.tier}: what the meter is told is what Redis ran (INFO commandstats), scripts' own commands included`, async (t) => {
    const store = impl.open(namespace('cache'))
    const everyOperation = async (round: string): Promise<void> => {
      await store.set(`${round}a`, 1, 60_000, [`${round}x`])
      await store.set(`${round}b`, 2, 60_000, [`${round}x`, `${round}y`])
      await store.set(`${round}b`, 2, 60_000, [`${round}x`, `${round}y`]) // tags already live longer
      await store.set(`${round}v1`, 1, 60_000, [], { id: `${round}route`, max: 1 })
      await store.set(`${round}v1`, 1, 60_000, [], { id: `${round}route`, max: 1 }) // a known variant
      t.equal(await store.set(`${round}v2`, 1, 60_000, [], { id: `${round}route`, max: 1 }), false, 'refused')
      await store.get(`${round}a`)
      await store.get(`${round}missing`)
      await store.del([`${round}a`])
      await store.invalidateTags([`${round}x`, `${round}none`])
      await store.invalidateTags([`${round}none`])
    }
    await everyOperation('warm') // every script is in Redis's script cache (the first EVALSHA of each is NOSCRIPT)
    const ran = await commandsRun()
    const counted = billed()
    await everyOperation('measured')
    await store.clear()
    const ranNow = await commandsRun()
    t.ok(billed() - counted > 20, `the measured round is not trivial (${billed() - counted} commands)`)
    t.equal(billed() - counted, ranNow - ran, 'billed = ran')
  })
}

t.test('cache store contract', async (t) => {
  const harness = await startHarness(t)
  const implementations: CacheImplementation[] = [...harness.tiers.map(redisImplementation), memoryImplementation()]
  for (const impl of implementations) cacheContract(t, impl, harness.watch, harness.commandsRun)
})
