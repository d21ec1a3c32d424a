import t, { type Test } from 'tap'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { build, eventually, type Built } from './helpers/build'
import { startRedisServer, type RedisServer } from '../support/redis-server'
import { connectSse } from './helpers/sse-client'
import type { EnvInput } from '../lib/config'
import type { DefineOptions } from '../plugins/queues'
import type { JobContext } from '../lib/queues/backend'

// fastify.queues: one spec on tcp (BullMQ on a real redis-server) and on the
// memory fallback, then instances, schedules, close and outages on tcp, and
// the tiers where queues are skipped.

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, QUEUES_DRAIN_MS: 2000 }
const USER = { 'x-user-id': 'u1' }

let namespaces = 0

type Define = (app: FastifyInstance) => void

/** The app with extra queues defined before it is ready (workers start on ready). */
async function withQueues (t: Test, env: EnvInput, ...defines: Define[]): Promise<Built> {
  return await build(t, env, { plugins: defines.map((define) => async (app: FastifyInstance) => { define(app) }) })
}

function queue<Data, Result> (name: string, processor: (job: JobContext<Data>) => Promise<Result>, opts: DefineOptions = {}): Define {
  return (app) => app.queues.define<Data, Result>(name, processor, opts)
}

async function finished (app: FastifyInstance, name: string, id: string, ms = 10_000): Promise<NonNullable<Awaited<ReturnType<FastifyInstance['queues']['getJob']>>>> {
  let job = await app.queues.getJob(name, id)
  await eventually(async () => {
    job = await app.queues.getJob(name, id)
    return job?.state === 'completed' || job?.state === 'failed'
  }, ms, `job ${name}/${id} finished (last state: ${job?.state ?? 'none'})`)
  if (job === null) throw new Error('job vanished')
  return job
}

function gate (): { promise: Promise<void>, open: () => void } {
  let open = (): void => {}
  const promise = new Promise<void>((resolve) => { open = resolve })
  return { promise, open }
}

function spec (t: Test, tier: 'tcp' | 'memory', envFor: () => EnvInput): void {
  t.test(`${tier}: a job runs once; its result, progress and state are readable`, async (t) => {
    const runs: number[] = []
    const { app } = await withQueues(t, envFor(), queue<{ n: number }, number>('double', async (job) => {
      runs.push(job.data.n)
      await job.updateProgress(50)
      return job.data.n * 2
    }))
    t.equal(app.queues.available, true)
    t.equal(app.queues.tier, tier)
    const { id } = await app.queues.add('double', { n: 21 })
    const job = await finished(app, 'double', id)
    t.match(job, { id, queue: 'double', state: 'completed', result: 42, progress: 50, failedReason: null, data: { n: 21 }, attemptsMade: 1 })
    t.same(runs, [21])
    t.match(await app.queues.counts('double'), { completed: 1, waiting: 0, active: 0, failed: 0 })
    const data = { n: 1, at: new Date(0) }
    const copy = await app.queues.add('double', data)
    data.n = 2 // as in Redis, the job holds what was added, as JSON
    t.same((await finished(app, 'double', copy.id)).data, { n: 1, at: '1970-01-01T00:00:00.000Z' })
    t.equal(await app.queues.getJob('double', '999'), null)
  })

  t.test(`${tier}: a failing job is retried with backoff, then fails with its reason`, async (t) => {
    const attempts: number[] = []
    const { app } = await withQueues(t, envFor(), queue('flaky', async () => {
      attempts.push(Date.now())
      throw new Error(`boom ${attempts.length}`)
    }, { attempts: 3, backoff: { type: 'fixed', delay: 100 } }))
    const { id } = await app.queues.add('flaky', null)
    const job = await finished(app, 'flaky', id)
    t.match(job, { state: 'failed', failedReason: 'boom 3', attemptsMade: 3 })
    t.equal(attempts.length, 3)
    for (let i = 1; i < attempts.length; i++) t.ok(attempts[i] - attempts[i - 1] >= 90, `retry ${i} waited for the backoff (${attempts[i] - attempts[i - 1]} ms)`)
    t.match(app.queues.stats(), { failed: 1 })
  })

  t.test(`${tier}: at most \`concurrency\` jobs run at once`, async (t) => {
    const release = gate()
    let running = 0
    let peak = 0
    const { app } = await withQueues(t, envFor(), queue('wide', async () => {
      running++
      peak = Math.max(peak, running)
      await release.promise
      running--
    }, { concurrency: 3 }))
    const ids = await app.queues.addBulk('wide', Array.from({ length: 9 }, (_v, i) => ({ data: i })))
    t.equal(ids.length, 9)
    await eventually(() => running === 3, 5000, 'three jobs running')
    release.open()
    for (const { id } of ids) await finished(app, 'wide', id)
    t.equal(peak, 3)
  })

  t.test(`${tier}: a paused queue holds its jobs until resumed`, async (t) => {
    const ran: string[] = []
    const record = (name: string): Define => queue(name, async () => { ran.push(name) })
    const { app } = await withQueues(t, envFor(), record('held'), record('free'))
    await app.queues.pause('held')
    const held = await app.queues.add('held', 1)
    const free = await app.queues.add('free', 1)
    await finished(app, 'free', free.id)
    t.equal((await app.queues.getJob('held', held.id))?.state, 'waiting', 'the paused queue did not run its job')
    t.same(ran, ['free'])
    await app.queues.resume('held')
    await finished(app, 'held', held.id)
    t.same(ran, ['free', 'held'])
  })

  t.test(`${tier}: removeOnComplete keeps only the newest finished jobs`, async (t) => {
    let runs = 0
    const { app } = await withQueues(t, envFor(), queue('trim', async () => { runs++ }, { removeOnComplete: 2 }))
    const ids = []
    for (let i = 0; i < 4; i++) ids.push((await app.queues.add('trim', i)).id) // one by one: the order of completion is the order of adding
    await eventually(async () => runs === 4 && (await app.queues.counts('trim')).completed === 2, 5000, 'four runs, two kept')
    t.equal(await app.queues.getJob('trim', ids[0]), null, 'the oldest is gone')
    t.match(await app.queues.getJob('trim', ids[3]), { state: 'completed' })
  })

  t.test(`${tier}: a jobId that exists returns the existing job`, async (t) => {
    const { app } = await withQueues(t, { ...envFor(), QUEUES_WORKERS: false }, queue('orders', async () => {}))
    const first = await app.queues.add('orders', { order: 1 }, { jobId: 'order-1' })
    const second = await app.queues.add('orders', { order: 1 }, { jobId: 'order-1' })
    t.same([first.id, second.id], ['order-1', 'order-1'])
    t.equal((await app.queues.counts('orders')).waiting, 1)
  })

  t.test(`${tier}: schedule is an upsert by id and unschedule removes it`, async (t) => {
    const { app } = await withQueues(t, { ...envFor(), QUEUES_WORKERS: false }, queue('digest', async () => {}))
    await app.queues.schedule('digest', { every: 60_000 }, { kind: 'daily' })
    const again = await app.queues.schedule('digest', { every: 120_000 }, { kind: 'daily' })
    t.match(again, { id: 'digest', every: 120_000 })
    await app.queues.schedule('digest', { id: 'nightly', cron: '0 3 * * *', tz: 'Europe/Berlin' })
    const list = await app.queues.schedules('digest')
    t.same(list.map((s) => s.id).sort(), ['digest', 'nightly'])
    t.match(list.find((s) => s.id === 'digest'), { every: 120_000 })
    t.match(list.find((s) => s.id === 'nightly'), { cron: '0 3 * * *', next: Number })
    t.equal(await app.queues.unschedule('digest'), true)
    t.equal(await app.queues.unschedule('digest'), false)
    t.same((await app.queues.schedules('digest')).map((s) => s.id), ['nightly'])
  })

  t.test(`${tier}: bad input is a 400, an undefined queue a clear error`, async (t) => {
    const { app } = await withQueues(t, { ...envFor(), QUEUES_WORKERS: false }, queue('strict', async () => {}))
    await t.rejects(app.queues.add('nope', 1), /queue "nope" is not defined; call fastify.queues.define/)
    await t.rejects(app.queues.add('strict', 1, { jobId: '42' }), { statusCode: 400, message: /jobId/ })
    await t.rejects(app.queues.add('strict', 1, { delay: -1 }), { statusCode: 400, message: /delay/ })
    await t.rejects(app.queues.add('strict', 1, { attempts: 0 }), { statusCode: 400, message: /attempts/ })
    await t.rejects(app.queues.add('strict', undefined), { statusCode: 400, message: /data is required/ })
    await t.rejects(app.queues.addBulk('strict', []), { statusCode: 400, message: /1-10000 jobs/ })
    await t.rejects(app.queues.schedule('strict', { every: 10, cron: '* * * * *' }), { statusCode: 400, message: /either/ })
    t.throws(() => app.queues.define('bad:name', async () => {}), /invalid queue name/)
    t.throws(() => app.queues.define('strict', async () => {}), /already defined/)
    t.throws(() => app.queues.define('other', async () => {}, { concurrency: 0 }), /concurrency/)
    const noUser = await app.inject({ method: 'POST', url: '/jobs/report', payload: {} })
    t.equal(noUser.statusCode, 401)
    const badBody = await app.inject({ method: 'POST', url: '/jobs/report', headers: USER, payload: { steps: 500 } })
    t.equal(badBody.statusCode, 400)
  })

  t.test(`${tier}: a report job's progress and result arrive over a real SSE stream`, async (t) => {
    const { app } = await build(t, envFor())
    await app.listen({ port: 0, host: '127.0.0.1' })
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
    const started = await app.inject({ method: 'POST', url: '/jobs/report', headers: USER, payload: { steps: 3, stepMs: 20 } })
    t.equal(started.statusCode, 202)
    const { id, channel, events } = started.json<{ id: string, channel: string, events: string }>()
    t.equal(channel, `user:u1:jobs:report:${id}`)
    // lastEventId 0-0 replays whatever was published before the stream opened: no race with the job.
    const stream = await connectSse(t, `${url}${events}?lastEventId=0-0`, USER)
    t.equal(stream.status, 200)
    const received = await stream.waitFor(4, 10_000)
    t.same(received.map((e) => e.event), ['progress', 'progress', 'progress', 'completed'])
    t.same(received.slice(0, 3).map((e) => (JSON.parse(e.data) as { progress: { percent: number } }).progress.percent), [33, 67, 100])
    t.match(JSON.parse(received[3].data), { id, queue: 'report', result: { userId: 'u1', rows: 300 } })
    const status = await app.inject({ url: `/jobs/report/${id}`, headers: USER })
    t.match(status.json(), { id, state: 'completed', progress: { percent: 100 }, result: { rows: 300 } })
    t.equal((await app.inject({ url: `/jobs/report/${id}`, headers: { 'x-user-id': 'u2' } })).statusCode, 404, "another user's job is not found")
    const watchOther = await connectSse(t, `${url}${events}`, { 'x-user-id': 'u2' })
    t.equal(watchOther.status, 403, "another user's job channel is forbidden")
  })

  t.test(`${tier}: each failed attempt is an sse event; the last one says final`, async (t) => {
    const { app } = await withQueues(t, envFor(), queue('fails', async () => { throw new Error('no paper') }, {
      attempts: 2,
      backoff: 10,
      progressChannel: (name, job) => `public:jobs:${name}:${job.id}`
    }))
    await app.listen({ port: 0, host: '127.0.0.1' })
    const { id } = await app.queues.add('fails', null)
    const stream = await connectSse(t, `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/events/public:jobs:fails:${id}?lastEventId=0-0`)
    const received = await stream.waitFor(2, 10_000)
    t.same(received.map((e) => [e.event, JSON.parse(e.data) as unknown]), [
      ['failed', { id, queue: 'fails', reason: 'no paper', attemptsMade: 1, final: false }],
      ['failed', { id, queue: 'fails', reason: 'no paper', attemptsMade: 2, final: true }]
    ])
  })
}

t.test('tcp', async (t) => {
  const redis = await startRedisServer(t)
  spec(t, 'tcp', () => ({ ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: `qspec${++namespaces}`, SSE_PREFIX: `qsse${namespaces}` }))
})

t.test('memory fallback', async (t) => {
  spec(t, 'memory', () => ({ ...BASE, QUEUES_FALLBACK: 'memory' }))
})

t.test('tcp: schedules make one scheduler and one next job across instances and restarts', async (t) => {
  const redis = await startRedisServer(t)
  const env = { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'sched', QUEUES_WORKERS: false }
  const tick = queue('tick', async () => {})
  const boot = async (): Promise<Built> => {
    const built = await withQueues(t, env, tick)
    await built.app.queues.schedule('tick', { id: 'every-minute', every: 60_000 }, { from: 'boot' })
    return built
  }
  const a = await boot()
  const b = await boot()
  const pending = async (app: FastifyInstance): Promise<number> => {
    const counts = await app.queues.counts('tick')
    return counts.waiting + counts.delayed
  }
  t.equal((await a.app.queues.schedules('tick')).length, 1)
  t.equal(await pending(b.app), 1, 'two instances: one next job')
  await a.app.close()
  await b.app.close()
  const c = await boot()
  t.equal((await c.app.queues.schedules('tick')).length, 1)
  t.equal(await pending(c.app), 1, 'after a restart: still one next job')
})

t.test('tcp: a producer-only instance adds jobs, a worker instance runs them', async (t) => {
  const redis = await startRedisServer(t)
  const env = { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'split' }
  const producer = await withQueues(t, { ...env, QUEUES_WORKERS: false }, queue('work', async () => 'by the producer'))
  t.equal(producer.app.queues.workers, false)
  const { id } = await producer.app.queues.add('work', { x: 1 })
  t.equal((await producer.app.queues.getJob('work', id))?.state, 'waiting', 'no worker here')
  await withQueues(t, env, queue('work', async () => 'by the worker'))
  const job = await finished(producer.app, 'work', id)
  t.equal(job.result, 'by the worker')
  t.match((await producer.app.inject('/health')).json<{ features: Record<string, unknown> }>().features.queues, { status: 'active', workers: false, counts: { work: { completed: 1 } } })
})

t.test('tcp: close() lets an active job finish, but no longer than QUEUES_DRAIN_MS', async (t) => {
  const redis = await startRedisServer(t)
  const env = { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'drain' }
  const started = gate()
  const { app } = await withQueues(t, env, queue('slow', async () => {
    started.open()
    await new Promise((resolve) => setTimeout(resolve, 400))
    return 'finished'
  }))
  const { id } = await app.queues.add('slow', null)
  await started.promise
  const closing = Date.now()
  await app.close()
  t.ok(Date.now() - closing >= 300, `close waited for the job (${Date.now() - closing} ms)`)
  const observer = await withQueues(t, { ...env, QUEUES_WORKERS: false }, queue('slow', async () => 'unused'))
  t.match(await observer.app.queues.getJob('slow', id), { state: 'completed', result: 'finished' })

  const stuck = gate()
  const never = new Promise(() => {})
  const limited = await withQueues(t, { ...env, QUEUES_PREFIX: 'drain2', QUEUES_DRAIN_MS: 200 }, queue('stuck', async () => {
    stuck.open()
    await never
  }))
  await limited.app.queues.add('stuck', null)
  await stuck.promise
  const cut = Date.now()
  await limited.app.close()
  const took = Date.now() - cut
  t.ok(took >= 150 && took < 2000, `close gave up after the drain time (${took} ms)`)
})

t.test('tcp: Redis killed while jobs wait: add answers 503 fast; after restart each accepted job runs exactly once', async (t) => {
  const redis: RedisServer = await startRedisServer(t, { appendonly: true })
  const env = { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'outage' }
  const processed: number[] = []
  const worker = await withQueues(t, env, queue<{ n: number }, null>('durable', async (job) => { processed.push(job.data.n); return null }))
  const producer = await withQueues(t, { ...env, QUEUES_WORKERS: false }, queue('durable', async () => null))
  await producer.app.queues.pause('durable')
  const accepted = await producer.app.queues.addBulk('durable', Array.from({ length: 20 }, (_v, n) => ({ data: { n } })))
  t.equal(accepted.length, 20)

  await redis.stop()
  const asked = Date.now()
  await t.rejects(producer.app.queues.add('durable', { n: 99 }), { statusCode: 503, message: /queues is unavailable/ })
  const answer = await producer.app.inject({ method: 'POST', url: '/jobs/report', headers: USER, payload: {} })
  t.ok(Date.now() - asked < BASE.REDIS_COMMAND_TIMEOUT_MS * 2 + 500, `both answered within the command timeout (${Date.now() - asked} ms)`)
  t.equal(answer.statusCode, 503)
  t.match(answer.json(), { message: /queues is unavailable: Redis did not answer/ })
  t.notMatch(answer.body, /127\.0\.0\.1:\d+/, 'no endpoint in the answer')

  await redis.restart()
  await eventually(async () => await producer.app.queues.resume('durable').then(() => true, () => false), 10_000, 'the producer reconnects')
  await eventually(() => processed.length >= 20, 15_000, `20 jobs processed (got ${processed.length})`)
  t.same([...processed].sort((a, b) => a - b), Array.from({ length: 20 }, (_v, n) => n), 'every accepted job, once; the refused one never')
  t.match(await worker.app.queues.counts('durable'), { completed: 20, failed: 0, waiting: 0 })
})

t.test('tcp: a Redis that accepts but never answers: add answers 503 within QUEUES_TIMEOUT_MS', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await withQueues(t, { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'stopped', QUEUES_TIMEOUT_MS: 300, QUEUES_WORKERS: false }, queue('q', async () => null))
  redis.pause()
  t.teardown(() => redis.resume())
  const asked = Date.now()
  await t.rejects(app.queues.add('q', 1), { statusCode: 503, message: /did not answer within 300 ms/ })
  t.ok(Date.now() - asked < 1000, `answered in ${Date.now() - asked} ms`)
  redis.resume()
})

t.test('tcp: a queue whose set-up got no answer (the process frozen while it booted) is set up again by the next call', async (t) => {
  const redis = await startRedisServer(t)
  t.teardown(() => redis.resume())
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'setup', REDIS_COMMAND_TIMEOUT_MS: 200, QUEUES_TIMEOUT_MS: 200, QUEUES_WORKERS: false }, {
    plugins: [async (app: FastifyInstance) => {
      redis.pause() // BullMQ's version check, sent as the queue is made, gets no answer
      app.queues.define('late', async () => null)
      await new Promise((resolve) => setTimeout(resolve, 600)) // past its deadline: the check failed
      redis.resume()
    }]
  })
  const { id } = await app.queues.add('late', { n: 1 })
  t.match(await app.queues.getJob('late', id), { state: 'waiting', data: { n: 1 } }, 'added, and readable')
  t.match(await app.queues.counts('late'), { waiting: 1 })
})

t.test('queues are skipped with the reason where there is no Redis', async (t) => {
  const redis = await startRedisServer(t)
  const cases: Array<{ name: string, env: EnvInput, reason: RegExp }> = [
    { name: 'nothing', env: {}, reason: /^queues need a TCP Redis \(REDIS_URL\) or Upstash REST .*; no Redis configured$/ },
    { name: 'disabled', env: { REDIS_URL: redis.url, QUEUES_ENABLED: false }, reason: /disabled by QUEUES_ENABLED=false/ },
    { name: 'memory fallback in production', env: { QUEUES_FALLBACK: 'memory', NODE_ENV: 'production' }, reason: /QUEUES_FALLBACK=memory is refused when NODE_ENV=production/ }
  ]
  for (const c of cases) {
    const ran: unknown[] = []
    const { app, logs } = await withQueues(t, { ...BASE, ...c.env }, queue('mail', async (job) => { ran.push(job.data) }))
    t.equal(app.queues.available, false, c.name)
    t.match(app.queues.reason, c.reason, c.name)
    t.match(app.features.queues, { status: 'skipped', reason: c.reason })
    await t.rejects(app.queues.add('mail', { to: 'a' }), { statusCode: 503, message: /^queues is unavailable: / }, c.name)
    const res = await app.inject({ method: 'POST', url: '/jobs/report', headers: USER, payload: {} })
    t.equal(res.statusCode, 503, c.name)
    t.match(res.json(), { message: c.reason.source.startsWith('^') ? /queues is unavailable: queues need/ : /queues is unavailable/ })
    t.ok(logs().some((l) => l.msg.startsWith('feature queues: skipped')), 'the boot report says why')
    t.same(ran, [])
  }
})

t.test('memory fallback: warned as losing jobs on restart', async (t) => {
  const { app, logs } = await build(t, { QUEUES_FALLBACK: 'memory' })
  t.equal(app.queues.tier, 'memory')
  t.ok(logs().some((l) => l.level === 40 && /jobs are lost on restart/.test(l.msg)))
})

t.test('tcp: no open handles after close()', async (t) => {
  const redis = await startRedisServer(t)
  const handles = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap' || r === 'Timeout').length
  await eventually(() => true)
  const before = handles()
  const { app } = await withQueues(t, { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: 'handles' }, queue('h', async () => 1))
  const { id } = await app.queues.add('h', null)
  await finished(app, 'h', id)
  t.ok(handles() > before, 'queue connections were open')
  await app.close()
  await eventually(() => handles() <= before, 3000, `handles back to ${before} (now ${handles()})`)
  t.ok(handles() <= before, 'every socket and timer the queues opened is gone')
})

t.test('tcp: a job cut off at shutdown runs again within 1.5 x QUEUES_LOCK_MS, as the README states', async (t) => {
  const redis = await startRedisServer(t)
  const env = { ...BASE, REDIS_URL: redis.url, QUEUES_PREFIX: `cut${namespaces++}`, QUEUES_LOCK_MS: 1000, QUEUES_DRAIN_MS: 0 }
  let started = false
  const a = await withQueues(t, env, queue('cut', async () => {
    started = true
    await new Promise(() => {}) // outlives the drain: cut off at close
  }))
  const { id } = await a.app.queues.add('cut', null)
  await eventually(() => started, 5000, 'the job started on A')
  await new Promise((resolve) => setTimeout(resolve, 600)) // at least one stalled check has seen it active
  await a.app.close()
  const cutAt = Date.now()
  const direct = new Redis(redis.url)
  t.teardown(() => direct.disconnect())
  const names = String(await direct.client('LIST')).split('\n').map((line) => /name=(\S*)/.exec(line)?.[1] ?? '').filter((n) => n !== '')
  t.same(names, [], 'close() left no connection behind, not even the idle report worker\'s blocking one')
  const b = await withQueues(t, env, queue('cut', async () => 'done'))
  const job = await finished(b.app, 'cut', id, 10_000)
  const ms = Date.now() - cutAt
  t.equal(job.result, 'done', 'B ran it')
  t.ok(ms <= 1500 + 1000, `back in the queue and done ${ms} ms after the cut (1.5 x 1000 ms lock, + 1 s to fetch and run)`)
})

t.test('job ids of 128 characters reach the route, 129 are refused with a 400', async (t) => {
  const { app } = await build(t, { ...BASE, QUEUES_FALLBACK: 'memory' })
  const id = 'j'.repeat(128)
  t.equal((await app.inject({ url: `/jobs/report/${id}`, headers: USER })).statusCode, 404, '128: looked up (no such job)')
  const long = await app.inject({ url: `/jobs/report/${id}j`, headers: USER })
  t.equal(long.statusCode, 400)
  t.match(long.json(), { message: /id/ })
})
