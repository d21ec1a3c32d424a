import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { teardownList, bootApp, httpLoad, compare, opsPerSecond, pinToCores, row, type LoadResult } from './helpers'
import { startRedisServer } from '../support/redis-server'
import { INVALIDATE_BATCH } from '../lib/cache/store'

// Cache benchmarks (issue targets in brackets), each against a baseline
// measured in the same run:
//  (a) a route answered from L1 vs the same route with no cache   [>= 0.90]
//  (b) a route answered from Redis (L2 hit, tcp) vs a hand-written
//      ioredis cache-aside route, the @fastify/redis way          [>= 1.00]
//  (c) in-process getOrSet hits/s vs bentocache (memory L1 + redis L2) [>= 1.00]
//  (d) the longest Redis stall during a large tag invalidation      [<= 10 ms]
//  (e) a stampede of 1 000 concurrent cold requests: handler runs   [1], and
//      the time to the last response vs one request's handler run; 200
//      concurrent requests with Cache-Control: no-cache: handler runs [1]
// HTTP throughput on a 2-core machine shared by server, autocannon and Redis
// swings by 10 % between runs, so (a) and (b) also report the server's CPU
// time per request: its ratio (baseline / ours, higher is better) is the
// steadier figure of what the cache costs.

// The cached apps run with everything that counts on: /metrics and /status mounted, a daily
// command budget with its guard: the hot paths must not pay for the counting.
const COUNTING = { METRICS: true, STATUS_PAGE: true, REDIS_DAILY_COMMAND_BUDGET: 1_000_000_000, REDIS_BUDGET_GUARD: true }

const PRODUCT = { id: 1, name: 'Widget ✓', price: 9.99, tags: ['a', 'b', 'c'], stock: { warehouse: 12, store: 3 } }

/** Figures noise cannot move: the Redis commands the budget counted for the cache, per cache hit served. */
function commandsPerHit (app: FastifyInstance, level: 'l1Hits' | 'l2Hits'): string {
  const counted = app.connections.usage.entries().filter((e) => e.feature === 'cache').reduce((n, e) => n + e.commands, 0)
  const hits = app.cache.stats()[level]
  return `${(counted / Math.max(1, hits)).toFixed(4)} commands per hit over ${hits} hits (budget used today: ${app.connections.usage.budget().used})`
}

async function listen (fastify: FastifyInstance): Promise<string> {
  await fastify.listen({ port: 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${(fastify.server.address() as AddressInfo).port}`
}

async function report (title: string, baseName: string, oursName: string, target: number, rounds: number, baseUrl: string, oursUrl: string): Promise<void> {
  const samples: Array<{ base: LoadResult, ours: LoadResult }> = []
  const pair = await compare(rounds, async () => {
    const base = await httpLoad(baseUrl)
    samples.push({ base, ours: { rps: 0, cpuUsPerRequest: 0 } })
    return base.rps
  }, async () => {
    const ours = await httpLoad(oursUrl)
    samples[samples.length - 1].ours = ours
    return ours.rps
  })
  const mid = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  const baseCpu = mid(samples.map((s) => s.base.cpuUsPerRequest))
  const oursCpu = mid(samples.map((s) => s.ours.cpuUsPerRequest))
  process.stdout.write(`${title}: autocannon -c 10, ${rounds} alternating pairs of 3 s, medians\n`)
  row(`${baseName}`, `${pair.base.toFixed(0)} req/s`)
  row(`${oursName}`, `${pair.ours.toFixed(0)} req/s`, pair.ratio, target)
  row(`  server CPU per request, ${baseName.split(' (')[0]}`, `${baseCpu.toFixed(1)} us`)
  row(`  server CPU per request, ours`, `${oursCpu.toFixed(1)} us`, baseCpu / oursCpu, target)
}

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const rounds = 7
  // BENCH_PIN=1: server alone on core 0. On 2 cores that makes core 1 (autocannon + Redis) the bottleneck, so it is off by default.
  if (process.env.BENCH_PIN === '1') process.stdout.write(pinToCores(redis.pid()) ? 'pinned: server on core 0; autocannon and redis-server on core 1\n' : 'could not pin (needs taskset and 2 cores)\n')

  // BENCH_CACHE_PARTS=a,e runs only those parts.
  const parts = new Set((process.env.BENCH_CACHE_PARTS ?? 'a,b,c,d,e').split(','))
  if (parts.has('a')) await l1Route(redis.url, rounds)
  if (parts.has('b')) await l2Route(redis.url, rounds)
  if (parts.has('c')) await versusBentocache(redis.url, rounds)
  if (parts.has('d')) await invalidationStall(redis.url)
  if (parts.has('e')) await stampede(redis.url)
  await cleanups.run()
}

/** (a) L1 hit vs no cache */
async function l1Route (url: string, rounds: number): Promise<void> {
  const plain = Fastify()
  plain.get('/product/:id', async () => PRODUCT)
  const cached = await bootApp({ ...COUNTING, REDIS_URL: url, CACHE_PREFIX: 'bench-a' }, (f) => f.get('/product/:id', { config: { cache: { ttl: 600 } } }, async () => PRODUCT))
  const plainUrl = `${await listen(plain)}/product/1`
  const cachedUrl = `${await listen(cached)}/product/1`
  await httpLoad(cachedUrl, 1) // warm: the first request fills the cache
  await httpLoad(plainUrl, 1)
  await report('(a) route from L1 vs no cache, metrics and budget on', 'no cache (ceiling)', 'config.cache, L1 hit', 0.9, rounds, plainUrl, cachedUrl)
  process.stdout.write(`    counted: ${commandsPerHit(cached, 'l1Hits')}\n`)
  await plain.close()
  await cached.close()
}

/** (b) L2 hit vs hand-written ioredis cache-aside */
async function l2Route (url: string, rounds: number): Promise<void> {
  const direct = new Redis(url)
  await direct.set('bench-b:product:1', JSON.stringify(PRODUCT), 'EX', 600)
  const handWritten = Fastify()
  handWritten.get<{ Params: { id: string } }>('/product/:id', async (request) => {
    const hit = await direct.get(`bench-b:product:${request.params.id}`)
    if (hit !== null) return JSON.parse(hit) as unknown
    await direct.set(`bench-b:product:${request.params.id}`, JSON.stringify(PRODUCT), 'EX', 600)
    return PRODUCT
  })
  const l2 = await bootApp({ ...COUNTING, REDIS_URL: url, CACHE_PREFIX: 'bench-b', CACHE_L1_MAX_ENTRIES: 0 }, (f) => f.get('/product/:id', { config: { cache: { ttl: 600 } } }, async () => PRODUCT))
  const handUrl = `${await listen(handWritten)}/product/1`
  const l2Url = `${await listen(l2)}/product/1`
  await httpLoad(l2Url, 1)
  await httpLoad(handUrl, 1)
  await report('\n(b) route from Redis (L1 off) vs hand-written ioredis cache-aside, metrics and budget on', 'hand-written ioredis GET + JSON.parse', 'config.cache, L2 hit (tcp)', 1.0, rounds, handUrl, l2Url)
  process.stdout.write(`    counted: ${commandsPerHit(l2, 'l2Hits')}\n`)
  await handWritten.close()
  await l2.close()
  direct.disconnect()
}

/** (c) in-process getOrSet hits: ours vs bentocache, both memory L1 + redis L2 */
async function versusBentocache (url: string, rounds: number): Promise<void> {
  const { BentoCache, bentostore } = await import('bentocache')
  const { memoryDriver } = await import('bentocache/drivers/memory')
  const { redisDriver } = await import('bentocache/drivers/redis')
  const bentoRedis = new Redis(url)
  const bento = new BentoCache({
    default: 'cache',
    stores: { cache: bentostore().useL1Layer(memoryDriver({ maxItems: 10000 })).useL2Layer(redisDriver({ connection: bentoRedis })) }
  })
  const ours = await bootApp({ REDIS_URL: url, CACHE_PREFIX: 'bench-c' })
  const keys = Array.from({ length: 100 }, (_v, i) => `product:${i}`)
  for (const key of keys) {
    await bento.getOrSet({ key, factory: () => PRODUCT, ttl: '10m' })
    await ours.cache.getOrSet(key, () => PRODUCT, { ttl: '10m' })
  }
  let i = 0
  const bentoHit = async (): Promise<unknown> => await bento.getOrSet({ key: keys[i++ % keys.length], factory: () => PRODUCT, ttl: '10m' })
  const oursHit = async (): Promise<unknown> => await ours.cache.getOrSet(keys[i++ % keys.length], () => PRODUCT, { ttl: '10m' })
  await opsPerSecond(500, bentoHit)
  await opsPerSecond(500, oursHit)
  const c = await compare(rounds, async () => await opsPerSecond(2000, bentoHit), async () => await opsPerSecond(2000, oursHit))
  process.stdout.write(`\n(c) getOrSet L1 hits in-process, 100 keys, ${rounds} alternating pairs of 2 s, medians\n`)
  row('bentocache (memory L1 + redis L2)', `${c.base.toFixed(0)} ops/s`)
  row('fastify.cache (tcp, L1 + L2)', `${c.ours.toFixed(0)} ops/s`, c.ratio, 1.0)
  process.stdout.write(`    loader runs during (c): ${ours.cache.stats().loaderRuns} (100 expected: the warm-up), Redis commands on hits: ${ours.cache.stats().redisCommands - 200}\n`)
  await bento.disconnect()
  bentoRedis.disconnect()
  await ours.close()
}

/** (e) 1 000 concurrent cold requests for one key over HTTP, on one instance (tcp), three keys, medians. */
async function stampede (url: string): Promise<void> {
  const CONCURRENT = 1000
  const HANDLER_MS = 100
  let runs = 0
  const app = await bootApp({ REDIS_URL: url, CACHE_PREFIX: 'bench-e' }, (f) => {
    const slow = async (): Promise<unknown> => {
      runs++
      await new Promise((resolve) => setTimeout(resolve, HANDLER_MS))
      return PRODUCT
    }
    f.get('/slow/:k', { config: { cache: { ttl: 600 } } }, slow)
    f.get('/uncached/:k', slow)
  })
  const base = await listen(app)
  const timed = async (path: string, n: number, headers: Record<string, string> = {}): Promise<{ ms: number, bodies: number }> => {
    const started = performance.now()
    const bodies = await Promise.all(Array.from({ length: n }, async () => await (await fetch(`${base}${path}`, { headers })).text()))
    return { ms: performance.now() - started, bodies: new Set(bodies).size }
  }
  const mid = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  const single: number[] = []
  const herd: number[] = []
  const herdRuns: number[] = []
  for (let round = 0; round < 3; round++) {
    single.push((await timed(`/uncached/${round}`, 1)).ms)
    runs = 0
    const result = await timed(`/slow/cold-${round}`, CONCURRENT)
    if (result.bodies !== 1) throw new Error(`the stampede got ${result.bodies} different bodies`)
    herd.push(result.ms)
    herdRuns.push(runs)
  }
  process.stdout.write(`\n(e) stampede: ${CONCURRENT} concurrent cold requests for one key (handler ${HANDLER_MS} ms, tcp, one instance), 3 keys, medians\n`)
  row('handler runs per stampede', `${mid(herdRuns)}`, undefined)
  process.stdout.write(`    ${herdRuns.every((r) => r === 1) ? 'met' : 'NOT met'} (target 1): runs per round ${herdRuns.join(', ')}\n`)
  row('one request, uncached (one handler run)', `${mid(single).toFixed(0)} ms`)
  row(`last of ${CONCURRENT} responses, cold`, `${mid(herd).toFixed(0)} ms`)
  process.stdout.write(`    ratio ${(mid(herd) / mid(single)).toFixed(2)} (the stampede's time over one handler run)\n`)
  // A client's no-cache used to bypass single-flight: every request ran the handler and rewrote the entry.
  const NO_CACHE = 200
  const noCacheRuns: number[] = []
  for (const key of ['nc-cold', 'nc-cold']) {
    runs = 0
    await timed(`/slow/${key}`, NO_CACHE, { 'cache-control': 'no-cache', pragma: 'no-cache' })
    noCacheRuns.push(runs)
  }
  row(`handler runs, ${NO_CACHE} concurrent requests with Cache-Control: no-cache (cold, then warm)`, noCacheRuns.join(', '))
  process.stdout.write(`    ${noCacheRuns[0] === 1 && noCacheRuns[1] === 0 ? 'met' : 'NOT met'} (target 1 cold, 0 warm)\n`)
  await app.close()
}

/** What the invalidation did before it was batched: every member of the tag in one script. */
const ONE_SCRIPT_INVALIDATION = `
local members = redis.call('SMEMBERS', KEYS[1])
for _, k in ipairs(members) do redis.call('DEL', k) end
redis.call('DEL', KEYS[1])
return #members`

/**
 * (d) The longest Redis stall during invalidateTags of 20 000 keys: SLOWLOG gives each command's
 * execution time inside Redis (noise from the host cannot move it), and a second client's PING
 * round trips show what other clients wait. Baseline: the former one-script invalidation of
 * the same 20 000 keys, in the same run. Target <= 10 ms.
 */
async function invalidationStall (url: string): Promise<void> {
  const KEYS = 20_000
  const direct = new Redis(url)
  const app = await bootApp({ REDIS_URL: url, CACHE_PREFIX: 'bench-inv', CACHE_TIMEOUT_MS: 10_000 })
  const slowest = async (fn: () => Promise<unknown>): Promise<{ commandMs: number, pingMs: number }> => {
    await direct.config('SET', 'slowlog-log-slower-than', '0')
    await direct.config('SET', 'slowlog-max-len', '100000')
    await direct.slowlog('RESET')
    let done = false
    let pingMs = 0
    const pinger = new Redis(url)
    const pinging = (async () => {
      while (!done) {
        const started = performance.now()
        await pinger.ping()
        pingMs = Math.max(pingMs, performance.now() - started)
      }
    })()
    await fn()
    done = true
    await pinging
    pinger.disconnect()
    const log = await direct.slowlog('GET', 100_000) as Array<[number, number, number, string[]]>
    await direct.config('SET', 'slowlog-log-slower-than', '10000')
    const commandMs = Math.max(...log.filter((entry) => !/^slowlog|^config/i.test(String(entry[3][0]))).map((entry) => Number(entry[2]) / 1000))
    return { commandMs, pingMs }
  }
  for (let from = 0; from < KEYS; from += 1000) {
    await Promise.all(Array.from({ length: 1000 }, async (_v, i) => await app.cache.set(`k${from + i}`, i, { ttl: 600, tags: ['all'] })))
  }
  const ours = await slowest(async () => await app.cache.invalidateTags(['all']))
  for (let from = 0; from < KEYS; from += 10_000) {
    const pipeline = direct.pipeline()
    for (let i = from; i < from + 10_000; i++) pipeline.set(`bench-old:c:k${i}`, '{"v":1,"e":0}', 'PX', 600_000).sadd('bench-old:t:all', `bench-old:c:k${i}`)
    await pipeline.exec()
  }
  const before = await slowest(async () => await direct.eval(ONE_SCRIPT_INVALIDATION, 1, 'bench-old:t:all'))
  process.stdout.write(`\n(d) invalidateTags of ${KEYS} keys: the longest single command inside Redis (SLOWLOG), and another client's slowest PING\n`)
  row('one script for the whole tag (before)', `${before.commandMs.toFixed(2)} ms / ${before.pingMs.toFixed(2)} ms`)
  row(`batches of ${INVALIDATE_BATCH} (target <= 10 ms)`, `${ours.commandMs.toFixed(2)} ms / ${ours.pingMs.toFixed(2)} ms`)
  process.stdout.write(`    ${ours.commandMs <= 10 ? 'met' : 'NOT met'}: longest command ${ours.commandMs.toFixed(2)} ms; ${(before.commandMs / ours.commandMs).toFixed(1)}x shorter than one script\n`)
  direct.disconnect()
  await app.close()
}
