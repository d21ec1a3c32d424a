import t from 'tap'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { build, eventually } from './helpers/build'
import { freePort, startRedisServer } from '../support/redis-server'
import { TEST_REST_TOKEN } from '../support/rest-server'
import { connectSse } from './helpers/sse-client'
import { startRestBridge, type RestBridge } from '../tools/rest-bridge'
import type { EnvInput } from '../lib/config'
import type { JobContext } from '../lib/queues/backend'
import { RestBullmqClient } from '../lib/queues/rest-client'

// Queues on a REST-only deploy: an app that only has Upstash REST produces
// BullMQ jobs (with BullMQ's own scripts and keys, carried over HTTP), and a
// worker on TCP to the same database runs them. Real redis-server, the
// project's REST bridge in front of it, a stock BullMQ Worker over TCP.

const load = createRequire(__filename)
const BASE = { REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, QUEUES_DRAIN_MS: 1000, QUEUES_PREFIX: 'split', SSE_PREFIX: 'split' }

interface Ran { id: string, data: unknown }

function define (ran: Ran[]): (app: FastifyInstance) => Promise<void> {
  return async (app) => {
    app.queues.define('mail', async (job: JobContext) => {
      ran.push({ id: job.id, data: job.data })
      await job.updateProgress(50)
      return { sent: job.data }
    })
  }
}

t.test("BullMQ's own scripts come from the installed package, and one it never defined fails loudly", async (t) => {
  // What a producer over REST runs: if a BullMQ upgrade renamed or dropped one, this fails.
  const installed = Object.values(load('bullmq/dist/cjs/scripts') as Record<string, { name: string, content: string, keys: number }>)
  const names = installed.map((s) => s.name)
  for (const needed of ['addStandardJob', 'addDelayedJob', 'addPrioritizedJob', 'getCounts', 'getStateV2', 'pause', 'addJobScheduler', 'removeJobScheduler']) {
    t.ok(names.includes(needed), `${needed} is in bullmq ${(load('bullmq/package.json') as { version: string }).version}`)
  }
  t.ok(installed.every((s) => !s.content.startsWith('#!')), 'no script starts with a shebang line (the hex prelude goes in front)')
  const client = new RestBullmqClient({} as never)
  await t.rejects(client.runCommand('addStandardJob:0.0.0', []), /BullMQ command addStandardJob:0.0.0 was never defined/)
  t.throws(() => client.duplicate(), /workers and queue events need a TCP Redis/)
})

t.test("every plain command of BullMQ's client contract answers over REST as ioredis answers it", async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN })
  t.teardown(async () => await bridge.close())
  const { Redis: Upstash } = await import('@upstash/redis')
  let billed = 0
  const rest = new RestBullmqClient(new Upstash({ url: bridge.url, token: TEST_REST_TOKEN, automaticDeserialization: false, enableTelemetry: false }), (n) => { billed += n })
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())
  await direct.hset('h', { a: '1', b: '2' })
  await direct.zadd('z', 1, 'one', 2, 'two')
  await direct.rpush('l', 'x', 'y', 'z')
  await direct.sadd('s', 'm')
  const same = async (what: string, ours: () => Promise<unknown>, theirs: () => Promise<unknown>): Promise<void> => {
    t.same(await ours(), await theirs(), what)
  }
  await same('hgetall', async () => await rest.hgetall('h'), async () => await direct.hgetall('h'))
  await same('hget', async () => await rest.hget('h', 'a'), async () => await direct.hget('h', 'a'))
  await same('hmget', async () => await rest.hmget('h', 'a', 'nope'), async () => await direct.hmget('h', 'a', 'nope'))
  await same('hexists', async () => await rest.hexists('h', 'b'), async () => await direct.hexists('h', 'b'))
  await same('zrange with scores', async () => await rest.zrange('z', 0, -1, { WITHSCORES: true }), async () => await direct.zrange('z', '0', '-1', 'WITHSCORES'))
  await same('zrevrange', async () => await rest.zrevrange('z', 0, -1), async () => await direct.zrevrange('z', 0, -1))
  await same('zcard', async () => await rest.zcard('z'), async () => await direct.zcard('z'))
  await same('zscore', async () => await rest.zscore('z', 'two'), async () => await direct.zscore('z', 'two'))
  await same('lrange', async () => await rest.lrange('l', 0, -1), async () => await direct.lrange('l', 0, -1))
  await same('llen', async () => await rest.llen('l'), async () => await direct.llen('l'))
  await same('lpos', async () => await rest.lpos('l', 'y'), async () => await direct.lpos('l', 'y'))
  await same('smembers', async () => await rest.smembers('s'), async () => await direct.smembers('s'))
  t.equal(await rest.set('k', 'v', { PX: 60_000 }), 'OK')
  t.equal(await rest.set('k2', 'v2', { EX: 60 }), 'OK')
  t.ok(await direct.pttl('k') > 0 && await direct.ttl('k2') > 0, 'set with PX and EX expire')
  t.equal(await rest.get('k'), 'v')
  t.equal(await rest.hset('h', { c: 3 }), 1)
  t.equal(await rest.hdel('h', 'c'), 1)
  t.equal(await rest.ltrim('l', 0, 1), 'OK')
  t.same(await direct.lrange('l', 0, -1), ['x', 'y'])
  const id = await rest.xadd('x', '*', { f: 'v' }, { MAXLEN: 10, approximate: true })
  t.match(id, /^\d+-\d+$/)
  t.equal(await rest.xtrim('x', 'MAXLEN', 0), 1)
  t.equal(await rest.del('k', 'k2'), 2)
  const [, keys] = await rest.scan('0', { MATCH: '*', COUNT: 100 })
  t.same([...keys].sort(), ['h', 'l', 's', 'x', 'z'])
  const streamed: string[] = []
  for await (const page of rest.scanStream({ match: '[hl]', count: 1 })) streamed.push(...(page as string[]))
  t.same(streamed.sort(), ['h', 'l'], 'scanStream pages through SCAN')
  t.match(await rest.info(), /redis_version/)
  t.same([await rest.clientSetName(), await rest.clientList(), await rest.clientInfo()], ['OK', '', ''], 'no connection to name over HTTP')
  await t.rejects(rest.xread(), /queue events need a TCP Redis/)
  await t.rejects(rest.bzpopmin(), /workers need a TCP Redis/)
  const piped = await rest.pipeline().hgetall('h').hset('h2', { a: 1 }).hscan('h', '0', { COUNT: 10 }).smembers('s').sscan('s', '0', { COUNT: 10 }).zrange('z', 0, 0).lrange('l', 0, 0).llen('l').del('h2').exec()
  t.same(piped?.map(([err]) => err), Array(9).fill(null), 'a pipeline of the contract\'s commands')
  t.same(piped?.[0][1], { a: '1', b: '2' }, 'HGETALL in a pipeline is an object, as from ioredis')
  t.ok(billed >= 30, `every request was metered (${billed} commands)`)
  t.equal(await rest.quit(), 'OK')
  t.equal(rest.status, 'end')
})

t.test('a REST-only app produces BullMQ jobs that a TCP worker runs', async (t) => {
  const redis = await startRedisServer(t)
  const port = await freePort()
  let bridge: RestBridge = await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN, port })
  t.teardown(async () => await bridge.close())
  const requests = (): number => bridge.requests.command + bridge.requests.pipeline + bridge.requests.multiExec
  const restEnv: EnvInput = { ...BASE, UPSTASH_REDIS_REST_URL: bridge.url, UPSTASH_REDIS_REST_TOKEN: TEST_REST_TOKEN }
  const ranByProducer: Ran[] = []
  // Any channel may be watched here: the test is about delivery, not authorization.
  const watch = async (f: FastifyInstance): Promise<void> => {
    f.get<{ Params: { channel: string } }>('/events-test/:channel', async (request, reply) => { await f.sse.stream(request, reply, [request.params.channel], { authorize: () => true }) })
  }
  const producer = await build(t, restEnv, { plugins: [define(ranByProducer), watch] })
  const { app } = producer
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())

  t.test('it says what it is: a producer on rest, and where workers run', async (t) => {
    t.match(app.features.queues, { status: 'active', tier: 'rest', reason: /producing only: workers need a TCP Redis; run `npm run worker` with REDIS_URL pointing at the same database/ })
    t.equal(app.queues.workers, false)
    t.ok(producer.logs().some((l) => /^feature queues: active on rest \(.*producing only/.test(l.msg)), 'the boot report')
    t.match((await app.inject('/health')).json(), { features: { queues: { tier: 'rest', workers: false } } })
  })

  const ids: string[] = []
  t.test('jobs added while no worker runs wait; each add is one HTTP request', async (t) => {
    await app.queues.add('mail', { warm: true }) // the first add of a process also sends its script once
    const before = requests()
    for (let i = 0; i < 5; i++) ids.push((await app.queues.add('mail', { n: i })).id)
    t.equal(requests() - before, 5, 'one HTTP request per add')
    const job = await app.queues.getJob('mail', ids[0])
    t.match(job, { id: ids[0], state: 'waiting', data: { n: 0 }, attemptsMade: 0 })
    t.match(await app.queues.counts('mail'), { waiting: 6, active: 0, completed: 0 })
  })

  t.test('the same jobId twice is one job', async (t) => {
    const first = await app.queues.add('mail', { once: 1 }, { jobId: 'welcome-u1' })
    const again = await app.queues.add('mail', { once: 2 }, { jobId: 'welcome-u1' })
    t.equal(first.id, 'welcome-u1')
    t.equal(again.id, 'welcome-u1')
    t.match(await app.queues.getJob('mail', 'welcome-u1'), { data: { once: 1 } })
  })

  t.test('addBulk of 100 is one HTTP request', async (t) => {
    await app.queues.addBulk('mail', [{ data: { warm: 'bulk' } }]) // loads the script for pipelines once
    const before = requests()
    const added = await app.queues.addBulk('mail', Array.from({ length: 100 }, (_v, i) => ({ data: { bulk: i } })))
    t.equal(added.length, 100)
    t.equal(requests() - before, 1)
    t.equal(bridge.requests.pipeline > 0, true)
  })

  t.test('a Redis that lost its scripts (restart, SCRIPT FLUSH): add and addBulk send them again and work', async (t) => {
    const billed = (): number => app.connections.usage.entries().find((e) => e.feature === 'queues')?.commands ?? 0
    await direct.script('FLUSH')
    const before = billed()
    const one = await app.queues.add('mail', { after: 'flush' })
    t.equal(billed() - before, 1 + 9, 'the EVALSHA answered NOSCRIPT is billed as one command, then the script as usual')
    t.match(await app.queues.getJob('mail', one.id), { state: 'waiting', data: { after: 'flush' } })
    await direct.script('FLUSH')
    const bulk = await app.queues.addBulk('mail', [{ data: { flushed: 1 } }, { data: { flushed: 2 } }])
    t.equal(bulk.length, 2)
    t.match(await app.queues.getJob('mail', bulk[1].id), { data: { flushed: 2 } })
  })

  t.test('delay and priority are written as BullMQ writes them', async (t) => {
    const delayed = await app.queues.add('mail', { later: true }, { delay: 60_000 })
    t.match(await app.queues.getJob('mail', delayed.id), { state: 'delayed' })
    const urgent = await app.queues.add('mail', { urgent: true }, { priority: 1 })
    t.match(await app.queues.getJob('mail', urgent.id), { state: 'prioritized' })
    await app.queues.add('mail', { after: 'delay' }, { delay: 300 })
  })

  t.test('pause and resume over REST set BullMQ\'s own flag', async (t) => {
    await app.queues.pause('mail')
    t.equal(await direct.hget('split:queues:mail:meta', 'paused'), '1')
    await app.queues.resume('mail')
    t.equal(await direct.hget('split:queues:mail:meta', 'paused'), null)
  })

  t.test('a schedule created over REST', async (t) => {
    const schedule = await app.queues.schedule('mail', { id: 'digest', every: 400 }, { digest: true })
    t.match(schedule, { id: 'digest', every: 400 })
    t.match(await app.queues.schedules('mail'), [{ id: 'digest', every: 400 }])
  })

  t.test('a worker started later on TCP runs each job once, and progress reaches the REST app\'s SSE clients', async (t) => {
    await app.listen({ port: 0, host: '127.0.0.1' })
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
    const stream = await connectSse(t, `${url}/events-test/jobs:mail:${ids[1]}?lastEventId=0-0`)
    t.equal(stream.status, 200)
    const ran: Ran[] = []
    const worker = await build(t, { ...BASE, REDIS_URL: redis.url }, { plugins: [define(ran)] })
    t.equal(worker.app.queues.workers, true)
    const watched = (await app.queues.getJob('mail', ids[1]))?.state
    t.ok(watched === 'waiting' || watched === 'active' || watched === 'completed')
    await eventually(async () => (await app.queues.getJob('mail', ids[4]))?.state === 'completed', 10_000, 'the jobs added while no worker ran')
    t.match(await app.queues.getJob('mail', ids[4]), { state: 'completed', result: { sent: { n: 4 } }, attemptsMade: 1, progress: 50 })
    await eventually(() => ran.filter((r) => (r.data as { bulk?: number }).bulk !== undefined).length === 100, 10_000, 'the bulk')
    await eventually(() => ran.some((r) => (r.data as { after?: string }).after === 'delay'), 5000, 'the delayed job')
    await eventually(() => ran.some((r) => (r.data as { digest?: boolean }).digest === true), 5000, 'the schedule fired on the worker')
    const byId = new Map<string, number>()
    for (const r of ran) byId.set(r.id, (byId.get(r.id) ?? 0) + 1)
    t.ok([...byId.values()].every((n) => n === 1), 'every job ran once')
    t.equal(ranByProducer.length, 0, 'nothing ran on the producer')
    t.equal(ran.filter((r) => (r.data as { once?: number }).once !== undefined).length, 1, 'the deduplicated job ran once')
    const events = await stream.waitFor(2, 10_000)
    t.same(events.slice(0, 2).map((e) => e.event), ['progress', 'completed'], 'the worker\'s events, through the REST app\'s sse')
    t.match(JSON.parse(events[1].data), { id: ids[1], queue: 'mail', result: { sent: { n: 1 } } })
    await app.queues.unschedule('mail', 'digest')
  })

  t.test('REST endpoint killed: add answers 503 fast with the reason; back: add works, and a retried jobId is still one job', async (t) => {
    await bridge.close()
    const started = Date.now()
    await t.rejects(app.queues.add('mail', { during: 'outage' }, { jobId: 'retry-me' }), { statusCode: 503, message: /^queues is unavailable: / })
    t.ok(Date.now() - started < 1500, `answered in ${Date.now() - started} ms`)
    bridge = await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN, port })
    await eventually(async () => await app.queues.add('mail', { after: 'outage' }, { jobId: 'retry-me' }).then(() => true, () => false), 5000, 'add works again')
    await app.queues.add('mail', { again: true }, { jobId: 'retry-me' })
    t.match(await direct.hget('split:queues:mail:retry-me', 'data'), /"after":"outage"/)
    const withId = await direct.keys('split:queues:mail:retry-me*')
    t.equal(withId.filter((k) => k === 'split:queues:mail:retry-me').length, 1)
  })
})

t.test('rest: a queue whose set-up got no answer (the process frozen while it booted) is set up again by the next call', async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN })
  t.teardown(async () => await bridge.close())
  t.teardown(() => redis.resume())
  const { app } = await build(t, { ...BASE, UPSTASH_REDIS_REST_URL: bridge.url, UPSTASH_REDIS_REST_TOKEN: TEST_REST_TOKEN, REDIS_COMMAND_TIMEOUT_MS: 200, QUEUES_TIMEOUT_MS: 200, QUEUES_PREFIX: 'rest-setup' }, {
    plugins: [async (app: FastifyInstance) => {
      redis.pause() // BullMQ's version check, sent over REST as the queue is made, gets no answer
      app.queues.define('late', async () => null)
      await new Promise((resolve) => setTimeout(resolve, 600)) // past its deadline: the check failed
      redis.resume()
    }]
  })
  const { id } = await app.queues.add('late', { n: 1 })
  t.match(await app.queues.getJob('late', id), { state: 'waiting', data: { n: 1 } }, 'added, and readable')
})
