import type { FastifyInstance } from 'fastify'
import fastifyRateLimit from '@fastify/rate-limit'
import { Ratelimit } from '@upstash/ratelimit'
import { Redis as UpstashRedis } from '@upstash/redis'
import { Redis } from 'ioredis'
import { teardownList, bootApp, compare, row } from './helpers'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import type { EnvInput } from '../lib/config'

// The rate limiter (issue targets in brackets), through a route (inject),
// 1 000 distinct clients, every request allowed (the limit is never reached,
// so each one is a full decision), in ABBA pairs of 2 s, medians:
//   memory: ours vs @fastify/rate-limit's local store      [p99 <= 1 ms]
//   tcp:    ours vs @fastify/rate-limit's ioredis store    [>= 1.0x]
//   rest:   ours vs @upstash/ratelimit over the same bridge
// and the commands each one bills per decision, as Redis's own INFO
// commandstats counts them (the commands inside a script included).

const CLIENTS = 1_000
const LIMIT = 1_000_000_000
/** The other features off, so that Redis's counts are the limiter's alone. */
const ONLY_RATE_LIMIT: EnvInput = { CACHE_ENABLED: false, SSE_ENABLED: false, PRESENCE_ENABLED: false, QUEUES_ENABLED: false }
const ROUTE = { config: { rateLimit: { max: LIMIT, timeWindow: '1 minute' } } }

interface Contender { name: string, app: FastifyInstance }

const clientOf = (request: { headers: Record<string, unknown> }): string => String(request.headers['x-client'])

/**
 * Every contender is the same app (this package with only the rate-limit
 * feature on) with GET /r behind its limiter, so that the ratios compare
 * limiters, not the hooks of the app around them.
 */
async function withRoute (env: EnvInput, route: (scope: FastifyInstance) => Promise<void>): Promise<FastifyInstance> {
  return await bootApp({ ...env, ...ONLY_RATE_LIMIT, RATE_LIMIT_PREFIX: `bench-rl-${Math.random().toString(36).slice(2)}` }, (f) => {
    void f.register(route)
  }, { demoRoutes: false })
}

/** Ours: @fastify/rate-limit's route options and headers over fastify.rateLimiter.store. */
async function ours (env: EnvInput): Promise<FastifyInstance> {
  return await withRoute(env, async (scope) => {
    await scope.register(fastifyRateLimit, { global: false, store: scope.rateLimiter.store, keyGenerator: clientOf })
    scope.get('/r', ROUTE, async () => ({ ok: true }))
  })
}

/** @fastify/rate-limit with its own store: local (no client given) or ioredis. */
async function fastifyRateLimitApp (redis?: Redis): Promise<FastifyInstance> {
  return await withRoute({}, async (scope) => {
    await scope.register(fastifyRateLimit, { global: false, keyGenerator: clientOf, ...(redis === undefined ? {} : { redis, nameSpace: 'bench-frl-' }) })
    scope.get('/r', ROUTE, async () => ({ ok: true }))
  })
}

async function upstashRatelimitApp (url: string, token: string): Promise<FastifyInstance> {
  const limiter = new Ratelimit({ redis: new UpstashRedis({ url, token, enableTelemetry: false }), limiter: Ratelimit.fixedWindow(LIMIT, '60 s'), prefix: 'bench-url', analytics: false, ephemeralCache: false })
  return await withRoute({}, async (scope) => {
    scope.get('/r', async (request, reply) => {
      const { success, limit, remaining } = await limiter.limit(clientOf(request))
      reply.header('x-ratelimit-limit', limit).header('x-ratelimit-remaining', remaining)
      if (!success) return await reply.code(429).send({ error: 'Too Many Requests' })
      return { ok: true }
    })
  })
}

interface Run { rps: number, p99: number }

/** Requests through GET /r for `ms`, one at a time, round-robin over the clients: the rate and the 99th percentile latency. */
async function drive (app: FastifyInstance, ms: number): Promise<Run> {
  const samples: number[] = []
  const end = performance.now() + ms
  let n = 0
  while (performance.now() < end) {
    const started = performance.now()
    const res = await app.inject({ url: '/r', headers: { 'x-client': `client${n++ % CLIENTS}` } })
    samples.push(performance.now() - started)
    if (res.statusCode !== 200) throw new Error(`GET /r answered ${res.statusCode}: ${res.body}`)
  }
  samples.sort((a, b) => a - b)
  return { rps: samples.length / (ms / 1000), p99: samples[Math.floor(samples.length * 0.99)] }
}

async function commandsRun (admin: Redis): Promise<number> {
  const info = await admin.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)) if (m[1] !== 'info') calls += Number(m[2])
  return calls
}

/** Commands Redis ran per decision: 200 decisions over 10 clients already in their window (their first request made before). */
async function billed (app: FastifyInstance, admin: Redis): Promise<number> {
  for (let i = 0; i < 10; i++) await app.inject({ url: '/r', headers: { 'x-client': `billed${i}` } })
  const before = await commandsRun(admin)
  for (let i = 0; i < 200; i++) await app.inject({ url: '/r', headers: { 'x-client': `billed${i % 10}` } })
  return (await commandsRun(admin) - before) / 200
}

async function pair (tier: string, baseline: Contender, candidate: Contender, target: { ratio?: number, p99?: number }, admin?: Redis): Promise<void> {
  await drive(baseline.app, 500)
  await drive(candidate.app, 500)
  const p99s: number[] = []
  const basep99s: number[] = []
  const r = await compare(6,
    async () => { const run = await drive(baseline.app, 2000); basep99s.push(run.p99); return run.rps },
    async () => { const run = await drive(candidate.app, 2000); p99s.push(run.p99); return run.rps })
  const mid = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  process.stdout.write(`\n${tier}\n`)
  row(`  ${baseline.name}`, `${r.base.toFixed(0)} dec/s  p99 ${mid(basep99s).toFixed(3)} ms`)
  row(`  ${candidate.name}`, `${r.ours.toFixed(0)} dec/s  p99 ${mid(p99s).toFixed(3)} ms`, r.ratio, target.ratio)
  if (target.p99 !== undefined) row(`  ours, p99 (target <= ${target.p99} ms)`, `${mid(p99s).toFixed(3)} ms`, undefined)
  if (admin !== undefined) {
    row(`  commands per decision, ${baseline.name}`, (await billed(baseline.app, admin)).toFixed(2))
    row(`  commands per decision, ${candidate.name}`, (await billed(candidate.app, admin)).toFixed(2))
  }
}

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const rest = await startRestServer(cleanups, redis)
  const admin = new Redis(redis.url)
  admin.on('error', (err: Error) => process.stderr.write(`the bench's admin client: ${err.message}\n`))
  const apps: FastifyInstance[] = []
  const keep = (app: FastifyInstance): FastifyInstance => { apps.push(app); return app }
  try {
    process.stdout.write(`GET /r behind a limiter, ${CLIENTS} clients round-robin, every request allowed; 6 alternating pairs of 2 s, medians\n`)
    await pair('memory',
      { name: '@fastify/rate-limit, local store', app: keep(await fastifyRateLimitApp()) },
      { name: 'ours (memory tier)', app: keep(await ours({})) }, { p99: 1 })
    const ioredis = new Redis(redis.url)
    ioredis.on('error', (err: Error) => process.stderr.write(`@fastify/rate-limit's ioredis client: ${err.message}\n`))
    cleanups.teardown(() => ioredis.disconnect())
    await pair('tcp',
      { name: '@fastify/rate-limit, ioredis store', app: keep(await fastifyRateLimitApp(ioredis)) },
      { name: 'ours (tcp tier)', app: keep(await ours({ REDIS_URL: redis.url })) }, { ratio: 1 }, admin)
    await pair('rest (the bridge, on loopback)',
      { name: '@upstash/ratelimit, fixed window', app: keep(await upstashRatelimitApp(rest.url, rest.token)) },
      { name: 'ours (rest tier)', app: keep(await ours({ UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token })) }, {}, admin)
  } finally {
    for (const app of apps) await app.close()
    admin.disconnect()
    await cleanups.run()
  }
}
