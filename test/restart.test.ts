import t, { type Test } from 'tap'
import type { AddressInfo } from 'node:net'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { build, eventually, type Built } from './helpers/build'
import { startRedisServer, type RedisServer, type RedisServerOptions } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { connectSse } from './helpers/sse-client'
import type { EnvInput } from '../lib/config'
import type { RedisRestart } from '../plugins/connections'
import type { PresenceEvent } from '../lib/presence/store'

// A Redis restarted without persistence (SIGKILL, then started again on the
// same port with no AOF and no RDB, as the harness runs it) comes back empty:
// the app notices it once and each feature recovers what it holds.

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, REDIS_HOLD_DOWN_MS: 100, QUEUES_DRAIN_MS: 500 }
const USER = { 'x-user-id': 'u1' }

interface Setup extends Built { redis: RedisServer, url: string, restarts: RedisRestart[] }

async function setup (t: Test, env: EnvInput = {}, redisOptions: RedisServerOptions = {}): Promise<Setup> {
  const redis = await startRedisServer(t, redisOptions)
  const built = await build(t, { ...BASE, REDIS_URL: redis.url, ...env })
  const restarts: RedisRestart[] = []
  built.app.connections.on('restarted', (restart) => restarts.push(restart))
  await built.app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = built.app.server.address() as AddressInfo
  return { ...built, redis, url: `http://127.0.0.1:${port}`, restarts }
}

/** SIGKILL and start again empty; resolves once the app has noticed. */
async function restartEmpty (s: Setup): Promise<void> {
  const before = s.restarts.length
  await s.redis.restart()
  await eventually(() => s.restarts.length > before, 10_000, 'the restart noticed')
}

t.test('a reconnect to the same Redis is not a restart; a restart that lost the data is one event and one warn line', async (t) => {
  const s = await setup(t, { QUEUES_ENABLED: false })
  const admin = new Redis(s.redis.url)
  t.teardown(() => admin.disconnect())
  const tcp = s.app.connections.tcp as unknown as Redis
  const reconnected = once(tcp, 'ready')
  await admin.call('client', 'kill', 'type', 'normal') // every connection but this one: the app reconnects to the same server
  await reconnected
  await tcp.ping() // sent after the reconnect's check, on the same connection: answered after it
  t.equal(s.restarts.length, 0, 'the same server, its data kept')
  await restartEmpty(s)
  t.equal(s.restarts.length, 1, 'only the restart counts')
  t.match(s.restarts[0], { tier: 'tcp', at: String, reason: /came back empty \(its run_id changed and the data it held is gone\)/ })
  t.equal(s.logs().filter((l) => l.level === 40 && /tier tcp: Redis on tcp came back empty/.test(l.msg)).length, 1)
})

t.test('rest: a Redis found empty when the tier is back after being down is a restart', async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const { app } = await build(t, { ...BASE, QUEUES_ENABLED: false, UPSTASH_REDIS_REST_URL: bridge.url, UPSTASH_REDIS_REST_TOKEN: bridge.token, REDIS_REPROBE_MAX_MS: 250 })
  const restarts: RedisRestart[] = []
  app.connections.on('restarted', (restart) => restarts.push(restart))
  await redis.stop()
  await app.connections.health() // rest has no connection events: a ping sees it down
  t.equal(app.connections.tiers.rest.reachable, false)
  await redis.restart()
  await eventually(() => restarts.length > 0, 10_000, 'the restart noticed')
  t.match(restarts, [{ tier: 'rest', reason: /Redis on rest came back empty \(the data it held is gone\)/ }])
})

t.test('cache: L1 copies are dropped when Redis comes back empty', async (t) => {
  const s = await setup(t, { QUEUES_ENABLED: false, CACHE_PREFIX: 'restart-cache', CACHE_L1_TTL: '60s' })
  await s.app.cache.set('greeting', 'hello', { ttl: 60_000 })
  t.equal(await s.app.cache.get('greeting'), 'hello')
  t.equal(s.app.cache.stats().l1Entries, 1)
  await restartEmpty(s)
  t.equal(s.app.cache.stats().l1Entries, 0)
  t.equal(await s.app.cache.get('greeting'), undefined, 'a miss, as on every other instance')
})

t.test('sse: a resume with an id from the lost history gets event: reset; one from the new history does not', async (t) => {
  const s = await setup(t, { QUEUES_ENABLED: false, SSE_PREFIX: 'restart-sse' })
  const old = await s.app.sse.publish('public:news', { n: 1 })
  await restartEmpty(s)
  const fresh = await s.app.sse.publish('public:news', { n: 2 })
  const fromOld = await connectSse(t, `${s.url}/events/public:news`, { 'last-event-id': old })
  await fromOld.waitFor(2)
  t.same(fromOld.events.map((e) => e.event), ['reset', 'message'], 'reset, then what the new history holds')
  t.equal(fromOld.events[1].id, fresh)
  const fromNew = await connectSse(t, `${s.url}/events/public:news`, { 'last-event-id': fresh })
  const later = await s.app.sse.publish('public:news', { n: 3 })
  await fromNew.waitFor(1)
  t.same(fromNew.events.map((e) => [e.event, e.id]), [['message', later]], 'no reset: nothing it missed was lost')
})

t.test('presence: users seen within the TTL are written back; those still heartbeating never leave, one who stopped gets leave', async (t) => {
  const s = await setup(t, { QUEUES_ENABLED: false, PRESENCE_TTL_MS: 3000, PRESENCE_PREFIX: 'restart-presence' })
  const events: PresenceEvent[] = []
  s.app.presence.on('leave', (e) => events.push(e))
  const watcher = await connectSse(t, `${s.url}/events/public:presence`, USER)
  await s.app.presence.heartbeat('ada')
  await s.app.presence.heartbeat('bob') // and never again
  let beating = true
  t.teardown(() => { beating = false })
  void (async () => {
    // ada's client keeps heartbeating, as a browser tab does; failures while Redis is away are expected.
    while (beating) {
      await new Promise((resolve) => setTimeout(resolve, 500))
      if (beating) await s.app.presence.heartbeat('ada').catch(() => {})
    }
  })()
  await restartEmpty(s)
  await eventually(async () => await s.app.presence.isOnline('bob').catch(() => false), 5000, 'bob written back')
  await eventually(() => events.some((e) => e.userId === 'bob'), 6000, 'bob leaves once his TTL has passed')
  await eventually(() => watcher.events.some((e) => e.event === 'leave' && /"bob"/.test(e.data)), 3000, 'the leave reaches public:presence')
  t.same(events.map((e) => e.userId), ['bob'], 'ada never left')
  t.equal(await s.app.presence.isOnline('ada'), true)
  t.notOk(watcher.events.some((e) => e.event === 'leave' && /"ada"/.test(e.data)))
})

t.test('queues: a job running when Redis restarted empty is reported failed to its watchers, counted and logged', async (t) => {
  const s = await setup(t, { SSE_PREFIX: 'restart-jobs' })
  const started = await fetch(`${s.url}/jobs/report`, { method: 'POST', headers: { ...USER, 'content-type': 'application/json' }, body: JSON.stringify({ steps: 10, stepMs: 150 }) })
  const { id, events } = await started.json() as { id: string, events: string }
  const watcher = await connectSse(t, `${s.url}${events}?lastEventId=0-0`, USER)
  await eventually(() => watcher.events.filter((e) => e.event === 'progress').length >= 2, 5000, 'progress 2')
  await restartEmpty(s)
  await eventually(() => watcher.events.some((e) => e.event === 'failed'), 5000, 'the failed event')
  const failed = watcher.events.filter((e) => e.event === 'failed')
  t.equal(failed.length, 1)
  t.match(JSON.parse(failed[0].data), { id, queue: 'report', final: true, reason: /Redis restarted without its data/ })
  t.notOk(watcher.events.some((e) => e.event === 'completed'), 'nothing claims it completed')
  t.equal(s.app.queues.stats().failed, 1)
  t.equal(s.logs().filter((l) => /queues: Redis on tcp came back empty: 1 job\(s\) running here reported failed \(report\/1\)/.test(l.msg)).length, 1)
})

t.test('queues on a Redis without persistence: a warning at boot and in /health', async (t) => {
  const s = await setup(t)
  t.ok(s.logs().some((l) => l.level === 40 && /queues: .*keeps no copy of its data \(appendonly no, no RDB save\)/.test(l.msg)), 'the boot warning')
  const health = await s.app.inject('/health')
  t.match(health.json(), { features: { queues: { warning: /appendonly no/ } } })
})

t.test('queues on a Redis with an append-only file: no persistence warning', async (t) => {
  const s = await setup(t, {}, { appendonly: true })
  t.notOk(s.logs().some((l) => /keeps no copy of its data/.test(l.msg)))
  const health = await s.app.inject('/health')
  t.equal(health.json<{ features: { queues: Record<string, unknown> } }>().features.queues.warning, undefined)
})
