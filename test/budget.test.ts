import t from 'tap'
import { Redis } from 'ioredis'
import { build, eventually } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { createUsage, type BudgetReport } from '../lib/usage'
import type { HealthReport } from '../plugins/connections'

// What each feature is billed, and the daily command budget: the static cost
// of every script is checked against what a real Redis says it ran (INFO
// commandstats counts the commands a script runs), then the budget's
// warnings, /health and the guard on the REST tier.

const QUIET = { SSE_ENABLED: false, PRESENCE_ENABLED: false, QUEUES_ENABLED: false, REDIS_COMMAND_TIMEOUT_MS: 500 }

/** Every command Redis ran, scripts' own included, minus the INFO calls that read them. */
async function commandsRun (admin: Redis): Promise<number> {
  const info = await admin.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)) if (m[1] !== 'info') calls += Number(m[2])
  return calls
}

t.test('the commands counted per feature are the commands Redis ran, Lua scripts\' own included', async (t) => {
  const redis = await startRedisServer(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())
  // Presence sweeps every TTL / 2: a long TTL keeps the sweeper out of the measured window.
  const { app } = await build(t, { REDIS_URL: redis.url, QUEUES_WORKERS: false, PRESENCE_TTL_MS: 600_000, CACHE_L1_MAX_ENTRIES: 0 }, {
    plugins: [async (f) => { f.queues.define('mail', async () => null, { progressChannel: () => null }) }]
  })
  const counted = (): number => app.connections.usage.entries().filter((e) => e.feature !== 'connections').reduce((n, e) => n + e.commands, 0)

  async function everyOperation (round: string): Promise<void> {
    const published = app.sse.stats().published
    await app.cache.set(`${round}a`, 1, { tags: [`${round}x`] })
    await app.cache.set(`${round}b`, 2, { tags: [`${round}x`, `${round}y`] })
    await app.cache.get(`${round}a`)
    await app.cache.getOrSet(`${round}c`, () => 3)
    await app.cache.del(`${round}c`)
    await app.cache.invalidateTags([`${round}x`, `${round}none`])
    const id = await app.sse.publish(`${round}ch`, { n: 1 })
    await app.sse.publish(`${round}ch`, { n: 2 })
    await app.presence.heartbeat(`${round}u`, { device: 'd1' }) // join
    await app.presence.heartbeat(`${round}u`, { device: 'd1' }) // nothing new
    await app.presence.heartbeat(`${round}u`, { device: 'd1', status: 'away' }) // status
    await app.presence.count()
    await app.presence.list()
    await app.presence.get(`${round}u`)
    await app.presence.leave(`${round}u`, { device: 'd1' }) // the last device: a leave
    await app.presence.lastSeen(`${round}u`)
    await app.queues.add('mail', { round }) // BullMQ's own connection and script
    t.ok(id !== '', 'published')
    // Presence's join, status and leave reach browsers as SSE events, published after the call returns.
    await eventually(() => app.sse.stats().published === published + 5, 2000, 'presence events published')
  }

  await everyOperation('warm') // scripts loaded (the first EVALSHA of each is answered NOSCRIPT)
  const before = { ran: await commandsRun(admin), counted: counted() }
  await everyOperation('measured')
  const ran = await commandsRun(admin) - before.ran
  t.ok(ran > 40, `the operations ran ${ran} commands`)
  t.equal(counted() - before.counted, ran, 'counted exactly what Redis ran')
  const cache = app.connections.usage.entries().find((e) => e.feature === 'cache')
  t.ok(cache !== undefined && cache.commands > cache.requests, 'a script is billed more than its one round trip')
  t.ok(app.connections.usage.entries().some((e) => e.feature === 'queues' && e.tier === 'tcp' && e.commands >= 9), 'BullMQ\'s commands are counted as the queues\'')
})

t.test('REST with a budget of 40 and the guard: warnings at 80 % and 100 % once, counts in /health, L2 writes stop, reads go on', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const { app, logs } = await build(t, { ...QUIET, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token, REDIS_DAILY_COMMAND_BUDGET: 40, REDIS_BUDGET_GUARD: true })
  t.equal(app.cache.tier, 'rest')
  const requests = (): number => rest.requests.command + rest.requests.pipeline + rest.requests.multiExec
  let requestsWhenSpent = -1
  for (let i = 0; i < 30; i++) {
    t.equal(await app.cache.getOrSet(`miss${i}`, () => i), i, `miss ${i} is served`)
    if (requestsWhenSpent < 0 && app.connections.usage.shedding) requestsWhenSpent = requests()
  }
  t.ok(requestsWhenSpent > 0, 'the budget was spent along the way')
  t.equal(requests(), requestsWhenSpent, 'no request to Redis once the guard sheds')
  t.equal(app.cache.stats().l2WritesShed, 23, 'boot spends 4 (INFO memory, and the dataset id: EVAL + GET + SET); a miss costs GET + the SET script (1 + TIME, SET, PUBLISH): 7 misses spend 35, the 8th one\'s GET the 40th; 23 writes are shed')
  t.equal(await app.cache.getOrSet('miss29', () => -1), 29, 'what was shed is still served from L1')

  const warnings = logs().filter((l) => /REDIS_DAILY_COMMAND_BUDGET/.test(l.msg))
  t.equal(warnings.filter((l) => /80 %/.test(l.msg)).length, 1, 'the 80 % warning, once')
  t.match(warnings.find((l) => /80 %/.test(l.msg))?.msg, /at this rate it runs out at .*; REDIS_BUDGET_GUARD will shed optional work once it is spent/)
  t.equal(warnings.filter((l) => /budget spent/.test(l.msg)).length, 1, 'the 100 % warning, once')
  t.match(warnings.find((l) => /budget spent/.test(l.msg))?.msg, /REDIS_BUDGET_GUARD is on: the cache stops reading and writing Redis/)

  const health = (await app.inject('/health')).json<HealthReport>()
  // /health's own PING is sent (and counted) even once the budget is spent: it is not optional work; the
  // other commands of connections are the boot's: one INFO memory (maxmemory) and the dataset id script (3).
  t.match(health.budget, { limit: 40, used: 41, remaining: 0, guard: true, shedding: true, features: { cache: { rest: 36 }, connections: { rest: 5 } } })
  t.ok(health.budget.exhaustedAt !== null && health.budget.projectedExhaustion === null, 'when it ran out, and no projection past that')
})

t.test('REST with a budget and no guard: the warnings say so, and writes go on', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const { app, logs } = await build(t, { ...QUIET, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token, REDIS_DAILY_COMMAND_BUDGET: 10 })
  for (let i = 0; i < 4; i++) await app.cache.getOrSet(`k${i}`, () => i)
  t.equal(app.cache.stats().l2WritesShed, 0)
  t.equal(app.connections.usage.budget().used, 24, 'counted past the budget (4 misses of 5 commands, and the boot\'s INFO memory and dataset id script of 3)')
  t.match(logs().find((l) => /budget spent/.test(l.msg))?.msg, /commands are still sent; set REDIS_BUDGET_GUARD=true/)
})

t.test('a bad budget variable fails boot naming it', async (t) => {
  await t.rejects(build(t, { REDIS_DAILY_COMMAND_BUDGET: 'lots' }), /REDIS_DAILY_COMMAND_BUDGET/)
})

t.test('the budget is per UTC day: counts, warnings and the guard start again at 00:00 UTC', async (t) => {
  let now = Date.parse('2026-12-02T12:00:00Z')
  const crossed: Array<[number, BudgetReport]> = []
  const usage = createUsage({ limit: 100, guard: true, now: () => now, onThreshold: (percent, report) => crossed.push([percent, report]) })
  const meter = usage.meter('cache', 'rest')
  for (let i = 0; i < 50; i++) meter(1)
  now += 3_600_000 // 50 commands in the first hour: 50 more take another hour
  t.equal(usage.budget().projectedExhaustion, '2026-12-02T14:00:00.000Z', 'projected from today\'s rate')
  for (let i = 0; i < 30; i++) meter(1)
  t.same(crossed.map(([p]) => p), [80])
  t.equal(crossed[0][1].used, 80)
  meter(25)
  t.same(crossed.map(([p]) => p), [80, 100])
  t.equal(usage.shedding, true)
  t.match(usage.budget(), { used: 105, remaining: 0, exhaustedAt: '2026-12-02T13:00:00.000Z', resetsAt: '2026-12-03T00:00:00.000Z' })
  now = Date.parse('2026-12-03T00:00:00Z')
  t.equal(usage.shedding, false, 'the guard lifts at the reset')
  t.match(usage.budget(), { used: 0, remaining: 100, exhaustedAt: null, features: { cache: { rest: 0 } } })
  meter(90)
  t.same(crossed.map(([p]) => p), [80, 100, 80], 'warned again on the new day')
  t.match(usage.entries(), [{ feature: 'cache', tier: 'rest', requests: 82, commands: 195, today: 90 }])
  const none = createUsage({ limit: null, guard: true, onThreshold: () => t.fail('no budget, no warning') })
  none.meter('sse', 'tcp')(1_000_000)
  t.match(none.budget(), { limit: null, used: 1_000_000, remaining: null, projectedExhaustion: null, shedding: false })
})
