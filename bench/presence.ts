import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { teardownList, bootApp, compare, opsPerSecond, row } from './helpers'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'

// Presence (issue targets in brackets):
//  heartbeats/s through POST /presence/heartbeat on tcp, 10 000 distinct users,
//    vs a hand-written route doing the same writes with ioredis (ZADD + HSET in MULTI)
//  commands per heartbeat on tcp and rest                     [exactly 1]
//  count() latency at 100 000 online users vs at 1 000        [within 2x]
//  billed commands per minute, 10 000 users online on 4 instances heartbeating every 30 s
//    (issue #27: >= 100x fewer than one 9-command script per heartbeat, 180 000 a minute)

const USERS = 10_000

async function medianLatency (runs: number, fn: () => Promise<unknown>): Promise<number> {
  const samples: number[] = []
  for (let i = 0; i < runs; i++) {
    const started = performance.now()
    await fn()
    samples.push(performance.now() - started)
  }
  samples.sort((a, b) => a - b)
  return samples[Math.floor(samples.length / 2)]
}

/**
 * Expiries per second one instance sustains: USERS_EXPIRING users whose last heartbeat is past
 * the TTL are put in Redis, then one app instance boots and sweeps them; the rate is measured
 * from its first leave event to its last. The sweeps also publish every leave to the
 * public:presence SSE channel, as in the demo app. Median of 3 runs.
 */
const USERS_EXPIRING = 50_000

async function expiries (url: string, direct: Redis): Promise<void> {
  const rates: number[] = []
  let commandsPerExpiry = 0
  for (let run = 0; run < 3; run++) {
    const prefix = `bench-px${run}`
    const old = Date.now() - 10_000
    for (let start = 0; start < USERS_EXPIRING; start += 10_000) {
      const pipeline = direct.pipeline()
      for (let i = start; i < start + 10_000; i++) pipeline.zadd(`${prefix}:presence:online`, old, `u${i}`).zadd(`${prefix}:presence:dev:u${i}`, old, 'default')
      await pipeline.exec()
    }
    let first = 0
    let last = 0
    let seen = 0
    const app = await bootApp({ REDIS_URL: url, PRESENCE_PREFIX: prefix, PRESENCE_TTL_MS: 1000, PRESENCE_TIMEOUT_MS: 10_000 })
    const done = new Promise<void>((resolve) => {
      app.presence.on('leave', () => {
        last = performance.now()
        if (seen++ === 0) first = last
        if (seen === USERS_EXPIRING) resolve()
      })
    })
    await done
    rates.push(USERS_EXPIRING / ((last - first) / 1000))
    commandsPerExpiry = app.presence.stats().redisCommands / USERS_EXPIRING
    await app.close()
  }
  rates.sort((a, b) => a - b)
  process.stdout.write(`\nexpiries: ${USERS_EXPIRING} users expire at once, one instance sweeps (with SSE fan-out of each leave), median of 3 runs\n`)
  row('expiries per second (target >= 10 000)', rates[1].toFixed(0), rates[1] / 10_000, 1)
  row('  runs, lowest to highest', rates.map((r) => r.toFixed(0)).join(' / '))
  row('  presence commands per expiry (one sweep script per 500)', commandsPerExpiry.toFixed(4))
}

/**
 * Billed commands per minute of presence at FLEET_USERS users online on 4 instances, each user
 * heartbeating every 30 s through a round-robin balancer (every instance sees every user), against
 * a 60 s TTL and the default 5 s flush. Time is scaled down by TIME_SCALE (every interval
 * divided by it, so the ratio of flushes and sweeps to heartbeats is the production one) and the
 * commands Redis ran (INFO commandstats) are scaled back to a real minute. PRESENCE_FLUSH_MS=0 is
 * the same store writing every heartbeat at once; 9 per heartbeat is the store before coalescing.
 */
const FLEET_USERS = 10_000
const TIME_SCALE = 10

async function commandsRun (admin: Redis): Promise<number> {
  const info = await admin.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/^cmdstat_([a-z|_-]+):calls=(\d+)/gm)) if (m[1] !== 'info') calls += Number(m[2])
  return calls
}

async function fleetPerMinute (env: Record<string, string | number>, admin: Redis, flushMs: number, windowMs: number): Promise<{ ran: number, billed: number, heartbeats: number }> {
  const everyMs = 30_000 / TIME_SCALE
  const apps: FastifyInstance[] = []
  for (let i = 0; i < 4; i++) {
    apps.push(await bootApp({ ...env, SSE_ENABLED: false, QUEUES_ENABLED: false, CACHE_ENABLED: false, PRESENCE_PREFIX: `bench-fleet${flushMs}`, PRESENCE_TTL_MS: 60_000 / TIME_SCALE, PRESENCE_FLUSH_MS: flushMs / TIME_SCALE, PRESENCE_TIMEOUT_MS: 10_000 }))
  }
  let running = true
  let round = 0
  let heartbeats = 0
  const clients = (async () => {
    while (running) {
      const started = Date.now()
      for (let from = 0; from < FLEET_USERS; from += 1000) {
        await Promise.all(Array.from({ length: 1000 }, async (_v, i) => {
          heartbeats++
          await apps[(from + i + round) % 4].presence.heartbeat(`user${from + i}`)
        }))
      }
      round++
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, everyMs - (Date.now() - started))))
    }
  })()
  while (round < 5) await new Promise((resolve) => setTimeout(resolve, 100)) // joins, then each instance's first sight of each user (4 rounds)
  const billed = (): number => apps.reduce((n, app) => n + app.connections.usage.entries().filter((e) => e.feature === 'presence').reduce((m, e) => m + e.commands, 0), 0)
  const ran0 = await commandsRun(admin)
  const billed0 = billed()
  const beats0 = heartbeats
  await new Promise((resolve) => setTimeout(resolve, windowMs))
  const result = { ran: await commandsRun(admin) - ran0, billed: billed() - billed0, heartbeats: heartbeats - beats0 }
  running = false
  await clients
  for (const app of apps) await app.close()
  const perRealMinute = (n: number): number => n * 60_000 / windowMs / TIME_SCALE
  return { ran: perRealMinute(result.ran), billed: perRealMinute(result.billed), heartbeats: perRealMinute(result.heartbeats) }
}

async function fleet (redisUrl: string, admin: Redis): Promise<void> {
  const windowMs = Number(process.env.BENCH_PRESENCE_WINDOW_MS ?? 20_000)
  process.stdout.write(`\nbilled commands per minute: ${FLEET_USERS} users online on 4 instances, heartbeat every 30 s, TTL 60 s (time scaled ${TIME_SCALE}x down, ${windowMs / 1000} s window), INFO commandstats\n`)
  const direct = await fleetPerMinute({ REDIS_URL: redisUrl }, admin, 0, windowMs)
  const coalesced = await fleetPerMinute({ REDIS_URL: redisUrl }, admin, 5000, windowMs)
  const before = 9 * direct.heartbeats
  row('heartbeats per minute', direct.heartbeats.toFixed(0))
  row('before: one 9-command script per heartbeat', before.toFixed(0))
  row('PRESENCE_FLUSH_MS=0: every heartbeat at once (ran / billed)', `${direct.ran.toFixed(0)} / ${direct.billed.toFixed(0)}`, before / direct.ran)
  row('after: PRESENCE_FLUSH_MS=5000, the default (ran / billed)', `${coalesced.ran.toFixed(0)} / ${coalesced.billed.toFixed(0)}`, before / coalesced.ran)
  row('  formula: 4 x (12 flushes x 4 + 2 sweeps x 4) per minute', String(4 * (12 * 4 + 2 * 4)))
  row('  fewer than before (target >= 100x)', `${(before / coalesced.ran).toFixed(0)}x`)
}

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const rest = await startRestServer(cleanups, redis)
  const direct = new Redis(redis.url)
  try {
    if (process.env.BENCH_PRESENCE_PARTS === 'fleet') {
      await fleet(redis.url, direct)
      return
    }
    const app = await bootApp({ REDIS_URL: redis.url, PRESENCE_PREFIX: 'bench-p' }, (f) => {
      f.post<{ Body: { status?: string } }>('/hand/heartbeat', async (request) => {
        const user = String(request.headers['x-user-id'])
        await direct.multi().zadd('bench-h:online', Date.now(), user).hset(`bench-h:info:${user}`, 'status', request.body?.status ?? 'online', 'lastSeen', Date.now()).exec()
        return { userId: user, online: true }
      })
    }, { presence: { identify: (request) => String(request.headers['x-user-id']) } })
    let n = 0
    const heartbeat = (url: string) => async () => await app.inject({ method: 'POST', url, headers: { 'x-user-id': `user${n++ % USERS}`, 'content-type': 'application/json' }, payload: '{"status":"online"}' })
    await opsPerSecond(500, heartbeat('/presence/heartbeat'))
    await opsPerSecond(500, heartbeat('/hand/heartbeat'))
    const r = await compare(5, async () => await opsPerSecond(2000, heartbeat('/hand/heartbeat')), async () => await opsPerSecond(2000, heartbeat('/presence/heartbeat')))
    process.stdout.write(`heartbeats through the route (inject), ${USERS} distinct users, 5 alternating pairs of 2 s, medians\n`)
    row('hand-written ioredis MULTI ZADD + HSET', `${r.base.toFixed(0)} req/s`)
    row('POST /presence/heartbeat (tcp, one Lua script)', `${r.ours.toFixed(0)} req/s`, r.ratio)

    const before = app.presence.stats().redisCommands
    for (let i = 0; i < 100; i++) await app.presence.heartbeat(`counted${i}`)
    row('round trips per joining heartbeat, tcp (target exactly 1)', ((app.presence.stats().redisCommands - before) / 100).toFixed(2))
    await app.close()

    const onRest = await bootApp({ UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token, PRESENCE_PREFIX: 'bench-pr' })
    const requests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
    const restBefore = requests()
    for (let i = 0; i < 100; i++) await onRest.presence.heartbeat(`counted${i}`)
    row('HTTP requests per joining heartbeat, rest (target exactly 1)', ((requests() - restBefore) / 100).toFixed(2))
    await onRest.close()

    const counting = await bootApp({ REDIS_URL: redis.url, PRESENCE_PREFIX: 'bench-pc', PRESENCE_TTL_MS: 3_600_000 })
    const fill = async (total: number): Promise<void> => {
      const now = Date.now()
      for (let start = 0; start < total; start += 10_000) {
        const pipeline = direct.pipeline()
        for (let i = start; i < Math.min(total, start + 10_000); i++) pipeline.zadd('bench-pc:presence:online', now, `u${i}`)
        await pipeline.exec()
      }
    }
    await fill(1_000)
    await medianLatency(500, async () => await counting.presence.count()) // warm-up
    const small = await medianLatency(500, async () => await counting.presence.count())
    await fill(100_000)
    const large = await medianLatency(500, async () => await counting.presence.count())
    process.stdout.write('\ncount() latency, median of 500 calls\n')
    row('1 000 online', `${small.toFixed(3)} ms`)
    row('100 000 online (target within 2x)', `${large.toFixed(3)} ms`, large / small)
    await counting.close()

    await expiries(redis.url, direct)
    await fleet(redis.url, direct)
  } finally {
    direct.disconnect()
    await cleanups.run()
  }
}
