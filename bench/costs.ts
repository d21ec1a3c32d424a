import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { teardownList, bootApp, row } from './helpers'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import type { EnvInput } from '../lib/config'

// What each operation and each idle minute costs in Redis commands, per
// feature and tier: the figures of docs/costs.md's tables and what
// REDIS_DAILY_COMMAND_BUDGET counts. Three counts per row, none of which
// noise can move: round trips (HTTP requests on rest), the commands the
// budget counted, and the commands Redis itself says it ran (INFO
// commandstats, which counts the commands inside Lua scripts too).
// BENCH_IDLE_MS sets the idle window (default 60 s).

interface Cost { requests: number, counted: number, ran: number }

async function commandsRun (admin: Redis): Promise<number> {
  const info = await admin.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)) if (m[1] !== 'info') calls += Number(m[2])
  return calls
}

function totals (app: FastifyInstance, features: string[]): { requests: number, counted: number } {
  const entries = app.connections.usage.entries().filter((e) => features.includes(e.feature))
  return { requests: entries.reduce((n, e) => n + e.requests, 0), counted: entries.reduce((n, e) => n + e.commands, 0) }
}

const ALL = ['connections', 'cache', 'sse', 'presence', 'queues', 'rate-limit']

const settle = async (): Promise<void> => await new Promise((resolve) => setTimeout(resolve, 1000)) // events an op publishes after it returns (presence -> sse)

interface Operation {
  name: string
  features: string[]
  setup?: (app: FastifyInstance, round: number) => Promise<unknown>
  op: (app: FastifyInstance, round: number) => Promise<unknown>
}

/** The cost of `op` alone (run once warm first, so every script is in Redis's cache), once everything it caused has settled. */
async function measure (app: FastifyInstance, admin: Redis, { features, setup, op }: Operation): Promise<Cost> {
  await setup?.(app, 0)
  await op(app, 0)
  await setup?.(app, 1)
  await settle()
  const ran = await commandsRun(admin)
  const before = totals(app, features)
  const everyBefore = totals(app, ALL)
  await op(app, 1)
  await settle()
  const after = totals(app, features)
  // What other features ran meanwhile (a presence sweep falls due every PRESENCE_TTL_MS / 2) is not this operation's.
  const others = totals(app, ALL).counted - everyBefore.counted - (after.counted - before.counted)
  return { requests: after.requests - before.requests, counted: after.counted - before.counted, ran: await commandsRun(admin) - ran - others }
}

const OPERATIONS: Operation[] = [
  { name: 'cache getOrSet, L1 hit', features: ['cache'], op: async (app) => await app.cache.getOrSet('hot', () => 1) },
  { name: 'cache get, L2 hit or miss', features: ['cache'], op: async (app, r) => await app.cache.get(`cold${r}`) },
  { name: 'cache getOrSet, miss (GET + write)', features: ['cache'], op: async (app, r) => await app.cache.getOrSet(`miss${r}`, () => r) },
  { name: 'cached route, miss (a new variant)', features: ['cache'], op: async (app, r) => await app.inject(`/route?v=${r}`) },
  { name: 'cache set, 2 tags (new tags)', features: ['cache'], op: async (app, r) => await app.cache.set(`tagged${r}`, r, { tags: [`a${r}`, `b${r}`] }) },
  { name: 'cache del', features: ['cache'], op: async (app, r) => await app.cache.del(`miss${r}`) },
  { name: 'cache invalidateTags, 1 tag of 10 keys', features: ['cache'], setup: async (app, r) => { for (let i = 0; i < 10; i++) await app.cache.set(`k${r}-${i}`, i, { tags: [`t${r}`] }) }, op: async (app, r) => await app.cache.invalidateTags([`t${r}`]) },
  { name: 'sse publish', features: ['sse'], op: async (app, r) => await app.sse.publish(`ch${r}`, { r }) },
  { name: 'presence heartbeat, join (+ its sse event)', features: ['presence', 'sse'], op: async (app, r) => await app.presence.heartbeat(`join${r}`) },
  { name: 'presence heartbeat, already online (coalesced: the flush that writes it)', features: ['presence', 'sse'], op: async (app) => await app.presence.heartbeat('steady') },
  { name: 'presence heartbeats of 100 users already online (one flush)', features: ['presence', 'sse'], setup: async (app) => { for (let i = 0; i < 100; i++) await app.presence.heartbeat(`many${i}`) }, op: async (app) => { for (let i = 0; i < 100; i++) await app.presence.heartbeat(`many${i}`) } },
  { name: 'presence count / get / list (each)', features: ['presence'], op: async (app) => await app.presence.count() },
  { name: 'rate limit, fixed window, a window\'s first', features: ['rate-limit'], op: async (app, r) => await app.rateLimiter.consume(`new${r}`, { limit: 10, window: '1m' }) },
  { name: 'rate limit, fixed window, within a window', features: ['rate-limit'], op: async (app) => await app.rateLimiter.consume('steady', { limit: 1e6, window: '1m' }) },
  { name: 'rate limit, sliding window, a window\'s first', features: ['rate-limit'], op: async (app, r) => await app.rateLimiter.consume(`new${r}`, { limit: 10, window: '1m', algorithm: 'sliding-window' }) },
  { name: 'rate limit, sliding window, within a window', features: ['rate-limit'], op: async (app) => await app.rateLimiter.consume('steady', { limit: 1e6, window: '1m', algorithm: 'sliding-window' }) },
  { name: 'queues add (producer)', features: ['queues'], op: async (app, r) => await app.queues.add('bench', { r }) },
  { name: '/health (PING per tier in use, and queue counts)', features: ['connections', 'queues'], op: async (app) => await app.inject('/health') }
]

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const rest = await startRestServer(cleanups, redis)
  const admin = new Redis(redis.url)
  const idleMs = Number(process.env.BENCH_IDLE_MS ?? 60_000)
  const tiers: Record<'tcp' | 'rest', EnvInput> = {
    tcp: { REDIS_URL: redis.url },
    rest: { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }
  }
  try {
    for (const [tier, env] of Object.entries(tiers)) {
      await admin.flushall() // the same users join on each tier
      // A flush every 500 ms: the flush of a coalesced heartbeat falls within the second an operation is given to settle.
      const app = await bootApp({ ...env, QUEUES_PREFIX: `costs-${tier}`, QUEUES_WORKERS: false, PRESENCE_FLUSH_MS: 500 }, (f) => {
        f.queues.define('bench', async () => null, { progressChannel: () => null, removeOnComplete: true })
        f.get('/route', { config: { cache: { ttl: 60, query: ['v'] } } }, async () => ({ ok: true }))
      }, { demoRoutes: false })
      process.stdout.write(`\n${tier}: one operation (after a warm one), as round trips / commands counted / commands Redis ran\n`)
      for (const operation of OPERATIONS) {
        const c = await measure(app, admin, operation)
        row(`  ${operation.name}`, `${c.requests} / ${c.counted} / ${c.ran}${c.counted === c.ran ? '' : '  (counted differs)'}`)
      }
      await app.close()
    }

    // Idle: an app with every feature on and nothing to do, for a minute.
    process.stdout.write(`\nidle for ${idleMs / 1000} s, every feature on (a queue with a worker on tcp), per minute: commands Redis ran / counted by feature\n`)
    for (const [tier, env] of Object.entries(tiers)) {
      await admin.flushall() // nothing left from the operations above to expire during the window
      const app = await bootApp({ ...env, QUEUES_PREFIX: `idle-${tier}` }, (f) => {
        f.queues.define('idle', async () => null, { progressChannel: () => null })
      }, { demoRoutes: false })
      await new Promise((resolve) => setTimeout(resolve, 2000)) // workers started, first stalled check done
      const ran = await commandsRun(admin)
      const before = new Map(app.connections.usage.entries().map((e) => [e.feature, e.commands]))
      await new Promise((resolve) => setTimeout(resolve, idleMs))
      const perMinute = (n: number): string => (n * 60_000 / idleMs).toFixed(1)
      const counted = app.connections.usage.entries().map((e) => `${e.feature} ${perMinute(e.commands - (before.get(e.feature) ?? 0))}`).join(', ')
      row(`  ${tier}`, `${perMinute(await commandsRun(admin) - ran)} ran / counted: ${counted === '' ? 'none' : counted}`)
      await app.close()
    }
  } finally {
    admin.disconnect()
    await cleanups.run()
  }
}
