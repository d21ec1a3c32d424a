import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import type { EnvInput } from '../lib/config'
import type { Tier } from '../lib/resolve-tier'

// Route response caching as HTTP sees it, one specification on tcp, rest and
// memory: one handler run per stampede, Cache-Status (RFC 9211), Age, ETag
// and 304, max-age, stale-while-revalidate, stale-if-error, Vary, and what
// is never stored.

const BASE = { REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, CACHE_TIMEOUT_MS: 300 }

interface Runs { [route: string]: number }

/** Routes whose handler runs are counted; every body says which run made it. */
function routes (runs: Runs): (f: FastifyInstance) => Promise<void> {
  const count = (name: string): number => (runs[name] = (runs[name] ?? 0) + 1)
  return async (f) => {
    f.get<{ Params: { k: string } }>('/slow/:k', { config: { cache: { ttl: 30, tags: ['slow'] } } }, async (request) => {
      const run = count('slow')
      await sleep(100)
      return { k: request.params.k, run }
    })
    // The same body on every run: its ETag is the same whoever computes it.
    f.get('/fixed', { config: { cache: { ttl: 30, tags: ['fixed'] } } }, async () => {
      count('fixed')
      return { fixed: true }
    })
    f.get('/own-control', { config: { cache: { ttl: 30 } } }, async (_request, reply) => {
      count('own-control')
      void reply.header('cache-control', 'public, max-age=5')
      return { own: true }
    })
    f.get('/swr', { config: { cache: { ttl: '300ms', staleWhileRevalidate: '30s' } } }, async () => {
      const run = count('swr')
      await sleep(50)
      return { run }
    })
    f.get('/sie', { config: { cache: { ttl: '300ms', staleIfError: '30s' } } }, async () => {
      if (count('sie') > 1) throw new Error('the database is down')
      return { run: 1 }
    })
    f.get('/cookie', { config: { cache: { ttl: 30 } } }, async (_request, reply) => {
      void reply.header('set-cookie', 'session=abc; HttpOnly')
      return { run: count('cookie') }
    })
    f.get('/private', { config: { cache: { ttl: 30 } } }, async (_request, reply) => {
      void reply.header('cache-control', 'private, max-age=60')
      return { run: count('private') }
    })
    f.get('/lang', { config: { cache: { ttl: 30, vary: ['Accept-Language'] } } }, async (request) => {
      count('lang')
      return { greeting: request.headers['accept-language'] === 'fr' ? 'bonjour' : 'hello' }
    })
    f.get('/undeclared-vary', { config: { cache: { ttl: 30 } } }, async (_request, reply) => {
      void reply.header('vary', 'accept-encoding')
      return { run: count('undeclared-vary') }
    })
  }
}

/** Waits until the background write of a miss has landed: the same request is then a hit. */
async function stored (app: FastifyInstance, request: string | { url: string, headers: Record<string, string> }, what = 'stored'): Promise<void> {
  await eventually(async () => (await app.inject(request)).headers['x-cache'] === 'HIT', 3000, what)
}

/** Stored, then past its TTL: the entry is now stale. */
async function storedThenExpired (app: FastifyInstance, url: string): Promise<void> {
  await stored(app, url)
  await pastTtl(350)
}

async function pastTtl (ms: number): Promise<void> {
  // The entry's freshness is a time, not an event: wait it out.
  await sleep(ms)
}

function spec (t: Test, tier: Tier, envFor: (extra?: EnvInput) => EnvInput, shared: boolean): void {
  t.test(`${tier}: 50 concurrent cold requests run the handler once and get 50 identical answers`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    const answers = await Promise.all(Array.from({ length: 50 }, async () => await app.inject('/slow/cold')))
    t.equal(runs.slow, 1, 'one handler run')
    t.equal(new Set(answers.map((a) => a.body)).size, 1, 'one body')
    t.ok(answers.every((a) => a.statusCode === 200 && a.headers.etag === answers[0].headers.etag && /application\/json/.test(String(a.headers['content-type']))))
    const statuses = answers.map((a) => String(a.headers['cache-status']))
    t.equal(statuses.filter((s) => s === 'redis-tiers; fwd=miss; stored').length, 1, 'one miss')
    t.ok(statuses.every((s) => s === 'redis-tiers; fwd=miss; stored' || /^redis-tiers; fwd=miss; collapsed; ttl=\d+$/.test(s)), statuses[1])
  })

  t.test(`${tier}: Cache-Status, Age, ETag and max-age on a miss, a hit, a bypass and a no-store request`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    const miss = await app.inject('/fixed')
    t.equal(miss.headers['cache-status'], 'redis-tiers; fwd=miss; stored')
    t.equal(miss.headers['x-cache'], 'MISS', 'x-cache is kept (deprecated)')
    t.match(miss.headers.etag, /^"[A-Za-z0-9_-]{27}"$/, 'a strong ETag')
    t.equal(miss.headers['cache-control'], 'max-age=30')
    t.equal(miss.headers.age, undefined, 'a response the handler just made has no Age')
    await stored(app, '/fixed', 'the background write')
    const hit = await app.inject('/fixed')
    t.match(hit.headers['cache-status'], /^redis-tiers; hit; ttl=(29|30)$/)
    t.equal(hit.headers.etag, miss.headers.etag, 'the same ETag on the miss and every hit')
    t.match(hit.headers['cache-control'], /^max-age=(29|30)$/, 'max-age from the remaining TTL')
    t.equal(hit.headers.age, '0')
    t.equal(hit.body, miss.body)
    for (const headers of [{ 'cache-control': 'no-cache' }, { 'cache-control': 'no-store' }, { 'cache-control': 'max-age=0' }, { pragma: 'no-cache' }]) {
      t.match((await app.inject({ url: '/fixed', headers })).headers['cache-status'], /^redis-tiers; hit; /, `${JSON.stringify(headers)} from a client is not obeyed by default`)
    }
    t.equal(runs.fixed, 1, 'the handler ran for the miss only')
    const own = await app.inject('/own-control')
    await stored(app, '/own-control')
    t.equal((await app.inject('/own-control')).headers['cache-control'], 'public, max-age=5', "the route's own Cache-Control is kept")
    t.equal(own.headers['cache-control'], 'public, max-age=5')
    const head = await app.inject({ method: 'HEAD', url: '/fixed' })
    t.equal(head.statusCode, 200)
    t.equal(head.body, '', 'HEAD: the headers, no body')
    t.equal(head.headers.etag, miss.headers.etag)
  })

  t.test(`${tier}: If-None-Match with the ETag answers 304 with no body, on hits and on misses`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    const first = await app.inject('/fixed')
    const etag = String(first.headers.etag)
    await stored(app, '/fixed')
    const cached = await app.inject({ url: '/fixed', headers: { 'if-none-match': etag } })
    t.equal(cached.statusCode, 304)
    t.equal(cached.body, '')
    t.equal(cached.headers.etag, etag)
    t.match(cached.headers['cache-status'], /^redis-tiers; hit; /)
    t.equal((await app.inject({ url: '/fixed', headers: { 'if-none-match': `"other", W/${etag}` } })).statusCode, 304, 'weak comparison, in a list')
    t.equal((await app.inject({ url: '/fixed', headers: { 'if-none-match': '"other"' } })).statusCode, 200)
    await app.cache.invalidateTags(['fixed'])
    const recomputed = await app.inject({ url: '/fixed', headers: { 'if-none-match': etag } })
    t.equal(recomputed.statusCode, 304, 'a miss whose new body has the same ETag')
    t.equal(recomputed.body, '')
    t.equal(recomputed.headers['cache-status'], 'redis-tiers; fwd=miss; stored')
    t.equal(runs.fixed, 2)
  })

  t.test(`${tier}: staleWhileRevalidate serves the expired entry at once and refreshes it once`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    t.same((await app.inject('/swr')).json(), { run: 1 })
    await storedThenExpired(app, '/swr')
    const stale = await Promise.all(Array.from({ length: 5 }, async () => await app.inject('/swr')))
    t.ok(stale.every((s) => s.json<{ run: number }>().run === 1), 'the stale body, at once')
    t.ok(stale.every((s) => /^redis-tiers; fwd=stale; ttl=-\d+$/.test(String(s.headers['cache-status']))), String(stale[0].headers['cache-status']))
    t.ok(stale.every((s) => s.headers['cache-control'] === 'max-age=0'))
    await eventually(async () => (await app.inject('/swr')).json<{ run: number }>().run === 2, 3000, 'the refreshed entry')
    t.equal(runs.swr, 2, 'one refresh for five stale answers')
    t.match((await app.inject('/swr')).headers['cache-status'], /^redis-tiers; hit; /)
  })

  t.test(`${tier}: staleIfError serves the expired entry in place of a failed handler`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    t.same((await app.inject('/sie')).json(), { run: 1 })
    await storedThenExpired(app, '/sie')
    const served = await app.inject('/sie')
    t.equal(served.statusCode, 200)
    t.same(served.json(), { run: 1 })
    t.match(served.headers['cache-status'], /^redis-tiers; fwd=miss; detail=stale-if-error; ttl=-\d+$/)
    t.equal(runs.sie, 2, 'the handler was tried')
    t.equal((await app.inject('/slow/none')).statusCode, 200)
  })

  t.test(`${tier}: responses with Set-Cookie, private Cache-Control or an undeclared Vary are never stored`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    for (const url of ['/cookie', '/private', '/undeclared-vary']) {
      const first = await app.inject(url)
      const second = await app.inject(url)
      t.equal(second.json<{ run: number }>().run, 2, `${url}: the handler runs every time`)
      t.equal(first.headers['cache-status'], 'redis-tiers; fwd=miss', `${url}: not stored`)
    }
    t.equal((await app.inject('/cookie')).headers['set-cookie'], 'session=abc; HttpOnly', 'the cookie still reaches its user')
  })

  t.test(`${tier}: Vary headers select separate representations`, async (t) => {
    const runs: Runs = {}
    const { app } = await build(t, envFor(), { plugins: [routes(runs)] })
    const en = await app.inject({ url: '/lang', headers: { 'accept-language': 'en' } })
    const fr = await app.inject({ url: '/lang', headers: { 'accept-language': 'fr' } })
    t.same([en.json(), fr.json()], [{ greeting: 'hello' }, { greeting: 'bonjour' }])
    t.equal(en.headers.vary, 'accept-language')
    await stored(app, { url: '/lang', headers: { 'accept-language': 'fr' } })
    const frHit = await app.inject({ url: '/lang', headers: { 'accept-language': 'fr' } })
    const enHit = await app.inject({ url: '/lang', headers: { 'accept-language': 'en' } })
    t.same([enHit.json(), frHit.json()], [{ greeting: 'hello' }, { greeting: 'bonjour' }])
    t.equal(enHit.headers['x-cache'], 'HIT')
    t.equal(frHit.headers.vary, 'accept-language', 'a hit says what it varies on')
    t.not(enHit.headers.etag, frHit.headers.etag)
    t.equal(runs.lang, 2)
  })

  if (shared) {
    t.test(`${tier}: stored on one instance, a hit on another with the same ETag and a growing Age`, async (t) => {
      const runs: Runs = {}
      const env = envFor()
      const a = await build(t, env, { plugins: [routes(runs)] })
      const b = await build(t, env, { plugins: [routes(runs)] })
      const miss = await a.app.inject('/fixed')
      await stored(b.app, '/fixed', 'visible on b')
      await pastTtl(2100)
      const hit = await b.app.inject('/fixed')
      t.equal(hit.headers['x-cache'], 'HIT')
      t.equal(hit.headers.etag, miss.headers.etag)
      t.ok(Number(hit.headers.age) >= 2, `Age ${String(hit.headers.age)}`)
      t.equal(runs.fixed, 1)
    })
  }
}

t.test('REST requests per outcome, counted at the REST endpoint', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const requests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
  const runs: Runs = {}
  const { app } = await build(t, envForTier('rest', redis, rest, { ...BASE, CACHE_PREFIX: 'costs' }), { plugins: [routes(runs)] })
  const before = requests()
  const answers = await Promise.all(Array.from({ length: 50 }, async () => await app.inject('/slow/costs')))
  t.equal(new Set(answers.map((a) => a.body)).size, 1)
  await eventually(() => requests() - before >= 2, 3000, 'the background write')
  const hit = await app.inject('/slow/costs')
  t.equal(hit.headers['x-cache'], 'HIT')
  await app.inject({ url: '/slow/costs', headers: { 'cache-control': 'no-store' } })
  t.equal(requests() - before, 2, '50 concurrent cold requests: one GET and one EVAL in all; then two L1 hits: none')
  t.equal(runs.slow, 1, 'the cold herd only')
})

t.test('route caching on every tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  let apps = 0
  // A namespace per test, so that nothing one test stored is a hit in the next.
  for (const tier of ['tcp', 'rest', 'memory'] as const) spec(t, tier, (extra = {}) => envForTier(tier, redis, rest, { ...BASE, CACHE_PREFIX: `routes-${++apps}`, ...extra }), tier !== 'memory')
})
