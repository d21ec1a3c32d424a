import t from 'tap'
import Fastify from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer, freePort } from './helpers/redis-server'
import { TEST_REST_TOKEN } from './helpers/rest-server'
import { startRestBridge } from '../lib/rest-bridge'
import app from '../app'
import type { TierChange } from '../plugins/connections'

// The live tier state: every configured tier is up or down at every moment,
// from the boot probe, the client's own events, /health pings and a
// background re-probe while it is down; nothing unconfigured is ever dialled.

const FAST = { REDIS_CONNECT_TIMEOUT_MS: 500, REDIS_COMMAND_TIMEOUT_MS: 300, REDIS_REPROBE_MAX_MS: 500 }

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => unhandled.push(reason))

t.test('tcp: a Redis that starts 2 s after the app is found by the re-probe, without a restart', async (t) => {
  const port = await freePort()
  const { app, logs } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}` })
  const changes: TierChange[] = []
  app.connections.onTierChange((change) => changes.push(change))
  const before = (await app.inject('/health')).json<{ tiers: { tcp: { reachable: boolean, since: string, lastError: string } } }>()
  t.match(before.tiers.tcp, { reachable: false, lastError: /connection refused/ })
  t.ok(logs().some((l) => /tier tcp: unavailable: .*retrying in the background \(at most every 500 ms\)/.test(l.msg)), 'the boot report says it keeps trying')

  await new Promise((resolve) => setTimeout(resolve, 2000))
  await startRedisServer(t, { port })
  const startedAt = Date.now()
  await eventually(() => app.connections.tiers.tcp.reachable, 3000, 'tcp reachable again')
  t.ok(Date.now() - startedAt <= 500 + 1000, `found ${Date.now() - startedAt} ms after Redis started (re-probe at most every 500 ms)`)
  const health = (await app.inject('/health')).json<{ status: string, tiers: { tcp: { reachable: boolean, since: string, checkedAt: string, lastError: null } }, features: Record<string, { note?: string }> }>()
  t.match(health.tiers.tcp, { reachable: true, lastError: null })
  t.ok(Date.parse(health.tiers.tcp.since) >= startedAt - 50, 'since: when it came up')
  t.ok(Date.now() - Date.parse(health.tiers.tcp.checkedAt) < 1000, 'checkedAt is fresh')
  t.same(changes.map((c) => [c.tier, c.up]), [['tcp', true]], 'one change event')
  t.ok(logs().some((l) => l.level === 30 && l.msg.startsWith('tier tcp: reachable again')), 'one log line')
  t.equal(await app.connections.tcp?.set('k', 'v'), 'OK', 'the client the re-probe made is the one the app uses')
  t.equal(health.status, 'degraded', 'features still on memory: not ok')
  t.match(health.features.cache.note, /tcp is reachable now/)
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
  t.match((await app.inject('/health')).json(), { tiers: { rest: { reachable: true, lastError: null } } })
})

t.test('tcp: killed and restarted, each change is one event and /health says since when', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  const changes: TierChange[] = []
  app.connections.onTierChange((change) => changes.push(change))
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
  app.connections.onTierChange((change) => changes.push(change.up))
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
  t.equal(handles(), before, 'no socket, no re-probe timer')
  t.match(fastify.connections.tiers, { tcp: { configured: false, since: null }, rest: { configured: false, since: null } })
  await fastify.close()
  t.equal(handles(), before)
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

// Runs last (top-level tests run in order).
t.test('no unhandled rejection escaped during any of the above', async (t) => {
  t.same(unhandled.map(String), [])
})
