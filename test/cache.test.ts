import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import path from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { build, eventually } from './helpers/build'
import { startRedisServer, type RedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import app from '../app'
import type { EnvInput } from '../lib/config'
import type { Tier } from '../lib/resolve-tier'
import type { HealthReport } from '../plugins/connections'

// One specification of fastify.cache, run on tcp, rest and memory; then what
// only makes sense with a shared Redis (several instances, faults, costs).

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, CACHE_TIMEOUT_MS: 200, CACHE_PREFIX: 'spec' }

function deferred (): { promise: Promise<void>, resolve: () => void } {
  let resolve = (): void => {}
  const promise = new Promise<void>((r) => { resolve = r })
  return { promise, resolve }
}

function spec (t: Test, tier: Tier, envFor: (extra?: EnvInput) => EnvInput): void {
  t.test(`${tier}: values round-trip as JSON; null is a value, undefined a miss`, async (t) => {
    const { app } = await build(t, envFor())
    t.equal(app.cache.tier, tier)
    t.equal(app.cache.available, true)
    const value = { text: 'héllo ✓ 日本', list: [1, 2.5, -3, true, false, null, 'x'], nested: { deep: { deeper: [{}, []] } } }
    await app.cache.set('json', value)
    t.same(await app.cache.get('json'), value)
    await app.cache.set('null', null)
    t.equal(await app.cache.get('null'), null)
    t.equal(await app.cache.has('null'), true)
    t.equal(await app.cache.get('missing'), undefined)
    t.equal(await app.cache.has('missing'), false)
    await app.cache.set('date', { at: new Date(0) })
    t.same(await app.cache.get('date'), { at: '1970-01-01T00:00:00.000Z' }, 'a Date comes back as JSON gives it, on every tier')
    await app.cache.set('n', 0)
    t.equal(await app.cache.get('n'), 0)
    await app.cache.del('json')
    t.equal(await app.cache.get('json'), undefined)
    const stats = app.cache.stats()
    t.ok(stats.hits >= 4 && stats.misses >= 3, 'hits and misses are counted')
  })

  t.test(`${tier}: keys and values are validated`, async (t) => {
    const { app } = await build(t, envFor())
    await t.rejects(app.cache.set('', 1), { statusCode: 400, code: 'REDIS_TIERS_INVALID_INPUT' })
    await t.rejects(app.cache.get('k'.repeat(513)), { statusCode: 400, code: 'REDIS_TIERS_INVALID_INPUT' })
    await t.rejects(app.cache.set('k', undefined), /undefined cannot be cached/)
    await t.rejects(app.cache.set('k', () => 1), /cannot be cached/)
    await t.rejects(app.cache.set('k', 1, { tags: [''] }), { statusCode: 400, code: 'REDIS_TIERS_INVALID_INPUT' })
  })

  t.test(`${tier}: a duration the caller got wrong is a 400, through the API and through a route`, async (t) => {
    const route = async (fastify: FastifyInstance): Promise<void> => {
      fastify.put<{ Querystring: { ttl: string } }>('/ttl-probe', async (request) => {
        await fastify.cache.set('k', 1, { ttl: request.query.ttl })
        return { ok: true }
      })
    }
    const { app } = await build(t, envFor(), { plugins: [route] })
    for (const ttl of ['soon', -5, '0.0001ms', Number.NaN, Number.POSITIVE_INFINITY, 1e12]) {
      await t.rejects(app.cache.set('k', 1, { ttl }), { code: 'REDIS_TIERS_INVALID_INPUT' }, `ttl ${String(ttl)}`)
      await t.rejects(app.cache.getOrSet('k', () => 1, { staleIfErrorTtl: ttl }), { code: 'REDIS_TIERS_INVALID_INPUT' }, `staleIfErrorTtl ${String(ttl)}`)
    }
    const answer = await app.inject({ method: 'PUT', url: '/ttl-probe?ttl=soon' })
    t.equal(answer.statusCode, 400)
    t.equal(answer.json<{ code: string }>().code, 'REDIS_TIERS_INVALID_INPUT')
    t.equal((await app.inject({ method: 'PUT', url: '/ttl-probe?ttl=30s' })).statusCode, 200, 'a good one is stored')
  })

  t.test(`${tier}: TTL in seconds or with a unit, and the default TTL when none is given`, async (t) => {
    const { app } = await build(t, envFor({ CACHE_DEFAULT_TTL: '400ms', CACHE_L1_TTL: '10s' }))
    await app.cache.set('seconds', 'a', { ttl: 0.4 })
    await app.cache.set('unit', 'b', { ttl: '400ms' })
    await app.cache.set('default', 'c')
    await app.cache.set('long', 'd', { ttl: 60 })
    t.equal(await app.cache.get('seconds'), 'a')
    await eventually(async () => (await app.cache.get('seconds')) === undefined && (await app.cache.get('unit')) === undefined && (await app.cache.get('default')) === undefined, 3000, 'short TTLs expire')
    t.equal(await app.cache.get('long'), 'd', 'a longer TTL is still there')
  })

  t.test(`${tier}: tags`, async (t) => {
    const { app } = await build(t, envFor())
    await app.cache.set('a', 1, { tags: ['x'] })
    await app.cache.set('b', 2, { tags: ['x', 'y'] })
    await app.cache.set('c', 3, { tags: ['y'] })
    await app.cache.invalidateTags(['x'])
    t.equal(await app.cache.get('a'), undefined)
    t.equal(await app.cache.get('b'), undefined)
    t.equal(await app.cache.get('c'), 3)
    await app.cache.invalidateTags(['y', 'nothing'])
    t.equal(await app.cache.get('c'), undefined)
  })

  t.test(`${tier}: getOrSet runs the loader once for 200 concurrent misses`, async (t) => {
    const { app } = await build(t, envFor())
    let runs = 0
    const gate = deferred()
    const loader = async (): Promise<{ n: number }> => { runs++; await gate.promise; return { n: 42 } }
    const all = Promise.all(Array.from({ length: 200 }, async () => await app.cache.getOrSet('hot', loader, { ttl: 30 })))
    gate.resolve()
    const results = await all
    t.equal(runs, 1)
    t.ok(results.every((r) => r.n === 42))
    t.same(await app.cache.getOrSet('hot', loader), { n: 42 }, 'then served from the cache')
    t.equal(runs, 1)
    t.equal(app.cache.stats().loaderRuns, 1)
  })

  t.test(`${tier}: a loader error reaches every waiter and is not cached`, async (t) => {
    const { app } = await build(t, envFor())
    let runs = 0
    const loader = async (): Promise<string> => { runs++; await new Promise((r) => setImmediate(r)); throw new Error('db down') }
    const results = await Promise.allSettled(Array.from({ length: 5 }, async () => await app.cache.getOrSet('fails', loader)))
    t.ok(results.every((r) => r.status === 'rejected' && /db down/.test(String(r.reason))))
    t.equal(runs, 1)
    t.equal(await app.cache.getOrSet('fails', () => 'ok'), 'ok', 'the next call runs the loader again')
  })

  t.test(`${tier}: staleIfErrorTtl serves the old value when the loader fails`, async (t) => {
    const { app } = await build(t, envFor())
    t.equal(await app.cache.getOrSet('s', () => 'v1', { ttl: '150ms', staleIfErrorTtl: 30 }), 'v1')
    await eventually(async () => (await app.cache.get('s')) === undefined, 3000, 'expiry')
    t.equal(await app.cache.getOrSet('s', () => { throw new Error('db down') }, { ttl: '150ms', staleIfErrorTtl: 30 }), 'v1')
    t.equal(app.cache.stats().staleServed, 1)
    await t.rejects(app.cache.getOrSet('no-stale', () => { throw new Error('db down') }, { staleIfErrorTtl: 30 }), /db down/)
  })

  t.test(`${tier}: route response caching`, async (t) => {
    let calls = 0
    const flaky = async (f: FastifyInstance): Promise<void> => {
      f.get('/flaky', { config: { cache: { ttl: 30 } } }, async (_request, reply) => (++calls === 1 ? await reply.code(500).send({ error: 'first' }) : { ok: calls }))
    }
    const { app } = await build(t, envFor(), { plugins: [flaky] })
    const first = await app.inject('/cache/demo/k1')
    t.equal(first.statusCode, 200)
    t.equal(first.headers['x-cache'], 'MISS')
    const second = await app.inject('/cache/demo/k1')
    t.equal(second.headers['x-cache'], 'HIT')
    t.equal(second.body, first.body, 'the stored response, computedAt included')
    t.match(second.headers['content-type'], /application\/json/)
    const head = await app.inject({ method: 'HEAD', url: '/cache/demo/k1' })
    t.equal(head.statusCode, 200)
    const noCache = await app.inject({ url: '/cache/demo/k1', headers: { 'cache-control': 'no-cache' } })
    t.equal(noCache.headers['x-cache'], 'HIT')
    t.equal(noCache.json<{ computedAt: string }>().computedAt, first.json<{ computedAt: string }>().computedAt, "a client's no-cache does not run the handler (CACHE_HONOR_NO_CACHE is off)")
    t.equal((await app.inject('/flaky')).statusCode, 500)
    const retried = await app.inject('/flaky')
    t.equal(retried.statusCode, 200)
    t.equal(retried.headers['x-cache'], 'MISS', 'only 200 responses are stored')
    t.equal((await app.inject('/flaky')).headers['x-cache'], 'HIT')
    await app.cache.invalidateTags(['demo'])
    t.equal((await app.inject('/cache/demo/k1')).headers['x-cache'], 'MISS', 'route tags invalidate')
  })

  t.test(`${tier}: clear() empties this namespace`, async (t) => {
    const { app } = await build(t, envFor())
    await app.cache.set('one', 1, { tags: ['t'] })
    await app.cache.set('two', 2)
    await app.cache.clear()
    t.equal(await app.cache.get('one'), undefined)
    t.equal(await app.cache.get('two'), undefined)
    t.equal(app.cache.stats().l1Entries, 0)
  })

  t.test(`${tier}: /health shows the counters`, async (t) => {
    const { app } = await build(t, envFor())
    await app.cache.get('nothing')
    const health = (await app.inject('/health')).json<HealthReport>()
    t.match(health.features.cache, { status: 'active', tier, stats: { misses: 1, hits: 0 } })
  })
}

t.test('the cache specification on every tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  for (const tier of ['tcp', 'rest', 'memory'] as const) spec(t, tier, (extra = {}) => envForTier(tier, redis, rest, { ...BASE, ...extra }))
})

t.test('namespacing on a shared Redis', async (t) => {
  const redis = await startRedisServer(t)
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())
  await direct.set('foreign', 'keep me')
  await direct.set('other:c:x', 'keep me too')
  const a = await build(t, { ...BASE, REDIS_URL: redis.url, CACHE_PREFIX: 'app-a' })
  const b = await build(t, { ...BASE, REDIS_URL: redis.url, CACHE_PREFIX: 'app-b' })
  await a.app.cache.set('k', 'from a', { tags: ['t'] })
  await b.app.cache.set('k', 'from b', { tags: ['t'] })
  t.ok(await direct.exists('app-a:c:k'), 'keys live under the prefix')
  t.equal(await b.app.cache.get('k'), 'from b', 'two prefixes do not see each other')
  await a.app.cache.invalidateTags(['t'])
  t.equal(await b.app.cache.get('k'), 'from b', 'tag invalidation stays in its namespace')
  await a.app.cache.set('k2', 1)
  await a.app.cache.clear()
  t.equal(await direct.get('foreign'), 'keep me')
  t.equal(await direct.get('other:c:x'), 'keep me too')
  t.equal(await direct.exists('app-a:c:k2'), 0)
  t.equal(await b.app.cache.get('k'), 'from b', 'clear() never touches another namespace')
  await t.rejects(build(t, { ...BASE, CACHE_PREFIX: 'has space' }), /CACHE_PREFIX must be 1-64 letters/)
})

t.test('PTTL in Redis matches the TTL asked for', async (t) => {
  const redis = await startRedisServer(t)
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, CACHE_DEFAULT_TTL: '45s' })
  await app.cache.set('ttl', 1, { ttl: 120 })
  await app.cache.set('default', 1)
  await app.cache.set('stale', 1, { ttl: 10, tags: ['g'] })
  const ttl = await direct.pttl('spec:c:ttl')
  t.ok(ttl > 119_000 && ttl <= 120_000, `PTTL ${ttl}`)
  const def = await direct.pttl('spec:c:default')
  t.ok(def > 44_000 && def <= 45_000, `default PTTL ${def}, never forever`)
  t.ok(await direct.pttl('spec:t:g') >= 9_000, 'the tag set lives as long as its members')
})

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: two instances on one Redis stay coherent`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const env = envForTier(tier, redis, rest, BASE)
    const a = await build(t, env)
    const b = await build(t, env)
    await a.app.cache.set('shared', 'v1', { ttl: 60, tags: ['g'] })
    t.equal(await b.app.cache.get('shared'), 'v1', 'a set on A is seen by B')
    t.equal(await b.app.cache.get('shared'), 'v1')
    t.ok(b.app.cache.stats().l1Hits >= 1, "now in B's L1")
    await a.app.cache.set('shared', 'v2', { ttl: 60, tags: ['g'] })
    await eventually(async () => (await b.app.cache.get('shared')) === 'v2', 2000, "B's L1 invalidated by A's write")
    await a.app.cache.invalidateTags(['g'])
    await eventually(async () => (await b.app.cache.get('shared')) === undefined, 2000, "B's L1 invalidated by A's tag invalidation")
    await b.app.cache.set('other', 1)
    t.equal(await a.app.cache.get('other'), 1)
    await b.app.cache.clear()
    await eventually(async () => (await a.app.cache.get('other')) === undefined, 2000, "A's L1 cleared by B's clear()")
  })
}

t.test('rest: an L1 hit costs no command, a miss at most two round trips', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  // Queues off: their producer's one-time INFO at boot is not the cache's cost.
  const { app } = await build(t, { ...BASE, QUEUES_ENABLED: false, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token })
  const requests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
  const before = requests()
  const sentBefore = app.cache.stats().redisCommands
  await app.cache.getOrSet('costly', () => ({ x: 1 }), { ttl: 60, tags: ['a', 'b'] })
  t.equal(requests() - before, 2, 'miss: one GET, one EVAL that writes, tags and notifies')
  t.equal(app.cache.stats().redisCommands - sentBefore, 2, 'counted in stats().redisCommands')
  const afterMiss = requests()
  for (let i = 0; i < 50; i++) await app.cache.getOrSet('costly', () => ({ x: 2 }))
  t.equal(requests(), afterMiss, '50 L1 hits sent nothing')
  t.equal(app.cache.stats().l1Hits, 50)
})

t.test('tcp faults: Redis paused mid-traffic, then killed and restarted', async (t) => {
  const redis: RedisServer = await startRedisServer(t)
  const env = { ...BASE, REDIS_URL: redis.url, CACHE_L1_MAX_ENTRIES: 0 }
  const { app } = await build(t, env)
  await app.cache.set('warm', 'w')
  redis.pause()
  t.teardown(() => redis.resume())
  for (let i = 0; i < 5; i++) {
    const started = Date.now()
    const value = await app.cache.getOrSet(`p${i}`, async () => { await new Promise((r) => setTimeout(r, 20)); return i })
    const elapsed = Date.now() - started
    t.equal(value, i, 'served by the loader')
    t.ok(elapsed < 2 * BASE.CACHE_TIMEOUT_MS + 20 + 150, `answered in ${elapsed} ms (read and write each bounded by CACHE_TIMEOUT_MS)`)
  }
  t.ok(app.cache.stats().redisErrors >= 5, 'Redis errors are counted')
  const res = await app.inject('/cache/demo/while-paused')
  t.equal(res.statusCode, 200, 'routes keep answering')
  redis.resume()

  await redis.stop()
  t.equal(await app.cache.getOrSet('down', () => 'loader'), 'loader', 'Redis down: fail-open')
  await t.rejects(app.cache.del('down'), { statusCode: 503, message: /Redis did not confirm the delete/ }, 'invalidations do not fail silently')
  await redis.restart()
  await eventually(async () => {
    await app.cache.set('back', 'yes')
    return (await app.cache.get('back')) === 'yes' // L1 is off here: this read is Redis's answer
  }, 10000, 'cache resumes on Redis without an app restart')
  const hitsBefore = app.cache.stats().l2Hits
  t.equal(await app.cache.get('back'), 'yes')
  t.equal(app.cache.stats().l2Hits, hitsBefore + 1, 'served from Redis again')
  const health = (await app.inject('/health')).json<HealthReport>()
  t.ok((health.features.cache.stats as { redisErrors: number }).redisErrors >= 5, 'and reported in /health')
})

t.test('errors are logged at a bounded rate, not once per request', async (t) => {
  const redis = await startRedisServer(t)
  const { app, logs } = await build(t, { ...BASE, REDIS_URL: redis.url })
  await redis.stop()
  for (let i = 0; i < 30; i++) await app.cache.get(`x${i}`)
  t.equal(app.cache.stats().redisErrors, 30)
  t.equal(logs().filter((l) => /cache read failed/.test(l.msg)).length, 1)
})

t.test('a skipped cache still decorates and answers 503 with the reason', async (t) => {
  const { app } = await build(t, { ...BASE, CACHE_ENABLED: 'false' })
  t.equal(app.cache.available, false)
  t.equal(app.cache.reason, 'disabled by CACHE_ENABLED=false')
  await t.rejects(app.cache.get('k'), { statusCode: 503, message: 'cache is unavailable: disabled by CACHE_ENABLED=false' })
  const res = await app.inject('/cache/demo/k')
  t.equal(res.statusCode, 200, 'cached routes still work, uncached')
  t.equal(res.headers['x-cache'], undefined)
  t.same(app.cache.stats().hits, 0)
})

t.test('CACHE_TIER forces a tier', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, CACHE_TIER: 'memory' })
  t.equal(app.cache.tier, 'memory')
})

t.test('decorator collisions and invalid settings fail boot with the fix', async (t) => {
  const host = Fastify()
  t.teardown(async () => await host.close())
  host.decorate('cache', {} as never)
  await t.rejects(async () => {
    await host.register(app, { processEnv: false })
    await host.ready()
  }, { message: /fastify.cache is already decorated, probably by @fastify\/caching; register one of the two inside its own encapsulated scope/ })

  await t.rejects(build(t, { CACHE_TIMEOUT_MS: 'fast' }), /CACHE_TIMEOUT_MS must be a whole number/)
  await t.rejects(build(t, { CACHE_DEFAULT_TTL: 'forever' }), /CACHE_DEFAULT_TTL must be a number of seconds or a duration/)

  const post = Fastify()
  t.teardown(async () => await post.close())
  await post.register(app, { processEnv: false })
  await t.rejects(async () => {
    post.post('/x', { config: { cache: { ttl: 1 } } }, async () => 'x')
    await post.ready()
  }, /only GET and HEAD responses can be cached/)
})

t.test('tcp: with Redis paused, a cached route answers within the read timeout plus the handler time', async (t) => {
  const redis = await startRedisServer(t)
  const route = async (f: FastifyInstance): Promise<void> => {
    f.get('/slow', { config: { cache: { ttl: 60 } } }, async () => {
      await new Promise((resolve) => setTimeout(resolve, 50))
      return { ok: true }
    })
  }
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, CACHE_TIMEOUT_MS: 400 }, { plugins: [route] })
  redis.pause()
  t.teardown(() => redis.resume())
  const started = performance.now()
  const res = await app.inject('/slow')
  const ms = performance.now() - started
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-status'], 'redis-tiers; fwd=miss; detail=store-unconfirmed', 'not claimed stored')
  // read 400 + handler 50; waiting on the write as well would take 850
  t.ok(ms < 400 + 50 + 250, `answered in ${ms.toFixed(0)} ms`)
  await eventually(() => app.cache.stats().redisErrors >= 2, 3000, 'the background write timed out and was counted')
})

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: a tag forgets entries that expired: it holds no more members than live entries`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const direct = new Redis(redis.url)
    t.teardown(() => direct.disconnect())
    const { app } = await build(t, envForTier(tier, redis, rest, { ...BASE, CACHE_PREFIX: 'prune', CACHE_TIMEOUT_MS: 5000 }))
    await Promise.all(Array.from({ length: 300 }, async (_v, i) => await app.cache.set(`old${i}`, i, { ttl: '300ms', tags: ['feed'] })))
    t.equal(await direct.zcard('prune:t:feed'), 300)
    await eventually(async () => await direct.exists('prune:c:old0', 'prune:c:old299') === 0, 3000, 'the 300 entries expired')
    for (let i = 0; i < 10; i++) await app.cache.set(`live${i}`, i, { ttl: 60, tags: ['feed'] })
    t.equal(await direct.zcard('prune:t:feed'), 10, 'only the 10 live entries are members')
    await app.cache.invalidateTags(['feed'])
    t.equal(await direct.exists('prune:c:live0', 'prune:t:feed'), 0, 'and an invalidation still removes them')
  })
}

t.test('tcp: invalidateTags on a tag of 20 000 members never holds Redis for 50 ms, and reaches the other instance', async (t) => {
  const redis = await startRedisServer(t)
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())
  const env = { ...BASE, REDIS_URL: redis.url, CACHE_PREFIX: 'big', CACHE_TIMEOUT_MS: 5000 }
  const a = await build(t, env)
  const b = await build(t, env)
  for (let from = 0; from < 20_000; from += 1000) {
    await Promise.all(Array.from({ length: 1000 }, async (_v, i) => await a.app.cache.set(`k${from + i}`, from + i, { ttl: 600, tags: ['all'] })))
  }
  t.equal(await direct.zcard('big:t:all'), 20_000)
  t.equal(await b.app.cache.get('k7'), 7)
  // The other client is another process: in this one, the two instances applying 20 000 L1
  // invalidations would be what its PING waits for, not Redis.
  const pinger = spawn(process.execPath, ['-e', `
    const { Redis } = require('ioredis')
    const redis = new Redis(process.argv[1])
    let slowest = 0, done = false
    process.stdin.on('data', () => { done = true })
    redis.ping().then(async () => {
      process.stdout.write('ready\\n')
      while (!done) { const t = performance.now(); await redis.ping(); slowest = Math.max(slowest, performance.now() - t) }
      process.stdout.write(String(slowest) + '\\n'); redis.disconnect()
    })`, redis.url], { cwd: path.join(__dirname, '..'), stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => pinger.kill())
  const lines: string[] = []
  pinger.stdout.on('data', (chunk: Buffer) => lines.push(...chunk.toString().split('\n').filter((l) => l !== '')))
  await eventually(() => lines.includes('ready'), 5000, 'the pinger is connected')
  await direct.config('SET', 'slowlog-log-slower-than', '0')
  await direct.slowlog('RESET')
  await a.app.cache.invalidateTags(['all'])
  pinger.stdin.write('stop\n')
  await eventually(() => lines.length >= 2, 5000, 'the pinger reported')
  const slowestPing = Number(lines[1])
  t.ok(slowestPing < 50, `another client's PING waited at most ${slowestPing.toFixed(1)} ms`)
  const log = await direct.slowlog('GET', 100_000) as Array<[number, number, number, string[]]>
  const longest = Math.max(...log.filter((e) => /^evalsha|^eval$/i.test(String(e[3][0]))).map((e) => Number(e[2]) / 1000))
  t.ok(longest < 50, `the longest invalidation call held Redis ${longest.toFixed(2)} ms (SLOWLOG)`)
  t.equal(Number(await direct.eval("return #redis.call('KEYS', 'big:*')", 0)), 0, 'every entry and the tag are gone')
  await eventually(async () => await b.app.cache.get('k7') === undefined, 2000, "B's L1 copy dropped by the invalidation message")
})

t.test('rest: a large invalidation goes in batches of 500 keys, one request each', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())
  const { app } = await build(t, { ...BASE, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token, CACHE_PREFIX: 'batched', CACHE_TIMEOUT_MS: 5000 })
  for (let from = 0; from < 1200; from += 200) {
    await Promise.all(Array.from({ length: 200 }, async (_v, i) => await app.cache.set(`k${from + i}`, i, { ttl: 600, tags: ['all'] })))
  }
  const requests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
  const before = requests()
  await app.cache.invalidateTags(['all'])
  t.equal(requests() - before, 3, '1 200 keys: 500 + 500 + 200')
  t.equal(Number(await direct.eval("return #redis.call('KEYS', 'batched:*')", 0)), 0, 'all gone, tags included')
})
