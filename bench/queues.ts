import { Queue, Worker } from 'bullmq'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import type { EnvInput } from '../lib/config'
import { teardownList, bootApp, compare, row } from './helpers'
import { startRedisServer, type RedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'

// Queues on tcp (issue targets in brackets):
//  10 000 small jobs, concurrency 50, added in one addBulk: jobs/s from the add
//    to the last job processed, fastify.queues vs raw BullMQ       [>= 0.95x]
//    (the queue publishes no sse events, as raw BullMQ does not; then the same
//    with the default progressChannel: one sse publish per completed job)
//  add -> processor start latency p50/p99 at low load (one job at a time)
//  producing over Upstash REST (the project's bridge in front of the same
//  redis-server) vs over TCP: adds/s one at a time, HTTP requests and Redis
//  commands per add, and add -> completed latency with a TCP worker
// Both sides run in this process against the same redis-server, in
// alternation (ABBA), with a FLUSHALL before every run. The app runs only the
// queues plugin (and sse for the second figure): the other features and the
// demo routes (with a worker of their own) are the app's cost, not the plugin's.

const JOBS = 10_000
const CONCURRENCY = 50
const LATENCY_SAMPLES = 300

interface Side {
  /** Add `count` jobs of `{ t }` in one bulk; resolves once every one was processed. */
  burst: (count: number) => Promise<void>
  /** add one job and resolve with ms until its processor started. */
  one: () => Promise<number>
  close: () => Promise<void>
}

type Waiter = { remaining: number, resolve: () => void } | null

function tracker (): { processed: (t: number) => void, burst: (count: number) => Promise<void>, next: () => Promise<number> } {
  let waiter: Waiter = null
  let single: ((ms: number) => void) | null = null
  return {
    processed (t) {
      if (single !== null) {
        const done = single
        single = null
        done(performance.now() - t)
      }
      if (waiter !== null && --waiter.remaining === 0) waiter.resolve()
    },
    async burst (count) { await new Promise<void>((resolve) => { waiter = { remaining: count, resolve } }) },
    async next () { return await new Promise<number>((resolve) => { single = resolve }) }
  }
}

async function ours (redis: RedisServer, prefix: string, sseEvents = false): Promise<Side> {
  const track = tracker()
  // Only what the queue needs: the other features and the demo routes (with their own queue) are the app's cost, not the plugin's.
  const env = { REDIS_URL: redis.url, QUEUES_PREFIX: prefix, SSE_PREFIX: prefix, QUEUES_DRAIN_MS: 1000, CACHE_ENABLED: false, PRESENCE_ENABLED: false, SSE_ENABLED: sseEvents }
  const app: FastifyInstance = await bootApp(env, (f) => {
    f.queues.define<{ t: number }, null>('bench', async (job) => { track.processed(job.data.t); return null }, {
      concurrency: CONCURRENCY,
      ...(sseEvents ? {} : { progressChannel: () => null })
    })
  }, { demoRoutes: false, presenceRoutes: false })
  return {
    async burst (count) {
      const done = track.burst(count)
      const t = performance.now()
      await app.queues.addBulk('bench', Array.from({ length: count }, () => ({ data: { t } })))
      await done
    },
    async one () {
      const started = track.next()
      await app.queues.add('bench', { t: performance.now() })
      return await started
    },
    close: async () => await app.close()
  }
}

async function raw (redis: RedisServer, prefix: string): Promise<Side> {
  const track = tracker()
  const connection = { host: '127.0.0.1', port: redis.port }
  const producer = new Redis({ ...connection, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true })
  await producer.connect()
  const queue = new Queue('bench', { connection: producer, prefix: `${prefix}:queues` })
  const worker = new Worker<{ t: number }, null>('bench', async (job) => { track.processed(job.data.t); return null }, {
    connection: { ...connection, maxRetriesPerRequest: null },
    prefix: `${prefix}:queues`,
    concurrency: CONCURRENCY
  })
  await worker.waitUntilReady()
  return {
    async burst (count) {
      const done = track.burst(count)
      const t = performance.now()
      await queue.addBulk(Array.from({ length: count }, () => ({ name: 'bench', data: { t } })))
      await done
    },
    async one () {
      const started = track.next()
      await queue.add('bench', { t: performance.now() })
      return await started
    },
    async close () {
      await worker.close()
      await queue.close()
      producer.disconnect()
    }
  }
}

function percentile (samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const admin = new Redis(redis.url)
  let runs = 0
  try {
    // BENCH_QUEUES_PARTS=rest runs only the REST producer figures.
    const parts = new Set((process.env.BENCH_QUEUES_PARTS ?? 'tcp,rest').split(','))
    if (parts.has('tcp')) {
      const costs = new Map<string, Array<{ cpuUs: number, commands: number }>>()
      const commandsSoFar = async (): Promise<number> => {
        const info = await admin.info('commandstats')
        return [...info.matchAll(/calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0)
      }
      const jobsPerSecond = async (make: (redis: RedisServer, prefix: string) => Promise<Side>): Promise<number> => {
        await admin.flushall()
        const side = await make(redis, `bench-q${++runs}`)
        try {
          await admin.config('RESETSTAT')
          const cpu = process.cpuUsage()
          const started = performance.now()
          await side.burst(JOBS)
          const seconds = (performance.now() - started) / 1000
          const used = process.cpuUsage(cpu)
          const cost = { cpuUs: (used.user + used.system) / JOBS, commands: (await commandsSoFar() - 2) / JOBS } // minus RESETSTAT and INFO
          costs.set(make.name, [...(costs.get(make.name) ?? []), cost])
          return JOBS / seconds
        } finally {
          await side.close()
        }
      }
      const medianCost = (name: string, pick: (c: { cpuUs: number, commands: number }) => number): number => {
        const xs = (costs.get(name) ?? []).map(pick).sort((a, b) => a - b)
        return xs[Math.floor(xs.length / 2)]
      }
      await jobsPerSecond(raw) // warm-up: JIT and Redis script cache
      await jobsPerSecond(ours)
      const r = await compare(25, async () => await jobsPerSecond(raw), async () => await jobsPerSecond(ours))
      process.stdout.write(`${JOBS} small jobs in one addBulk, concurrency ${CONCURRENCY}, add to last processed; 25 alternating pairs, medians\n`)
      row('raw BullMQ', `${r.base.toFixed(0)} jobs/s`)
      row('fastify.queues (tcp), no sse events', `${r.ours.toFixed(0)} jobs/s`, r.ratio, 0.95)
      row('  Redis commands per job: raw / ours', `${medianCost('raw', (c) => c.commands).toFixed(2)} / ${medianCost('ours', (c) => c.commands).toFixed(2)}`)
      row('  this process CPU per job: raw / ours', `${medianCost('raw', (c) => c.cpuUs).toFixed(0)} / ${medianCost('ours', (c) => c.cpuUs).toFixed(0)} us`, medianCost('ours', (c) => c.cpuUs) / medianCost('raw', (c) => c.cpuUs))
      const oursWithSse = async (redis: RedisServer, prefix: string): Promise<Side> => await ours(redis, prefix, true)
      const withSse = await compare(3, async () => await jobsPerSecond(raw), async () => await jobsPerSecond(oursWithSse))
      row('fastify.queues, completion published to sse', `${withSse.ours.toFixed(0)} jobs/s`, withSse.ratio)
      row('  Redis commands per job with sse events', medianCost('oursWithSse', (c) => c.commands).toFixed(2))

      process.stdout.write(`\nadd -> processor start, one job at a time, ${LATENCY_SAMPLES} jobs\n`)
      for (const [name, make] of [['raw BullMQ', raw], ['fastify.queues (tcp)', ours]] as const) {
        await admin.flushall()
        const side = await make(redis, `bench-l${++runs}`)
        try {
          for (let i = 0; i < 20; i++) await side.one() // warm-up
          const samples: number[] = []
          for (let i = 0; i < LATENCY_SAMPLES; i++) samples.push(await side.one())
          row(`${name} p50 / p99`, `${percentile(samples, 0.5).toFixed(2)} / ${percentile(samples, 0.99).toFixed(2)} ms`)
        } finally {
          await side.close()
        }
      }
    }
    if (parts.has('rest')) await restProducer(redis, admin, cleanups)
  } finally {
    admin.disconnect()
    await cleanups.run()
  }
}

/** Producing over REST vs TCP, and the split (REST producer + TCP worker) vs TCP only, end to end. */
async function restProducer (redis: RedisServer, admin: Redis, cleanups: ReturnType<typeof teardownList>): Promise<void> {
  const ADDS = 500
  const rest = await startRestServer(cleanups, redis)
  const httpRequests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
  const quiet = { CACHE_ENABLED: false, PRESENCE_ENABLED: false, SSE_ENABLED: false, QUEUES_PREFIX: 'bench-rest' }
  const producer = async (env: EnvInput): Promise<FastifyInstance> => await bootApp({ ...quiet, ...env }, (f) => {
    f.queues.define('bench', async () => null, { progressChannel: () => null, removeOnComplete: true })
  }, { demoRoutes: false, presenceRoutes: false })
  const overRest = await producer({ UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token })
  const overTcp = await producer({ REDIS_URL: redis.url, QUEUES_WORKERS: false })
  const costs: Record<string, { http: number[], commands: number[] }> = { rest: { http: [], commands: [] }, tcp: { http: [], commands: [] } }
  const addsPerSecond = (name: 'rest' | 'tcp', app: FastifyInstance) => async (): Promise<number> => {
    await app.queues.add('bench', { warm: true }) // the script is in Redis's cache: every add is one EVALSHA
    await admin.config('RESETSTAT')
    const http = httpRequests()
    const started = performance.now()
    for (let i = 0; i < ADDS; i++) await app.queues.add('bench', { i })
    const seconds = (performance.now() - started) / 1000
    const info = await admin.info('commandstats')
    const calls = (command: string): number => Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(info)?.[1] ?? 0)
    const all = [...info.matchAll(/calls=(\d+)/g)].reduce((sum, m) => sum + Number(m[1]), 0) - calls('config') - calls('info')
    costs[name].http.push((httpRequests() - http) / ADDS)
    costs[name].commands.push(all / ADDS)
    await admin.flushall()
    return ADDS / seconds
  }
  const r = await compare(6, addsPerSecond('tcp', overTcp), addsPerSecond('rest', overRest))
  const mid = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  process.stdout.write(`\nproducing: ${ADDS} adds one at a time, 6 alternating pairs, medians\n`)
  row('add over TCP (ioredis)', `${r.base.toFixed(0)} adds/s`)
  row('add over Upstash REST (bridge)', `${r.ours.toFixed(0)} adds/s`, r.ratio)
  row('  HTTP requests per add: tcp / rest (target 1)', `${mid(costs.tcp.http).toFixed(2)} / ${mid(costs.rest.http).toFixed(2)}`)
  row('  Redis commands per add, script calls included: tcp / rest', `${mid(costs.tcp.commands).toFixed(2)} / ${mid(costs.rest.commands).toFixed(2)}`)

  // End to end: one job at a time from add to completed, the worker on TCP either way.
  const LATENCY = 200
  let done: ((ms: number) => void) | null = null
  const worker = await bootApp({ ...quiet, REDIS_URL: redis.url }, (f) => {
    f.queues.define<{ t: number }, null>('bench', async (job) => { done?.(performance.now() - job.data.t); return null }, { progressChannel: () => null, removeOnComplete: true })
  }, { demoRoutes: false, presenceRoutes: false })
  process.stdout.write(`\nadd -> processor start with a TCP worker, one job at a time, ${LATENCY} jobs\n`)
  for (const [name, app] of [['TCP producer (the worker app itself)', worker], ['REST producer + TCP worker', overRest]] as const) {
    const samples: number[] = []
    for (let i = 0; i < LATENCY + 20; i++) {
      const ms = await new Promise<number>((resolve) => {
        done = resolve
        void app.queues.add('bench', { t: performance.now() })
      })
      if (i >= 20) samples.push(ms)
    }
    row(`${name} p50 / p99`, `${percentile(samples, 0.5).toFixed(2)} / ${percentile(samples, 0.99).toFixed(2)} ms`)
  }
  done = null
  await Promise.all([overRest.close(), overTcp.close(), worker.close()])
}
