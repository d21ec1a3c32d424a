import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer, freePort } from '../support/redis-server'
import { TEST_REST_TOKEN } from '../support/rest-server'
import { startRestBridge } from '../tools/rest-bridge'
import app from '../app'
import type { FeatureChange, TierChange } from '../plugins/connections'
import { connectSse } from './helpers/sse-client'
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'

// The live tier state: every configured tier is up or down at every moment,
// from the boot probe, the client's own events, /health pings and a
// background re-probe while it is down; nothing unconfigured is ever dialled.

const FAST = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 500, REDIS_COMMAND_TIMEOUT_MS: 300, REDIS_REPROBE_MAX_MS: 500, REDIS_HOLD_DOWN_MS: 500 }
const FEATURES = ['cache', 'sse', 'presence', 'queues'] as const

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => unhandled.push(reason))

t.test('tcp: a Redis that starts 2 s after the app is found by the re-probe, without a restart', async (t) => {
  const port = await freePort()
  const { app, logs } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}` })
  const changes: TierChange[] = []
  app.connections.on('tier', (change: TierChange) => changes.push(change))
  const before = (await app.inject('/health')).json<{ tiers: { tcp: { reachable: boolean, since: string, lastError: string } } }>()
  t.match(before.tiers.tcp, { reachable: false, lastError: /connection refused/ })
  t.ok(logs().some((l) => /tier tcp: unavailable: .*retrying in the background \(at most every 500 ms\)/.test(l.msg)), 'the boot report says it keeps trying')

  await new Promise((resolve) => setTimeout(resolve, 2000))
  await startRedisServer(t, { port })
  const startedAt = Date.now()
  await eventually(() => app.connections.tiers.tcp.reachable, 3000, 'tcp reachable again')
  t.ok(Date.now() - startedAt <= 500 + 1000, `found ${Date.now() - startedAt} ms after Redis started (re-probe at most every 500 ms)`)
  const health = (await app.inject('/health')).json<{ tiers: { tcp: { reachable: boolean, since: string, checkedAt: string, lastError: null } } }>()
  t.match(health.tiers.tcp, { reachable: true, lastError: null })
  t.ok(Date.parse(health.tiers.tcp.since) >= startedAt - 50, 'since: when it came up')
  t.ok(Date.now() - Date.parse(health.tiers.tcp.checkedAt) < 1000, 'checkedAt is fresh')
  t.same(changes.map((c) => [c.tier, c.up]), [['tcp', true]], 'one change event')
  t.ok(logs().some((l) => l.level === 30 && l.msg.startsWith('tier tcp: reachable again')), 'one log line')
  t.equal(await app.connections.tcp?.set('k', 'v'), 'OK', 'the client the re-probe made is the one the app uses')
})

t.test('rest: an Upstash endpoint that answers late is found by the re-probe', async (t) => {
  const port = await freePort()
  const { app } = await build(t, { ...FAST, UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${port}`, UPSTASH_REDIS_REST_TOKEN: TEST_REST_TOKEN })
  t.equal(app.connections.tiers.rest.reachable, false)
  const redis = await startRedisServer(t)
  const bridge = await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN, port })
  t.teardown(async () => await bridge.close())
  await eventually(() => app.connections.tiers.rest.reachable, 3000, 'rest reachable')
  t.equal(await app.connections.rest?.set('k', 'v'), 'OK')
  await eventually(() => (['cache', 'sse', 'presence', 'queues'] as const).every((f) => app.features[f].tier === 'rest'), 500 + 1000, 'every feature on rest')
  t.match(app.features.queues, { status: 'active', reason: /producing only: workers need a TCP Redis/ }, 'queues produce over REST, and say where workers run')
  t.equal(app.queues.workers, false)
  t.match((await app.inject('/health')).json(), { tiers: { rest: { reachable: true, lastError: null } } })
})

t.test('tcp: killed and restarted, each change is one event and /health says since when', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  const changes: TierChange[] = []
  app.connections.on('tier', (change: TierChange) => changes.push(change))
  const bootSince = app.connections.tiers.tcp.since
  await redis.stop()
  await eventually(() => !app.connections.tiers.tcp.reachable, 3000, 'down')
  t.not(app.connections.tiers.tcp.since, bootSince, 'since moved')
  await redis.restart()
  await eventually(() => app.connections.tiers.tcp.reachable, 5000, 'up again')
  t.same(changes.map((c) => c.up), [false, true])
  t.match(changes[0].reason, /REDIS_URL/)
})

t.test('tcp: flapping 5 times in a few seconds: no crash, no unhandled rejection, changes alternate, the end state is right', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  const changes: boolean[] = []
  app.connections.on('tier', (change: TierChange) => changes.push(change.up))
  for (let i = 0; i < 5; i++) {
    await redis.stop()
    await new Promise((resolve) => setTimeout(resolve, 300))
    await redis.restart()
    await new Promise((resolve) => setTimeout(resolve, 300))
  }
  await eventually(() => app.connections.tiers.tcp.reachable, 5000, 'up at the end')
  t.ok(changes.length >= 2, `${changes.length} changes`)
  t.ok(changes.every((up, i) => i === 0 || up !== changes[i - 1]), 'never the same change twice in a row')
  t.equal(changes.at(-1), true)
  t.equal((await app.inject('/health')).statusCode, 200)
})

t.test('nothing configured: nothing is dialled or re-probed, and no timer is left after close', async (t) => {
  const handles = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length
  await eventually(() => true)
  const before = handles()
  const fastify = Fastify()
  await fastify.register(app, { processEnv: false, env: FAST })
  await fastify.ready()
  await new Promise((resolve) => setTimeout(resolve, 700))
  t.ok(handles() <= before, `no socket, no re-probe timer (${handles()} handles, ${before} before)`)
  t.match(fastify.connections.tiers, { tcp: { configured: false, since: null }, rest: { configured: false, since: null } })
  await fastify.close()
  t.ok(handles() <= before)
})

t.test('a tier down at boot leaves no timer once the app is closed', async (t) => {
  const handles = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length
  await eventually(() => true)
  const before = handles()
  const fastify = Fastify()
  await fastify.register(app, { processEnv: false, env: { ...FAST, REDIS_URL: `redis://127.0.0.1:${await freePort()}` } })
  await fastify.ready()
  await new Promise((resolve) => setTimeout(resolve, 600)) // a re-probe or two
  await fastify.close()
  await eventually(() => handles() <= before, 2000, `handles back to ${before}`)
  t.ok(handles() <= before)
})

t.test('tcp: Redis 2 s late: within re-probe + hold-down + 1 s every feature is on tcp, a job defined at boot runs, /health is ok', async (t) => {
  const port = await freePort()
  const define = async (f: FastifyInstance): Promise<void> => { f.queues.define('late', async (job) => `done ${String(job.data)}`) }
  const { app, logs } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}` }, { plugins: [define] })
  const moves: FeatureChange[] = []
  app.connections.on('change', (change: FeatureChange) => moves.push(change))
  t.same(FEATURES.map((f) => app.features[f].tier), ['memory', 'memory', 'memory', null], 'boot: memory, queues skipped')
  await t.rejects(app.queues.add('late', 1), { statusCode: 503, message: /queues is unavailable/ })
  await new Promise((resolve) => setTimeout(resolve, 2000))
  await startRedisServer(t, { port })
  const started = Date.now()
  await eventually(() => FEATURES.every((f) => app.features[f].tier === 'tcp'), 500 + 500 + 1000, 'every feature on tcp')
  t.ok(Date.now() - started <= 2000, `all on tcp ${Date.now() - started} ms after Redis started`)
  t.same(FEATURES.map((f) => [app.features[f].transitions, app[f].tier]), FEATURES.map(() => [1, 'tcp']), 'one move each, and the decorators say so')
  t.same(moves.map((m) => `${m.feature}:${String(m.from)}->${String(m.to)}`).sort(), ['cache:memory->tcp', 'presence:memory->tcp', 'queues:null->tcp', 'rate-limit:memory->tcp', 'sse:memory->tcp'])
  t.ok(logs().some((l) => l.msg === 'feature cache: memory -> tcp (tcp is reachable again)'), 'one log line per move')
  const { id } = await app.queues.add('late', 7)
  await eventually(async () => (await app.queues.getJob('late', id))?.state === 'completed', 5000, 'the job ran')
  const health = await app.inject('/health')
  t.equal(health.statusCode, 200)
  t.match(health.json(), { status: 'ok', features: { cache: { tier: 'tcp', transitions: 1, outage: 'fail-open', since: String }, sse: { outage: 'unavailable' } } })
})

async function serve (t: Test, env: Record<string, string | number | boolean>): Promise<{ app: FastifyInstance, url: string }> {
  const { app } = await build(t, env)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}` }
}

t.test('two instances booted without Redis share the cache and SSE fan-out once it appears; streams opened before stay open', async (t) => {
  const port = await freePort()
  const env = { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}`, DEMO_ROUTES: true }
  const a = await serve(t, env)
  const b = await serve(t, env)
  const conn = await connectSse(t, `${b.url}/events/public:promoted`)
  await eventually(() => b.app.sse.stats().clients === 1, 3000, 'client on B')
  await startRedisServer(t, { port })
  await eventually(() => [a, b].every(({ app }) => app.features.cache.tier === 'tcp' && app.features.sse.tier === 'tcp'), 4000, 'both promoted')
  await a.app.cache.getOrSet('shared', () => 'computed on A', { ttl: 60 })
  t.equal(await b.app.cache.get('shared'), 'computed on A', 'a hit on B')
  t.ok(b.app.cache.stats().l2Hits >= 1, 'from Redis')
  const id = await a.app.sse.publish('public:promoted', { from: 'a' })
  const [event] = await conn.waitFor(1)
  t.same(event, { id, event: 'message', data: '{"from":"a"}' }, "A's event reached the stream B had open since before the promotion")
  t.notOk(conn.isEnded())
})

t.test('an instance promoted later gets, for its open streams, what the other published on tcp meanwhile', async (t) => {
  const port = await freePort()
  const env = { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}` }
  const a = await serve(t, { ...env, REDIS_HOLD_DOWN_MS: 250 })
  const b = await serve(t, { ...env, REDIS_HOLD_DOWN_MS: 2000 })
  const conn = await connectSse(t, `${b.url}/events/public:meanwhile`)
  await eventually(() => b.app.sse.stats().clients === 1, 3000, 'client on B')
  await startRedisServer(t, { port })
  await eventually(() => a.app.features.sse.tier === 'tcp', 3000, 'A promoted')
  t.equal(b.app.features.sse.tier, 'memory', 'B still holding down')
  const id = await a.app.sse.publish('public:meanwhile', 'while B was on memory')
  await eventually(() => b.app.features.sse.tier === 'tcp', 4000, 'B promoted')
  const [event] = await conn.waitFor(1)
  t.same(event, { id, event: 'message', data: 'while B was on memory' }, 'caught up from the history at the promotion')
  const next = await a.app.sse.publish('public:meanwhile', 'live')
  t.same((await conn.waitFor(2)).map((e) => e.id), [id, next], 'then live, no duplicate')
})

t.test('presence: a user online in memory before the promotion is still online after it, and no leave fired', async (t) => {
  const port = await freePort()
  const { app } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}`, PRESENCE_TTL_MS: 60_000 })
  const leaves: string[] = []
  app.presence.on('leave', (e) => leaves.push(e.userId))
  await app.presence.heartbeat('ada', { status: 'busy', device: 'phone' })
  await startRedisServer(t, { port })
  await eventually(() => app.features.presence.tier === 'tcp', 4000, 'promoted')
  t.match(await app.presence.get('ada'), { userId: 'ada', status: 'busy' }, 'still online, from Redis now')
  t.equal(await app.presence.count(), 1)
  const other = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}` })
  t.equal(await other.app.presence.isOnline('ada'), true, 'and other instances see her')
  t.same(leaves, [])
})

t.test('CACHE_ON_OUTAGE=memory and SSE_ON_OUTAGE=memory: Redis killed -> memory; Redis back -> tcp again', async (t) => {
  const redis = await startRedisServer(t)
  const { app, url } = await serve(t, { ...FAST, REDIS_URL: redis.url, CACHE_ON_OUTAGE: 'memory', SSE_ON_OUTAGE: 'memory' })
  t.equal(app.features.cache.outage, 'memory')
  t.equal(app.features.presence.outage, 'unavailable', 'declared behaviour for the others')
  await redis.stop()
  await eventually(() => app.features.cache.tier === 'memory' && app.features.sse.tier === 'memory', 3000, 'degraded to memory')
  t.equal(await app.cache.getOrSet('k', () => 'from memory'), 'from memory')
  t.equal(await app.cache.get('k'), 'from memory', 'served from memory')
  const conn = await connectSse(t, `${url}/events/public:outage`)
  await eventually(() => app.sse.stats().clients === 1, 3000, 'stream open')
  const id = await app.sse.publish('public:outage', 'in memory')
  t.equal((await conn.waitFor(1))[0].id, id, 'sse publishes in memory during the outage')
  await t.rejects(app.presence.heartbeat('u1'), { statusCode: 503, message: /presence is unavailable/ }, 'presence is unavailable, as declared')
  t.equal((await app.inject('/health')).json<{ status: string }>().status, 'down', 'presence still runs on the down tier')
  await redis.restart()
  await eventually(() => app.features.cache.tier === 'tcp' && app.features.sse.tier === 'tcp', 5000, 'promoted back')
  t.equal(app.features.cache.transitions, 2)
  const again = await app.sse.publish('public:outage', 'on tcp')
  await eventually(() => conn.events.some((e) => e.id === again), 3000, 'the same stream gets tcp events')
})

t.test('QUEUES_ON_OUTAGE=memory is refused with the reason', async (t) => {
  const fastify = Fastify()
  t.teardown(async () => await fastify.close())
  await t.rejects(async () => {
    await fastify.register(app, { processEnv: false, env: { QUEUES_ON_OUTAGE: 'memory' } })
    await fastify.ready()
  }, { message: /QUEUES_ON_OUTAGE=memory is not supported: the queues feature cannot run in memory/ })
})

t.test('flapping with CACHE_ON_OUTAGE=memory: at most one promotion per hold-down, the end state right', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url, CACHE_ON_OUTAGE: 'memory', REDIS_HOLD_DOWN_MS: 1000 })
  const moves: Array<{ to: string | null, at: number }> = []
  app.connections.on('change', (change: FeatureChange) => { if (change.feature === 'cache') moves.push({ to: change.to, at: Date.now() }) })
  for (let i = 0; i < 5; i++) {
    await redis.stop()
    await new Promise((resolve) => setTimeout(resolve, 300))
    await redis.restart()
    await new Promise((resolve) => setTimeout(resolve, 300))
  }
  await eventually(() => app.features.cache.tier === 'tcp', 5000, 'on tcp at the end')
  const promotions = moves.filter((m) => m.to === 'tcp')
  t.ok(promotions.length <= 2, `${promotions.length} promotions in ${moves.length} moves`)
  t.ok(promotions.every((m, i) => i === 0 || m.at - promotions[i - 1].at >= 1000), 'never two promotions within a hold-down')
  t.equal(await app.cache.getOrSet('after', () => 1), 1)
})

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: Redis killed and restarted under a connected client: every accepted event arrives once, in order`, async (t) => {
    const redis = await startRedisServer(t)
    const bridge = tier === 'rest' ? await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN }) : null
    t.teardown(async () => await bridge?.close())
    const env = tier === 'tcp' ? { ...FAST, REDIS_URL: redis.url } : { ...FAST, UPSTASH_REDIS_REST_URL: bridge?.url ?? '', UPSTASH_REDIS_REST_TOKEN: TEST_REST_TOKEN }
    const { app, url } = await serve(t, { ...env, SSE_TIMEOUT_MS: 300 })
    const conn = await connectSse(t, `${url}/events/public:nogap`)
    await eventually(() => app.sse.stats().clients === 1, 3000, 'connected')
    await app.sse.publish('public:nogap', 'before')
    await conn.waitFor(1)
    // Down long enough for the resubscription's backoff to grow: publishes are accepted again
    // before the fan-out subscription is back, which is the gap the history must fill.
    await redis.stop()
    await new Promise((resolve) => setTimeout(resolve, 2000))
    await redis.restart()
    const accepted: string[] = []
    for (let i = 0; i < 30; i++) {
      try {
        accepted.push(await app.sse.publish('public:nogap', `n${i}`))
      } catch { /* refused while Redis was away: not expected to arrive */ }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    t.ok(accepted.length >= 10, `${accepted.length} of 30 accepted`)
    await eventually(() => accepted.every((id) => conn.events.some((e) => e.id === id)), 8000, 'every accepted event delivered')
    const after = conn.events.slice(1).map((e) => e.id)
    t.same(after, accepted, 'each once, in order, nothing else')
    t.notOk(conn.isEnded(), 'the stream stayed open')
  })
}

// Runs last (top-level tests run in order).
t.test('no unhandled rejection escaped during any of the above', async (t) => {
  t.same(unhandled.map(String), [])
})
