import { Redis } from 'ioredis'
import { teardownList, bootApp, compare, opsPerSecond, row } from './helpers'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'

// Presence (issue targets in brackets):
//  heartbeats/s through POST /presence/heartbeat on tcp, 10 000 distinct users,
//    vs a hand-written route doing the same writes with ioredis (ZADD + HSET in MULTI)
//  commands per heartbeat on tcp and rest                     [exactly 1]
//  count() latency at 100 000 online users vs at 1 000        [within 2x]

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

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const rest = await startRestServer(cleanups, redis)
  const direct = new Redis(redis.url)
  try {
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
    row('commands per heartbeat, tcp (target exactly 1)', ((app.presence.stats().redisCommands - before) / 100).toFixed(2))
    await app.close()

    const onRest = await bootApp({ UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token, PRESENCE_PREFIX: 'bench-pr' })
    const requests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
    const restBefore = requests()
    for (let i = 0; i < 100; i++) await onRest.presence.heartbeat(`counted${i}`)
    row('HTTP requests per heartbeat, rest (target exactly 1)', ((requests() - restBefore) / 100).toFixed(2))
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
  } finally {
    direct.disconnect()
    await cleanups.run()
  }
}
