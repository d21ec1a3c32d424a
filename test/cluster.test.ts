import t from 'tap'
import type { AddressInfo } from 'node:net'
import { Cluster, Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import { startRedisCluster, type RedisCluster } from '../support/redis-cluster'
import { connectSse } from './helpers/sse-client'
import type { EnvInput } from '../lib/config'

// Redis Cluster, for real: 3 masters started with --cluster-enabled yes and
// joined by redis-cli --cluster create, two app instances on it. Kept in its
// own file: it starts its own cluster (and one with replicas for failover).

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 3000, REDIS_COMMAND_TIMEOUT_MS: 1000, QUEUES_DRAIN_MS: 1000, CACHE_PREFIX: 'cl', SSE_PREFIX: 'cl', PRESENCE_PREFIX: 'cl', QUEUES_PREFIX: 'cl', RATE_LIMIT_PREFIX: 'cl' }

/** Keys under `match` on each master, by port. */
async function keysPerMaster (cluster: RedisCluster, match: string): Promise<number[]> {
  return await Promise.all((await cluster.masters()).map(async (node) => {
    const client = new Redis({ port: node.port, host: '127.0.0.1' })
    try {
      let cursor = '0'
      let count = 0
      do {
        const [next, keys] = await client.scan(cursor, 'MATCH', match, 'COUNT', 1000)
        count += keys.length
        cursor = next
      } while (cursor !== '0')
      return count
    } finally {
      client.disconnect()
    }
  }))
}

async function serve (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

t.test('a node of a 3-master cluster in REDIS_URL', async (t) => {
  const cluster = await startRedisCluster(t, { masters: 3 })
  const env: EnvInput = { ...BASE, REDIS_URL: cluster.url }
  const a = await build(t, env)
  const multi = async (f: FastifyInstance): Promise<void> => {
    f.get('/multi', async (request, reply) => { await f.sse.stream(request, reply, ['public:cluster', 'public:other'], { authorize: () => true }) })
  }
  const b = await build(t, env, { plugins: [multi] })

  t.test('is detected and reported as a cluster, and every feature runs on it', async (t) => {
    const health = (await a.app.inject('/health')).json<{ status: string, tiers: { tcp: Record<string, unknown> } }>()
    t.equal(health.status, 'ok')
    t.match(health.tiers.tcp, { reachable: true, mode: 'cluster', masters: 3, down: [], shardedPubSub: true })
    t.ok(a.logs().some((l) => /^tier tcp: reachable at .* \(REDIS_URL, a Redis Cluster of 3 masters\)/.test(l.msg)), 'the boot report')
    t.same((['cache', 'sse', 'presence', 'queues', 'rate-limit'] as const).map((f) => a.app.features[f].tier), ['tcp', 'tcp', 'tcp', 'tcp', 'tcp'])
  })

  t.test('cache: entries spread over the masters; a write on A is a hit on B; tags and clear() across slots', async (t) => {
    for (let i = 0; i < 60; i++) await a.app.cache.set(`item:${i}`, { i }, { ttl: 60, tags: ['items', `group:${i % 3}`] })
    const spread = await keysPerMaster(cluster, 'cl:c:*')
    t.equal(spread.reduce((x, y) => x + y, 0), 60, '60 entries stored')
    t.ok(spread.filter((n) => n > 0).length >= 2, `on several masters: ${spread.join(', ')}`)
    t.same(await b.app.cache.get('item:7'), { i: 7 })
    t.same(await b.app.cache.get('item:8'), { i: 8 }, 'now in B\'s L1 too')
    await a.app.cache.invalidateTags(['group:1'])
    t.equal(await a.app.cache.get('item:7'), undefined, 'tagged entry gone')
    await eventually(async () => (await b.app.cache.get('item:7')) === undefined, 3000, 'gone from B\'s L1 too')
    t.same(await b.app.cache.get('item:8'), { i: 8 }, 'other tags untouched')
    t.equal((await keysPerMaster(cluster, 'cl:c:*')).reduce((x, y) => x + y, 0), 40)
    await a.app.cache.clear()
    t.same(await keysPerMaster(cluster, 'cl:*:*').then((n) => n.reduce((x, y) => x + y, 0)), 0, 'clear() reached every master')
    t.equal(a.app.cache.stats().redisErrors, 0)
    t.equal(b.app.cache.stats().redisErrors, 0)
  })

  t.test('cached routes: the entry and its route\'s variant count share a slot; stored on A, a hit on B', async (t) => {
    const miss = await a.app.inject('/cache/demo/on-cluster?x=1')
    t.equal(miss.headers['cache-status'], 'redis-tiers; fwd=miss; stored', 'one script wrote both: no CROSSSLOT')
    const hit = await b.app.inject('/cache/demo/on-cluster?x=1')
    t.match(hit.headers['cache-status'], /^redis-tiers; hit; /)
    t.equal(hit.body, miss.body)
    t.equal((await keysPerMaster(cluster, 'cl:v:*')).reduce((x, y) => x + y, 0), 1, 'one variant set')
    t.equal(a.app.cache.stats().redisErrors, 0)
  })

  t.test('sse: published on A, delivered to a client of B, and replayed', async (t) => {
    const url = await serve(b.app)
    const live = await connectSse(t, `${url}/events/public:cluster`)
    await eventually(async () => (await b.app.inject('/health')).json<{ features: { sse: { stats: { clients: number } } } }>().features.sse.stats.clients === 1, 3000, 'subscribed')
    const id = await a.app.sse.publish('public:cluster', { n: 1 })
    const [first] = await live.waitFor(1)
    t.same([first.id, first.data], [id, '{"n":1}'])
    await a.app.sse.publish('public:cluster', { n: 2 })
    const replay = await connectSse(t, `${url}/events/public:cluster?lastEventId=0-0`)
    const replayed = await replay.waitFor(2)
    t.same(replayed.map((e) => e.data), ['{"n":1}', '{"n":2}'])
    // The fan-out went over sharded pub/sub: one shard channel, no classic channel.
    const shard = new Redis(cluster.url)
    t.teardown(() => shard.disconnect())
    t.same(await shard.pubsub('CHANNELS', 'cl:sse:*'), [], 'nothing on classic pub/sub')
    const shardNodes = await Promise.all((await cluster.masters()).map(async (node) => {
      const client = new Redis({ port: node.port, host: '127.0.0.1' })
      try { return (await client.pubsub('SHARDCHANNELS') as string[]).includes('{cl:sse}:events') } finally { client.disconnect() }
    }))
    t.equal(shardNodes.filter(Boolean).length, 1, 'one shard channel, on the node of its slot')
    // A stream of several channels replays each from its own slot.
    await a.app.sse.publish('public:other', { n: 3 })
    const multi = await connectSse(t, `${url}/multi?lastEventId=0-0`)
    t.same((await multi.waitFor(3)).map((e) => e.data).sort(), ['{"n":1}', '{"n":2}', '{"n":3}'])
  })

  t.test('presence: across instances, one round trip per heartbeat', async (t) => {
    await a.app.presence.heartbeat('u0') // the node's first EVALSHA of the script is a NOSCRIPT and an EVAL
    const before = a.app.presence.stats().redisCommands
    await a.app.presence.heartbeat('u1', { status: 'here' })
    t.equal(a.app.presence.stats().redisCommands - before, 1, 'one script, its keys in one slot')
    t.equal(await b.app.presence.isOnline('u1'), true)
    t.match(await b.app.presence.get('u1'), { userId: 'u1', status: 'here' })
    const keys = await keysPerMaster(cluster, '{cl:presence}:*')
    t.equal(keys.filter((n) => n > 0).length, 1, 'every presence key in one slot')
  })

  t.test('presence: coalesced heartbeats reach the other instance in one flush script, every key still in one slot', async (t) => {
    const beat = Date.now()
    const before = a.app.presence.stats().redisCommands
    await a.app.presence.heartbeat('u1', { status: 'here' }) // nothing new: it waits for A's flush (PRESENCE_FLUSH_MS, 5 s)
    t.equal(a.app.presence.stats().redisCommands, before, 'not sent on its own')
    await eventually(async () => ((await b.app.presence.get('u1'))?.lastSeen ?? 0) >= beat, 8000, 'flushed')
    const keys = await keysPerMaster(cluster, '{cl:presence}:*')
    t.equal(keys.filter((n) => n > 0).length, 1, 'every presence key in one slot')
  })

  t.test('rate limit: exactly the limit across A and B, both algorithms, each key\'s windows in one slot', async (t) => {
    for (const algorithm of ['fixed-window', 'sliding-window'] as const) {
      for (let user = 0; user < 12; user++) {
        const allowed: boolean[] = []
        for (let i = 0; i < 5; i++) allowed.push((await (i % 2 === 0 ? a : b).app.rateLimiter.consume(`user:${user}`, { limit: 3, window: '1m', algorithm })).allowed)
        t.same(allowed, [true, true, true, false, false], `${algorithm}, user ${user}`)
      }
    }
    t.equal(a.app.rateLimiter.stats().storeErrors + b.app.rateLimiter.stats().storeErrors, 0, 'no CROSSSLOT or other store error')
    t.ok((await keysPerMaster(cluster, 'cl:rl:{*')).filter((n) => n > 0).length >= 2, 'keys spread over the masters')
  })

  t.test('queues: a job added on A completes on a worker', async (t) => {
    const { id } = await a.app.queues.add('report', { userId: 'u1', steps: 2, stepMs: 10 })
    await eventually(async () => (await b.app.queues.getJob('report', id))?.state === 'completed', 10_000, 'completed')
    t.match(await b.app.queues.getJob('report', id), { result: { userId: 'u1', rows: 200 } })
    t.ok((await keysPerMaster(cluster, '{cl:queues}:*')).filter((n) => n > 0).length === 1, 'BullMQ keys hash-tagged to one slot')
  })
})

t.test('a cluster node whose cluster is not ok is diagnosed, not reported reachable', async (t) => {
  const lonely = await startRedisServer(t, { extraArgs: ['--cluster-enabled', 'yes'] })
  const { app } = await build(t, { ...BASE, REDIS_URL: lonely.url })
  t.match(app.connections.tiers.tcp, { configured: true, reachable: false, lastError: /Redis Cluster state is fail \(0 of 16384 slots served\).*redis-cli --cluster check/ })
  t.equal(app.features.cache.tier, 'memory')
  await t.rejects(build(t, { ...BASE, REDIS_URL: lonely.url, REDIS_CLUSTER_NODES: '127.0.0.1' }), { code: 'REDIS_TIERS_CONFIG', message: /REDIS_CLUSTER_NODES entry "127.0.0.1" is not host:port/ })
})

t.test('failover: a master killed, its replica promoted, the features recover without a restart', async (t) => {
  const cluster = await startRedisCluster(t, { masters: 3, replicas: 1, nodeTimeoutMs: 1000 })
  const { app } = await build(t, { ...BASE, REDIS_URL: cluster.url, CACHE_PREFIX: 'fo', SSE_PREFIX: 'fo', PRESENCE_PREFIX: 'fo', QUEUES_PREFIX: 'fo' })
  for (let i = 0; i < 30; i++) await app.cache.set(`k:${i}`, i)
  const victim = (await cluster.masters()).find((n) => n.port !== cluster.nodes[0].port)
  if (victim === undefined) throw new Error('no master to kill')
  await victim.stop()
  await eventually(async () => (await cluster.masters()).length === 3 && !(await cluster.masters()).includes(victim), 15_000, 'a replica promoted')
  await cluster.healthy()
  await eventually(async () => {
    const writes = await Promise.all(Array.from({ length: 30 }, async (_v, i) => await app.cache.set(`after:${i}`, i).then(() => true)))
    return writes.every(Boolean) && app.cache.stats().redisErrors === 0 ? true : (await app.cache.get('after:0')) === 0
  }, 15_000, 'cache writes land again')
  await eventually(async () => await app.sse.publish('public:fo', { ok: true }).then(() => true, () => false), 10_000, 'sse publishes again')
  await eventually(async () => await app.presence.heartbeat('u9').then(() => true, () => false), 10_000, 'presence answers again')
  const { id } = await app.queues.add('report', { userId: 'u9', steps: 1, stepMs: 1 })
  await eventually(async () => (await app.queues.getJob('report', id))?.state === 'completed', 15_000, 'a queue job completes after the failover')
  const health = (await app.inject('/health')).json<{ tiers: { tcp: { down: string[] } } }>()
  t.ok(health.tiers.tcp.down.includes(`127.0.0.1:${victim.port}`), `/health says which node is down: ${JSON.stringify(health.tiers.tcp.down)}`)
})

t.test('a paused process: commands sent as it resumes, when every node closed its idle connection, are sent once after the reconnect', async (t) => {
  const cluster = await startRedisCluster(t, { masters: 3 })
  for (const node of cluster.nodes) {
    const admin = new Redis({ port: node.port, host: '127.0.0.1' })
    await admin.config('SET', 'timeout', '1') // Redis's shortest idle timeout
    admin.disconnect()
  }
  const a = await build(t, { ...BASE, REDIS_URL: cluster.url })
  const direct = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0].port }])
  t.teardown(() => direct.disconnect())
  for (let round = 1; round <= 2; round++) {
    // The process stands still (as under SIGSTOP) past the idle timeout: each node closes our connections meanwhile.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2500)
    const [id] = await Promise.all([a.app.sse.publish('public:paused', { round }), a.app.presence.heartbeat(`paused-${round}`)])
    t.match(id, /^\d+-\d+$/, `round ${round}: the publish and the heartbeat succeed`)
    t.equal(await direct.xlen('cl:sse:public:paused'), round, `round ${round}: the publish ran once`)
  }
  const lines = a.logs().map((l) => l.msg)
  t.same(lines.filter((m) => /^tier tcp:( still)? down|^feature \w+: \S+ -> /.test(m)), [], 'no outage, no feature moved')
  t.ok(lines.filter((m) => /^tier tcp: the connection was closed .* not an outage$/.test(m)).length >= 2, 'each pause: one line, not an outage')
})
