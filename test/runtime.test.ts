import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer, type RedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import app, { connections, sse, presence, queues } from '../index'
import { quietOutages } from '../routes/outage-errors'
import { FeatureUnavailableError } from '../lib/errors'
import type { Bus } from '../lib/bus'
import type { EnvInput } from '../lib/config'

// After boot: Redis going away and coming back, the shared pub/sub bus on
// every tier, cleanup on close, and secrets staying secret.

const FAST = { REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 300 }

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => unhandled.push(reason))

/** Collect what a bus delivers on one channel. */
async function listen (bus: Bus, channel: string): Promise<{ received: unknown[], stop: () => Promise<void> }> {
  const received: unknown[] = []
  const stop = await bus.subscribe(channel, (message) => received.push(message))
  return { received, stop }
}

t.test('tcp: Redis killed after boot, then restarted', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url }, { app: { health: { showEndpoints: true } } })
  const healthy = await app.inject('/health')
  t.equal(healthy.statusCode, 200)
  t.match(healthy.json(), { status: 'ok', tiers: { tcp: { reachable: true, latencyMs: Number } } })

  await redis.stop()
  const started = Date.now()
  const down = await app.inject('/health')
  t.ok(Date.now() - started < FAST.REDIS_COMMAND_TIMEOUT_MS + 500, '/health answers within the command deadline')
  t.equal(down.statusCode, 503)
  t.match(down.json(), { status: 'down', tiers: { tcp: { reachable: false, lastError: /redis:\/\/127\.0\.0\.1:\d+\/0 \(REDIS_URL\) is down and is being re-established/ } } })
  t.equal((await app.inject('/health/live')).statusCode, 200, 'liveness does not depend on Redis')
  await t.rejects(app.connections.tcp!.get('k'), 'commands fail fast while disconnected')

  await redis.restart()
  await eventually(async () => (await app.inject('/health')).statusCode === 200, 10000, '/health back to 200')
  t.equal(await app.connections.tcp!.set('k', 'v'), 'OK', 'the same client works again without an app restart')
})

t.test('tcp: a paused Redis (accepts, never answers) cannot hold requests hostage', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  redis.pause()
  t.teardown(() => redis.resume())
  const started = Date.now()
  const res = await app.inject('/health')
  t.equal(res.statusCode, 503)
  t.ok(Date.now() - started < FAST.REDIS_COMMAND_TIMEOUT_MS + 500, `answered in ${Date.now() - started} ms`)
  t.match(res.json(), { tiers: { tcp: { lastError: /no answer from .* within 300 ms.*raise REDIS_COMMAND_TIMEOUT_MS/ } } })
  await t.rejects(app.connections.tcp!.get('k'), /timed out/i, 'commands time out instead of hanging')
  redis.resume()
  await eventually(async () => (await app.inject('/health')).statusCode === 200, 10000, '/health back to 200')
})

t.test('rest: the REST endpoint failing after boot, then recovering', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const { app } = await build(t, { ...FAST, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }, { app: { health: { showEndpoints: true } } })
  t.equal((await app.inject('/health')).statusCode, 200)
  await redis.stop()
  const down = await app.inject('/health')
  t.equal(down.statusCode, 503)
  t.match(down.json(), { tiers: { rest: { reachable: false, lastError: /\(UPSTASH_REDIS_REST_URL\)/ } } })
  await redis.restart()
  await eventually(async () => (await app.inject('/health')).statusCode === 200, 10000, '/health back to 200')
})

t.test('the shared bus, one spec per tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const envFor: Record<'tcp' | 'rest' | 'memory', EnvInput> = {
    tcp: { ...FAST, REDIS_URL: redis.url },
    rest: { ...FAST, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token },
    memory: FAST
  }
  for (const tier of ['tcp', 'rest', 'memory'] as const) {
    t.test(`${tier}: publish reaches every local subscriber, JSON intact`, async (t) => {
      const { app } = await build(t, envFor[tier])
      const bus = app.connections.bus(tier)
      t.equal(app.connections.bus(tier), bus, 'one bus per tier and instance')
      const a = await listen(bus, 'room:1')
      const b = await listen(bus, 'room:1')
      await bus.publish('room:1', { text: 'héllo\nworld', n: 1, list: [null, true] })
      await eventually(() => a.received.length === 1 && b.received.length === 1, 3000, 'delivery')
      t.same(a.received[0], { text: 'héllo\nworld', n: 1, list: [null, true] })
      t.equal(bus.subscriptions()['room:1'], 2)
      await a.stop()
      await a.stop() // idempotent
      t.equal(bus.subscriptions()['room:1'], 1)
      await b.stop()
      t.notOk('room:1' in bus.subscriptions(), 'ref-count reaches zero and the channel is dropped')
      await bus.publish('room:1', 'after')
      const probe = await listen(bus, 'room:2')
      await bus.publish('room:2', 'marker')
      await eventually(() => probe.received.length === 1, 3000, 'marker delivery')
      t.equal(b.received.length, 1, 'no delivery after unsubscribe')
      await probe.stop()
    })

    t.test(`${tier}: invalid channel names are refused`, async (t) => {
      const { app } = await build(t, envFor[tier])
      const bus = app.connections.bus(tier)
      await t.rejects(bus.subscribe('', () => {}), TypeError)
      await t.rejects(bus.subscribe('has space', () => {}), TypeError)
      await t.rejects(bus.publish('x'.repeat(300), 1), TypeError)
    })
  }

  for (const tier of ['tcp', 'rest'] as const) {
    t.test(`${tier}: two instances on one Redis see each other's messages`, async (t) => {
      const a = await build(t, envFor[tier])
      const b = await build(t, envFor[tier])
      const onB = await listen(b.app.connections.bus(tier), 'cross')
      await a.app.connections.bus(tier).publish('cross', { from: 'a' })
      await eventually(() => onB.received.length === 1, 3000, 'cross-instance delivery')
      t.same(onB.received, [{ from: 'a' }])
    })
  }
})

async function survivesRestart (t: Test, tier: 'tcp' | 'rest', redis: RedisServer, env: EnvInput): Promise<void> {
  const a = await build(t, env)
  const b = await build(t, env)
  const onB = await listen(b.app.connections.bus(tier), 'after-restart')
  await redis.restart()
  // Publish until delivered: the subscriber reconnects with backoff.
  await eventually(async () => {
    await a.app.connections.bus(tier).publish('after-restart', 'ping').catch(() => {})
    return onB.received.length > 0
  }, 15000, `${tier} subscription re-established`)
  t.ok(onB.received.length > 0)
  t.equal(b.app.connections.bus(tier).subscriptions()['after-restart'], 1)
}

t.test('tcp: subscriptions are re-established after Redis restarts', async (t) => {
  const redis = await startRedisServer(t)
  await survivesRestart(t, 'tcp', redis, { ...FAST, REDIS_URL: redis.url })
})

t.test('rest: event streams are resubscribed after they end', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  await survivesRestart(t, 'rest', redis, { ...FAST, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token })
})

t.test('no open handles after close()', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const sockets = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length
  await eventually(() => true)
  const before = sockets()
  const fastify = Fastify()
  await fastify.register(app, { processEnv: false, env: { ...FAST, REDIS_URL: redis.url, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token } })
  await fastify.ready()
  await listen(fastify.connections.bus('tcp'), 'handles')
  await listen(fastify.connections.bus('rest'), 'handles')
  await fastify.inject('/health')
  t.ok(sockets() > before, 'connections were open')
  await fastify.close()
  // fetch's idle keep-alive sockets to the REST endpoint are pooled by Node, not by us: the endpoint
  // closes them after its keep-alive timeout (the bridge's is 5 s), so the wait covers that.
  await eventually(() => sockets() <= before, 6500, `handles back to ${before}`)
  t.ok(sockets() <= before, 'every socket and timer the app opened is gone')
})

t.test('credentials never appear in logs or /health', async (t) => {
  const password = 'pw-9f8e7d6c5b4a'
  const token = 'tok-a1b2c3d4e5f6'
  const redis = await startRedisServer(t, { password })
  const rest = await startRestServer(t, redis, token)
  const scenarios: EnvInput[] = [
    { REDIS_URL: redis.url, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: token },
    { REDIS_URL: `redis://user:${password}x@127.0.0.1:${redis.port}`, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: `${token}x` },
    { REDIS_URL: `https://user:${password}@example.upstash.io`, UPSTASH_REDIS_REST_URL: `rediss://default:${password}@127.0.0.1:1`, UPSTASH_REDIS_REST_TOKEN: token },
    { REDIS_HOST: '127.0.0.1', REDIS_PORT: redis.port, REDIS_PASSWORD: password, KV_REST_API_URL: rest.url, KV_REST_API_TOKEN: token }
  ]
  for (const env of scenarios) {
    const { app, logText } = await build(t, { ...FAST, ...env })
    const bodies = [(await app.inject('/health')).body]
    await redis.stop()
    bodies.push((await app.inject('/health')).body)
    await redis.restart()
    const text = bodies.join('\n') + logText()
    t.notMatch(text, password, `no password in ${Object.keys(env).join(', ')}`)
    t.notMatch(text, token, `no token in ${Object.keys(env).join(', ')}`)
    await app.close()
  }
})

t.test('mounting into a host app', async (t) => {
  t.test('options override process.env', async (t) => {
    const redis = await startRedisServer(t)
    const saved = process.env.REDIS_URL
    process.env.REDIS_URL = 'redis://127.0.0.1:1'
    t.teardown(() => { if (saved === undefined) delete process.env.REDIS_URL; else process.env.REDIS_URL = saved })
    const host = Fastify()
    t.teardown(async () => await host.close())
    await host.register(app, { env: { ...FAST, REDIS_URL: redis.url } })
    await host.ready()
    t.equal(host.connections.tiers.tcp.reachable, true)
  })

  t.test('a default mount adds /health and nothing that trusts a header', async (t) => {
    const host = Fastify()
    t.teardown(async () => await host.close())
    await host.register(app, { processEnv: false })
    await host.ready()
    t.equal((await host.inject('/health')).statusCode, 200)
    const headers = { 'x-user-id': 'admin' }
    for (const [method, url] of [['GET', '/cache/demo/x'], ['GET', '/events/public:x'], ['POST', '/events/public:x'], ['POST', '/jobs/report'], ['GET', '/jobs/report/1'],
      ['POST', '/presence/heartbeat'], ['GET', '/presence/online'], ['DELETE', '/presence'], ['GET', '/presence/admin']] as const) {
      t.equal((await host.inject({ method, url, headers, payload: method === 'POST' ? {} : undefined })).statusCode, 404, `${method} ${url}`)
    }
    t.equal(await host.presence.identify({ headers } as never), undefined, 'no identity without an identify option')
    t.notOk(host.queues.names().includes('report'), 'no demo queue')
  })

  t.test('presence routes come with an identify option, and only with one', async (t) => {
    const host = Fastify()
    t.teardown(async () => await host.close())
    await host.register(app, { processEnv: false, presence: { identify: (request) => request.headers.authorization === 'Bearer s3cret' ? 'u1' : undefined } })
    await host.ready()
    t.equal((await host.inject({ url: '/presence/online', headers: { 'x-user-id': 'u1' } })).statusCode, 200, 'mounted')
    t.equal((await host.inject({ method: 'POST', url: '/presence/heartbeat', headers: { 'x-user-id': 'u1' }, payload: {} })).statusCode, 401, 'the header is not an identity')
    t.equal((await host.inject({ method: 'POST', url: '/presence/heartbeat', headers: { authorization: 'Bearer s3cret' }, payload: {} })).statusCode, 200)
    t.equal((await host.inject('/events/public:x')).statusCode, 404, 'no demo routes')

    const refused = Fastify()
    t.teardown(async () => await refused.close())
    await t.rejects(async () => {
      await refused.register(app, { processEnv: false, presenceRoutes: true })
      await refused.ready()
    }, { code: 'REDIS_TIERS_CONFIG', message: /presenceRoutes needs presence.identify/ })
  })

  t.test('with the demo on, the boot report warns that the demo identity is active', async (t) => {
    const { app: demo, logs } = await build(t, { DEMO_ROUTES: true })
    t.equal((await demo.inject({ url: '/presence/online', headers: { 'x-user-id': 'u1' } })).statusCode, 200)
    t.ok(logs().some((l) => l.level === 40 && /demo identity \(x-user-id header\) is active and must not face the internet/.test(l.msg)))
    const { logs: quiet } = await build(t, {})
    t.notOk(quiet().some((l) => /demo identity/.test(l.msg)), 'no warning without the demo')
  })

  t.test('a router whose maxParamLength is below 128 is warned about when routes with ids are mounted', async (t) => {
    const { logs } = await build(t, { DEMO_ROUTES: true }, { fastify: { routerOptions: { maxParamLength: 100 } } })
    t.ok(logs().some((l) => l.level === 40 && /maxParamLength is 100/.test(l.msg)))
  })

  t.test('a decorator already taken fails boot naming the likely owner', async (t) => {
    const host = Fastify()
    t.teardown(async () => await host.close())
    host.decorate('connections', {} as never)
    await t.rejects(async () => {
      await host.register(app, { processEnv: false })
      await host.ready()
    }, { code: 'REDIS_TIERS_DECORATOR_TAKEN', message: /fastify.connections is already decorated, probably by another connections plugin; register this app in its own encapsulated context/ })
  })

  t.test('feature plugins registered alone answer bad input with their 400, with no @fastify/sensible', async (t) => {
    const host = Fastify()
    t.teardown(async () => await host.close())
    await host.register(connections, { processEnv: false, env: { QUEUES_FALLBACK: 'memory' } })
    await host.register(sse)
    await host.register(presence)
    await host.register(queues)
    host.queues.define('q', async () => null)
    host.post('/publish', async () => await host.sse.publish('bad channel', 1))
    host.get('/online', async () => await host.presence.isOnline('bad user'))
    host.post('/add', async () => await host.queues.add('q', 1, { delay: -1 }))
    host.post('/add-undefined', async () => await host.queues.add('nope', 1))
    await host.ready()
    t.notOk(host.hasDecorator('httpErrors'))
    for (const [method, url] of [['POST', '/publish'], ['GET', '/online'], ['POST', '/add']] as const) {
      const res = await host.inject({ method, url })
      t.equal(res.statusCode, 400, `${method} ${url}`)
      t.match(res.json(), { code: 'REDIS_TIERS_INVALID_INPUT', error: 'Bad Request' })
    }
    t.match((await host.inject({ method: 'POST', url: '/add-undefined' })).json(), { statusCode: 404, code: 'REDIS_TIERS_NOT_FOUND', message: /queue "nope" is not defined/ })
  })

  t.test('routes turned off', async (t) => {
    const host = Fastify()
    t.teardown(async () => await host.close())
    await host.register(app, { processEnv: false, healthRoutes: false })
    await host.ready()
    t.equal((await host.inject('/health')).statusCode, 404)
    t.ok(host.connections)
  })
})

t.test('the routes log an outage 503 quietly and pass any other error to the parent handler', async (t) => {
  const lines: Array<Record<string, unknown>> = []
  const host = Fastify({ logger: { level: 'info', stream: { write: (line: string) => { lines.push(JSON.parse(line) as Record<string, unknown>) } } } })
  t.teardown(async () => await host.close())
  await host.register(async (scope) => {
    quietOutages(scope)
    scope.get('/down', async () => { throw new FeatureUnavailableError('demo', 'tcp is down') })
    scope.get('/bug', async () => { throw new Error('a bug') })
  })
  for (let i = 0; i < 5; i++) t.equal((await host.inject('/down')).statusCode, 503)
  const bug = await host.inject('/bug')
  t.equal(bug.statusCode, 500)
  const outage = lines.filter((l) => l.feature === 'demo')
  t.equal(outage.length, 1, 'one line for five outages')
  t.match(outage[0], { level: 40, msg: 'demo is unavailable: tcp is down' })
  const error = lines.find((l) => l.level === 50)
  t.match(error, { err: { message: 'a bug', stack: /a bug\n\s+at / } }, 'a 500 keeps its stack')
})

// Runs last (top-level tests run in order): everything above, faults included.
t.test('no unhandled rejection escaped during any of the above', async (t) => {
  t.same(unhandled.map(String), [])
})
