import t, { type Test } from 'tap'
import fastifyRateLimit from '@fastify/rate-limit'
import type { FastifyInstance } from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import type { EnvInput } from '../lib/config'
import type { Tier } from '../lib/resolve-tier'

// fastify.rateLimit: one spec per tier through @fastify/rate-limit with our
// store (the route options and headers a host already has) and through the
// programmatic consume(); then an outage under load on three instances.

const BASE: EnvInput = { REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, RATE_LIMIT_TIMEOUT_MS: 200 }
let namespaces = 0

/** The app with @fastify/rate-limit in front of GET /limited (5 a minute, per x-client header), backed by fastify.rateLimiter.store. */
async function limitedApp (t: Test, env: EnvInput): Promise<FastifyInstance> {
  const { app } = await build(t, env, {
    plugins: [async (fastify) => {
      await fastify.register(fastifyRateLimit, { global: false, store: fastify.rateLimiter.store, keyGenerator: (request) => String(request.headers['x-client'] ?? request.ip) })
      fastify.get('/limited', { config: { rateLimit: { max: 5, timeWindow: '1 minute' } } }, async () => ({ ok: true }))
    }]
  })
  return app
}

function spec (t: Test, tier: Tier, sharedEnv: () => EnvInput): void {
  const envFor = (extra: EnvInput = {}): EnvInput => ({ ...sharedEnv(), RATE_LIMIT_PREFIX: `rl${++namespaces}`, ...extra })

  t.test(`${tier}: @fastify/rate-limit with our store allows exactly its max per window ${tier === 'memory' ? 'on one instance' : 'across two instances'}, with its headers and Retry-After`, async (t) => {
    const env = envFor()
    const one = await limitedApp(t, env)
    const two = tier === 'memory' ? one : await limitedApp(t, env)
    t.equal(one.rateLimiter.tier, tier)
    const statuses: number[] = []
    let last
    for (let i = 0; i < 8; i++) {
      last = await (i % 2 === 0 ? one : two).inject({ url: '/limited', headers: { 'x-client': 'alice' } })
      statuses.push(last.statusCode)
      if (i === 0) {
        t.equal(last.headers['x-ratelimit-limit'], '5')
        t.equal(last.headers['x-ratelimit-remaining'], '4')
        t.ok(Number(last.headers['x-ratelimit-reset']) > 0 && Number(last.headers['x-ratelimit-reset']) <= 60, 'reset in seconds, within the window')
      }
    }
    t.same(statuses, [200, 200, 200, 200, 200, 429, 429, 429])
    t.ok(last !== undefined && Number(last.headers['retry-after']) > 0 && Number(last.headers['retry-after']) <= 60, 'Retry-After in seconds')
    t.match(last?.json(), { statusCode: 429, message: /Rate limit exceeded/ })
    t.equal((await one.inject({ url: '/limited', headers: { 'x-client': 'bob' } })).statusCode, 200, 'another client has its own count')
    t.equal(two.rateLimiter.stats().by.blocked, tier === 'memory' ? 2 : 1, 'a refused client is refused in memory afterwards (no round trip)')
  })

  t.test(`${tier}: consume() decides, counts down and validates its input`, async (t) => {
    const { app } = await build(t, envFor())
    const first = await app.rateLimiter.consume('user:1', { limit: 2, window: '1m' })
    t.match(first, { allowed: true, limit: 2, remaining: 1, source: tier === 'memory' ? 'local' : 'shared' })
    t.equal(app.rateLimiter.stats().byPolicy, 0, 'no outage: no decision by the policy, on memory either')
    t.ok(first.resetMs > 0 && first.resetMs <= 60_000)
    t.match(await app.rateLimiter.consume('user:1', { limit: 2, window: 60 }), { allowed: true, remaining: 0 })
    t.match(await app.rateLimiter.consume('user:1', { limit: 2, window: 60 }), { allowed: false, remaining: 0 })
    t.match(await app.rateLimiter.consume('user:1', { limit: 2, window: 60, algorithm: 'sliding-window' }), { allowed: true }, 'another rule is another count')
    await t.rejects(app.rateLimiter.consume('', { limit: 2, window: 1 }), { statusCode: 400, message: /key/ })
    await t.rejects(app.rateLimiter.consume('k', { limit: 0, window: 1 }), { statusCode: 400, message: /"limit"/ })
    await t.rejects(app.rateLimiter.consume('k', { limit: 1, window: 'soon' }), { statusCode: 400, message: /"window"/ })
    await t.rejects(app.rateLimiter.consume('k', { limit: 1, window: 1, algorithm: 'leaky' as 'fixed-window' }), { statusCode: 400, message: /"algorithm"/ })
  })

  t.test(`${tier}: a restarted instance ${tier === 'memory' ? 'starts from zero (memory keeps nothing)' : 'keeps the count (it is in Redis)'}`, async (t) => {
    const env = envFor()
    const before = await build(t, env)
    for (let i = 0; i < 3; i++) await before.app.rateLimiter.consume('restart-me', { limit: 3, window: '1m' })
    await before.app.close()
    const after = await build(t, env)
    t.equal((await after.app.rateLimiter.consume('restart-me', { limit: 3, window: '1m' })).allowed, tier === 'memory')
  })
}

t.test('rate limit on every tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  for (const tier of ['tcp', 'rest', 'memory'] as const) spec(t, tier, () => envForTier(tier, redis, rest, BASE))
})

t.test('the demo route: 10 a minute per client, 429 with Retry-After, and the tier that counted', async (t) => {
  const { app } = await build(t, { DEMO_ROUTES: true })
  for (let i = 0; i < 10; i++) t.equal((await app.inject('/rate-limit/demo')).statusCode, 200)
  const refused = await app.inject('/rate-limit/demo')
  t.equal(refused.statusCode, 429)
  t.ok(Number(refused.headers['retry-after']) > 0)
  t.equal(refused.headers['x-ratelimit-remaining'], '0')
  t.match(refused.json(), { code: 'REDIS_TIERS_RATE_LIMITED' })
})

t.test('RATE_LIMIT_ENABLED=false: consume answers 503 with the reason; @fastify/rate-limit through our store allows', async (t) => {
  const app = await limitedApp(t, { RATE_LIMIT_ENABLED: false })
  t.equal(app.rateLimiter.available, false)
  await t.rejects(app.rateLimiter.consume('k', { limit: 1, window: 1 }), { statusCode: 503, message: /RATE_LIMIT_ENABLED/ })
  for (let i = 0; i < 7; i++) t.equal((await app.inject({ url: '/limited', headers: { 'x-client': 'c' } })).statusCode, 200)
})

t.test('RATE_LIMIT_ON_OUTAGE: invalid values fail boot naming the variable', async (t) => {
  await t.rejects(build(t, { RATE_LIMIT_ON_OUTAGE: 'memory' }), /RATE_LIMIT_ON_OUTAGE/)
  await t.rejects(build(t, { RATE_LIMIT_ALGORITHM: 'leaky-bucket' }), /RATE_LIMIT_ALGORITHM/)
})

t.test('a Redis that stops answering (paused): each decision falls back within RATE_LIMIT_TIMEOUT_MS, and the shared count resumes', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, RATE_LIMIT_TIMEOUT_MS: 100, REDIS_COMMAND_TIMEOUT_MS: 5000 })
  t.equal((await app.rateLimiter.consume('k', { limit: 10, window: '1m' })).source, 'shared')
  redis.pause()
  t.teardown(() => redis.resume())
  const times: number[] = []
  for (let i = 0; i < 5; i++) {
    const started = performance.now()
    const decision = await app.rateLimiter.consume('k', { limit: 10, window: '1m' })
    times.push(performance.now() - started)
    t.match(decision, { allowed: true, source: 'local', reason: /did not answer within 100 ms/ })
  }
  t.ok(Math.max(...times) < 100 + 150, `every decision within the deadline and a little (${times.map((ms) => ms.toFixed(0)).join(', ')} ms)`)
  t.match(app.rateLimiter.stats(), { byPolicy: 5, by: { shared: 1, local: 5 } }, 'the five made by the policy are counted as such')
  redis.resume()
  await eventually(async () => (await app.rateLimiter.consume('k', { limit: 10, window: '1m' })).source === 'shared', 10_000, 'the shared count is used again')
})

t.test('RATE_LIMIT_ON_OUTAGE=closed through @fastify/rate-limit: a 503 with the reason, no address in it', async (t) => {
  const redis = await startRedisServer(t)
  const app = await limitedApp(t, { ...BASE, REDIS_URL: redis.url, RATE_LIMIT_ON_OUTAGE: 'closed' })
  t.match(app.features['rate-limit'], { tier: 'tcp', outage: 'closed' }, 'the policy is the outage behaviour /health and the boot report name')
  t.equal((await app.inject({ url: '/limited', headers: { 'x-client': 'c' } })).statusCode, 200)
  await redis.stop()
  const res = await app.inject({ url: '/limited', headers: { 'x-client': 'c' } })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { code: 'REDIS_TIERS_FEATURE_UNAVAILABLE', message: /rate-?[lL]imit.*shared count/ })
  t.notMatch(res.body, /127\.0\.0\.1|\d{4,5}/, 'no address or port')
})

t.test('Redis killed under load on three instances', async (t) => {
  const LIMIT = 30
  for (const policy of ['local', 'open', 'closed'] as const) {
    t.test(`RATE_LIMIT_ON_OUTAGE=${policy}`, async (t) => {
      const redis = await startRedisServer(t)
      const env = { ...BASE, REDIS_URL: redis.url, RATE_LIMIT_ON_OUTAGE: policy, RATE_LIMIT_INSTANCES_REFRESH: '200ms', REDIS_REPROBE_MAX_MS: 500, REDIS_HOLD_DOWN_MS: 200 }
      const apps = [(await build(t, env)).app, (await build(t, env)).app, (await build(t, env)).app]
      // Deciding instances check in with the fleet at most once per RATE_LIMIT_INSTANCES_REFRESH.
      await eventually(async () => {
        for (const app of apps) await app.rateLimiter.consume('warm-up', { limit: 1000, window: '1m' })
        return apps.every((app) => app.rateLimiter.stats().instances === 3)
      }, 5000, 'every instance counts three')
      await redis.stop()
      let allowed = 0
      let slowest = 0
      const reasons = new Set<string>()
      for (let round = 0; round < 40; round++) {
        for (const app of apps) {
          const started = performance.now()
          const decision = await app.rateLimiter.consume('hot-key', { limit: LIMIT, window: '1m' })
          slowest = Math.max(slowest, performance.now() - started)
          if (decision.allowed) allowed++
          if (decision.reason !== undefined) reasons.add(decision.source)
        }
      }
      t.ok(slowest < 1000, `no decision waits on the dead Redis (slowest ${slowest.toFixed(0)} ms, timeout 200 ms)`)
      if (policy === 'local') t.ok(allowed <= LIMIT * 1.1 && allowed >= LIMIT * 0.9, `${allowed} of 120 allowed across the instances for a limit of ${LIMIT}`)
      if (policy === 'open') t.equal(allowed, 120, 'everything passes')
      if (policy === 'closed') {
        t.equal(allowed, 0, 'everything is refused')
        t.same([...reasons], ['closed'], 'with the reason')
      }
      await redis.restart()
      await eventually(async () => (await apps[0].rateLimiter.consume('after', { limit: 100, window: '1m' })).source === 'shared', 10_000, 'the shared count is used again')
    })
  }
})
