import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { build } from './helpers/build'
import { startRedisServer, type RedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import type { EnvInput } from '../lib/config'
import type { Tier } from '../lib/resolve-tier'

// What one client sends must not change what another gets, nor multiply the
// handler or the bill: one specification on tcp, rest and memory. Requests
// with credentials, unkeyed Host and X-Forwarded-Host, a client's no-cache,
// variants without bound, secrets in key names, and Cache-Status that says
// `stored` only for what was.

const BASE = { REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, CACHE_TIMEOUT_MS: 500, CACHE_ROUTE_MAX_VARIANTS: 50 }
const ALICE = 'Bearer alice-secret-token'
const BOB = 'Bearer bob-secret-token'

interface Runs { [route: string]: number }

function routes (runs: Runs): (f: FastifyInstance) => Promise<void> {
  const count = (name: string): number => (runs[name] = (runs[name] ?? 0) + 1)
  const identity = (headers: { authorization?: string, cookie?: string }): string => headers.authorization ?? headers.cookie ?? 'anonymous'
  return async (f) => {
    f.get('/me', { config: { cache: { ttl: 30 } } }, async (request) => ({ user: identity(request.headers), run: count('me') }))
    f.get('/me-per-user', { config: { cache: { ttl: 30, vary: ['authorization'] } } }, async (request) => ({ user: identity(request.headers), run: count('me-per-user') }))
    f.get('/public', { config: { cache: { ttl: 30 } } }, async (_request, reply) => {
      void reply.header('cache-control', 'public, max-age=30')
      return { everyone: true, run: count('public') }
    })
    f.get('/shared', { config: { cache: { ttl: 30, shared: true } } }, async () => ({ everyone: true, run: count('shared') }))
    f.get('/link', { config: { cache: { ttl: 30 } } }, async (request) => ({ link: `${request.protocol}://${request.host}/reset`, run: count('link') }))
    f.get('/list', { config: { cache: { ttl: 30, query: ['page'] } } }, async (request) => ({ page: (request.query as { page?: string }).page ?? '1', run: count('list') }))
    f.get('/any', { config: { cache: { ttl: 30 } } }, async () => ({ run: count('any') }))
    f.get('/slow', { config: { cache: { ttl: 30 } } }, async () => {
      const run = count('slow')
      await sleep(100)
      return { run }
    })
    f.get('/revalidate', { config: { cache: { ttl: 30, honorNoCache: true } } }, async () => {
      const run = count('revalidate')
      await sleep(100)
      return { run }
    })
    f.get('/big', { config: { cache: { ttl: 30 } } }, async () => ({ blob: 'x'.repeat(2 * 1024 * 1024), run: count('big') }))
  }
}

/** Every key the cache keeps in Redis under `prefix`. */
async function redisKeys (redis: RedisServer, prefix: string): Promise<string[]> {
  const client = new Redis(redis.url, { lazyConnect: true })
  try {
    await client.connect()
    return await client.keys(`${prefix}:*`)
  } finally {
    client.disconnect()
  }
}

function spec (t: Test, tier: Tier, redis: RedisServer, envFor: (prefix: string, extra?: EnvInput) => EnvInput): void {
  const shared = tier !== 'memory'

  t.test(`${tier}: a response to a request with Authorization or Cookie is neither stored nor served to anyone else`, async (t) => {
    const runs: Runs = {}
    const env = envFor('auth')
    const { app } = await build(t, env, { plugins: [routes(runs)] })
    for (const [name, value] of [['authorization', ALICE], ['cookie', 'session=alice-session-id']]) {
      const alice = await app.inject({ url: '/me', headers: { [name]: value } })
      t.equal(alice.json<{ user: string }>().user, value)
      t.equal(alice.headers['cache-status'], `redis-tiers; fwd=bypass; detail=${name}`)
      t.equal(alice.headers['cache-control'], undefined, 'no max-age that a CDN could act on')
      const anonymous = await app.inject('/me')
      t.equal(anonymous.json<{ user: string }>().user, 'anonymous', `${name}: an anonymous caller never gets the user's answer`)
      const again = await app.inject({ url: '/me', headers: { [name]: value } })
      t.equal(again.json<{ user: string }>().user, value, `${name}: the user is never served the anonymous entry`)
    }
    const bob = await app.inject({ url: '/me', headers: { authorization: BOB } })
    t.equal(bob.json<{ user: string }>().user, BOB)
    t.equal(runs.me, 6, 'the five requests with credentials ran the handler; the anonymous one was stored once')
    if (shared) t.notOk((await redisKeys(redis, String(env.CACHE_PREFIX))).some((k) => k.includes('secret') || k.includes('session')), 'no credential in a key')
  })

  t.test(`${tier}: a route that varies on Authorization keeps one private entry per user, keyed by a hash`, async (t) => {
    const runs: Runs = {}
    const env = envFor('per-user')
    const { app } = await build(t, env, { plugins: [routes(runs)] })
    const alice = await app.inject({ url: '/me-per-user', headers: { authorization: ALICE } })
    t.equal(alice.headers['cache-status'], 'redis-tiers; fwd=miss; stored')
    t.equal(alice.headers['cache-control'], 'private, max-age=30', 'a CDN must not store it')
    const bob = await app.inject({ url: '/me-per-user', headers: { authorization: BOB } })
    t.equal(bob.json<{ user: string }>().user, BOB)
    const aliceHit = await app.inject({ url: '/me-per-user', headers: { authorization: ALICE } })
    t.equal(aliceHit.json<{ user: string }>().user, ALICE)
    t.match(aliceHit.headers['cache-status'], /^redis-tiers; hit; /)
    t.match(aliceHit.headers['cache-control'], /^private, max-age=(29|30)$/)
    t.equal((await app.inject('/me-per-user')).json<{ user: string }>().user, 'anonymous')
    t.equal(runs['me-per-user'], 3)
    if (shared) {
      const keys = await redisKeys(redis, String(env.CACHE_PREFIX))
      t.ok(keys.some((k) => k.includes(':c:route:')), 'entries are in Redis')
      t.notOk(keys.some((k) => k.includes('secret') || k.includes('Bearer')), `no raw header value in a key: ${keys.join(' ')}`)
    }
  })

  t.test(`${tier}: a response declared public, or a route declared shared, answers requests with credentials`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor('public'), { plugins: [routes(runs)] })
    const first = await app.inject({ url: '/public', headers: { authorization: ALICE } })
    t.equal(first.headers['cache-status'], 'redis-tiers; fwd=bypass; detail=authorization; stored', 'public: stored from a request with credentials')
    t.match((await app.inject({ url: '/public', headers: { cookie: 'a=b' } })).headers['cache-status'], /^redis-tiers; hit; /)
    t.match((await app.inject('/public')).headers['cache-status'], /^redis-tiers; hit; /)
    t.equal(runs.public, 1)
    await app.inject({ url: '/shared', headers: { authorization: ALICE } })
    t.match((await app.inject({ url: '/shared', headers: { authorization: BOB } })).headers['cache-status'], /^redis-tiers; hit; /)
    t.equal(runs.shared, 1)
  })

  t.test(`${tier}: Host and X-Forwarded-Host cannot poison another host's entry`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor('hosts'), { plugins: [routes(runs)] })
    const evil = await app.inject({ url: '/link', headers: { host: 'evil.example', 'x-forwarded-host': 'attacker.example' } })
    t.equal(evil.json<{ link: string }>().link, 'http://evil.example/reset', 'X-Forwarded-Host is not trusted without trustProxy')
    const shop = await app.inject({ url: '/link', headers: { host: 'shop.example' } })
    t.equal(shop.json<{ link: string }>().link, 'http://shop.example/reset', "shop.example never gets evil.example's entry")
    const shopHit = await app.inject({ url: '/link', headers: { host: 'shop.example', 'x-forwarded-host': 'attacker.example' } })
    t.equal(shopHit.json<{ link: string }>().link, 'http://shop.example/reset')
    t.equal(runs.link, 2)

    const behindProxy = await build(t, envFor('proxied'), { plugins: [routes(runs)], fastify: { trustProxy: true } })
    const forwarded = await behindProxy.app.inject({ url: '/link', headers: { host: 'internal', 'x-forwarded-host': 'shop.example', 'x-forwarded-proto': 'https' } })
    t.equal(forwarded.json<{ link: string }>().link, 'https://shop.example/reset')
    const other = await behindProxy.app.inject({ url: '/link', headers: { host: 'internal', 'x-forwarded-host': 'attacker.example', 'x-forwarded-proto': 'https' } })
    t.equal(other.json<{ link: string }>().link, 'https://attacker.example/reset', 'behind a trusted proxy the forwarded host is part of the key')
    const plain = await behindProxy.app.inject({ url: '/link', headers: { host: 'internal', 'x-forwarded-host': 'shop.example' } })
    t.equal(plain.json<{ link: string }>().link, 'http://shop.example/reset', 'and so is the scheme')
  })

  t.test(`${tier}: 200 concurrent cold requests with Cache-Control: no-cache run the handler once`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor('no-cache'), { plugins: [routes(runs)] })
    const answers = await Promise.all(Array.from({ length: 200 }, async () => await app.inject({ url: '/slow', headers: { 'cache-control': 'no-cache', pragma: 'no-cache' } })))
    t.equal(runs.slow, 1, 'one handler run')
    t.equal(new Set(answers.map((a) => a.body)).size, 1)
    await Promise.all(Array.from({ length: 50 }, async () => await app.inject({ url: '/slow', headers: { 'cache-control': 'no-cache' } })))
    t.equal(runs.slow, 1, 'and none on the warm key')
  })

  t.test(`${tier}: a route that honours no-cache revalidates, with one handler run for concurrent requests`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor('honour'), { plugins: [routes(runs)] })
    await app.inject('/revalidate')
    const answers = await Promise.all(Array.from({ length: 100 }, async () => await app.inject({ url: '/revalidate', headers: { 'cache-control': 'no-cache' } })))
    t.equal(runs.revalidate, 2, 'the first fill and one revalidation for 100 requests')
    const statuses = answers.map((a) => String(a.headers['cache-status']))
    t.equal(statuses.filter((s) => s === 'redis-tiers; fwd=request; stored').length, 1)
    t.ok(statuses.every((s) => /^redis-tiers; fwd=request(; stored|; collapsed; ttl=\d+)$/.test(s)), statuses[1])
    t.same((await app.inject('/revalidate')).json(), { run: 2 }, 'the revalidated answer was stored')
    const noStore = await app.inject({ url: '/revalidate', headers: { 'cache-control': 'no-store' } })
    t.equal(noStore.headers['cache-status'], 'redis-tiers; fwd=request')
    t.same((await app.inject('/revalidate')).json(), { run: 2 }, 'no-store: not stored')
  })

  t.test(`${tier}: Node's fetch with If-None-Match gets its 304`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor('fetch'), { plugins: [routes(runs)] })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/shared`
    const first = await fetch(url)
    await first.text()
    const etag = first.headers.get('etag')
    t.ok(etag)
    const again = await fetch(url, { headers: { 'if-none-match': String(etag) } })
    t.equal(again.status, 304, 'fetch adds Cache-Control: no-cache; the cache still answers 304')
    t.equal(runs.shared, 1)
  })

  t.test(`${tier}: 2 000 distinct query strings store at most the route's cap; listed parameters alone select entries`, async (t) => {
    const runs: Runs = {}
    const env = envFor('variants')
    const { app } = await build(t, env, { plugins: [routes(runs)] })
    const statuses: string[] = []
    for (let i = 0; i < 2000; i += 100) {
      const batch = await Promise.all(Array.from({ length: 100 }, async (_, j) => await app.inject(`/any?bust=${i + j}`)))
      statuses.push(...batch.map((a) => String(a.headers['cache-status'])))
    }
    t.equal(statuses.filter((s) => s === 'redis-tiers; fwd=miss; stored').length, 50, 'the cap, CACHE_ROUTE_MAX_VARIANTS=50')
    t.equal(statuses.filter((s) => s === 'redis-tiers; fwd=miss; detail=too-many-variants').length, 1950, 'past it: served, not stored, and said so')
    t.equal(app.cache.stats().variantsCapped, 1950)
    if (shared) {
      const keys = await redisKeys(redis, String(env.CACHE_PREFIX))
      t.equal(keys.filter((k) => k.includes(':c:route:')).length, 50, 'at most the cap in Redis')
      t.notOk(keys.some((k) => k.includes('bust')), 'query strings are hashed, never stored raw')
    }
    await app.inject('/list?page=2&utm=1')
    const other = await app.inject('/list?utm=2&page=2&session=x')
    t.match(other.headers['cache-status'], /^redis-tiers; hit; /, 'unlisted parameters create no entry')
    t.same(other.json(), { page: '2', run: 1 })
    t.same((await app.inject('/list?page=3')).json(), { page: '3', run: 2 })
  })

  t.test(`${tier}: a response too large to store is served, not stored, and said so`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor('big'), { plugins: [routes(runs)] })
    const big = await app.inject('/big')
    t.equal(big.statusCode, 200)
    t.equal(big.headers['cache-status'], 'redis-tiers; fwd=miss; detail=too-large')
    t.equal((await app.inject('/big')).json<{ run: number }>().run, 2)
    t.equal(app.cache.stats().tooLarge, 2)
    const refused = await app.cache.set('big', 'x'.repeat(2 * 1024 * 1024)).catch((err: { code?: string }) => err)
    t.equal((refused as { code?: string }).code, 'REDIS_TIERS_INVALID_INPUT', 'cache.set refuses a value over CACHE_MAX_VALUE_BYTES')
    t.equal(await app.cache.get('big'), undefined)
  })
}

t.test('route cache privacy and bounds on every tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  let apps = 0
  for (const tier of ['tcp', 'rest', 'memory'] as const) {
    spec(t, tier, redis, (prefix, extra = {}) => envForTier(tier, redis, rest, { ...BASE, CACHE_PREFIX: `${tier}-${prefix}-${++apps}`, ...extra }))
  }
})

t.test('a write Redis refuses (full) is never reported stored', async (t) => {
  const redis = await startRedisServer(t)
  const runs: Runs = {}
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, CACHE_PREFIX: 'full' }, { plugins: [routes(runs)] })
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())
  await admin.config('SET', 'maxmemory-policy', 'noeviction')
  await admin.config('SET', 'maxmemory', '1')
  const refused = await app.inject('/shared')
  t.equal(refused.statusCode, 200, 'served all the same')
  t.equal(refused.headers['cache-status'], 'redis-tiers; fwd=miss; detail=store-failed')
  await admin.config('SET', 'maxmemory', '0')
  t.equal((await app.inject('/any')).headers['cache-status'], 'redis-tiers; fwd=miss; stored', 'and stored again once Redis takes writes')
})
