import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { build, eventually } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import type { EnvInput } from '../lib/config'
import type { Tier } from '../lib/resolve-tier'
import type { PresenceEvent } from '../lib/presence/store'

// fastify.presence: one spec per tier, then several instances and faults.
// TTLs are short and expiry is awaited by polling with a deadline.

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, PRESENCE_TIMEOUT_MS: 300, PRESENCE_PREFIX: 'pspec', PRESENCE_TTL_MS: 300 }
const as = (user: string): Record<string, string> => ({ 'x-user-id': user })

let namespaces = 0

function spec (t: Test, tier: Tier, sharedEnv: (extra?: EnvInput) => EnvInput): void {
  // Tests share one Redis: each gets its own namespace.
  const envFor = (extra: EnvInput = {}): EnvInput => sharedEnv({ PRESENCE_PREFIX: `pspec${++namespaces}`, ...extra })
  t.test(`${tier}: heartbeat makes a user online, with status and meta`, async (t) => {
    const { app } = await build(t, envFor({ PRESENCE_TTL_MS: 60_000 }))
    t.equal(app.presence.tier, tier)
    const first = await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('ada'), payload: { status: 'busy', meta: { room: 'r1' } } })
    t.equal(first.statusCode, 200)
    t.same(first.json(), { userId: 'ada', online: true, joined: true })
    const again = await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('ada'), payload: { status: 'busy', meta: { room: 'r1' } } })
    t.same(again.json(), { userId: 'ada', online: true, joined: false }, 'a second heartbeat is not a join')
    t.equal(await app.presence.isOnline('ada'), true)
    t.match(await app.presence.get('ada'), { userId: 'ada', status: 'busy', meta: { room: 'r1' }, lastSeen: Number })
    t.equal(await app.presence.count(), 1)
    t.match((await app.inject('/presence/ada')).json(), { userId: 'ada', online: true, status: 'busy' })
    t.match((await app.inject('/presence/nobody')).json(), { userId: 'nobody', online: false, lastSeen: null })
  })

  t.test(`${tier}: without heartbeats a user goes offline and leave fires once; lastSeen stays`, async (t) => {
    const { app } = await build(t, envFor())
    const events: PresenceEvent[] = []
    app.presence.on('join', (e) => events.push(e))
    app.presence.on('leave', (e) => events.push(e))
    await app.presence.heartbeat('bob')
    await eventually(async () => !(await app.presence.isOnline('bob')), 3000, 'offline by TTL')
    await eventually(() => events.some((e) => e.type === 'leave'), 3000, 'the leave event')
    await new Promise((resolve) => setTimeout(resolve, 400)) // two more sweeps: still one leave
    t.same(events.map((e) => `${e.type}:${e.userId}`), ['join:bob', 'leave:bob'])
    t.type(await app.presence.lastSeen('bob'), 'number')
    t.match((await app.inject('/presence/bob')).json(), { online: false, lastSeen: Number })
    t.equal(await app.presence.count(), 0)
  })

  t.test(`${tier}: status changes are events`, async (t) => {
    const { app } = await build(t, envFor({ PRESENCE_TTL_MS: 60_000 }))
    const events: PresenceEvent[] = []
    app.presence.on('status', (e) => events.push(e))
    await app.presence.heartbeat('cy', { status: 'online' })
    await app.presence.heartbeat('cy', { status: 'away', meta: { since: 1 } })
    await app.presence.heartbeat('cy', { status: 'away', meta: { since: 1 } })
    await eventually(() => events.length >= 1, 3000, 'status event')
    await new Promise((resolve) => setTimeout(resolve, 50))
    t.same(events, [{ type: 'status', userId: 'cy', status: 'away', meta: { since: 1 } }])
  })

  t.test(`${tier}: several devices count once; the user leaves with the last one`, async (t) => {
    const { app } = await build(t, envFor({ PRESENCE_TTL_MS: 60_000 }))
    await app.presence.heartbeat('dee', { device: 'phone' })
    await app.presence.heartbeat('dee', { device: 'laptop' })
    t.equal(await app.presence.count(), 1)
    t.equal((await app.inject({ method: 'DELETE', url: '/presence?device=phone', headers: as('dee') })).statusCode, 204)
    t.equal(await app.presence.isOnline('dee'), true, 'still on the laptop')
    await app.presence.leave('dee', { device: 'laptop' })
    t.equal(await app.presence.isOnline('dee'), false)
  })

  t.test(`${tier}: paging through who is online`, async (t) => {
    const { app } = await build(t, envFor({ PRESENCE_TTL_MS: 60_000 }))
    for (let i = 0; i < 7; i++) await app.presence.heartbeat(`user${i}`)
    const seen: string[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const res: { json: <T>() => T } = await app.inject({ url: '/presence/online', query: { limit: '3', ...(cursor !== null ? { cursor } : {}) } })
      const body: { users: Array<{ userId: string }>, cursor: string | null, count: number } = res.json<{ users: Array<{ userId: string }>, cursor: string | null, count: number }>()
      t.equal(body.count, 7)
      seen.push(...body.users.map((u) => u.userId))
      cursor = body.cursor
      pages++
    } while (cursor !== null && pages < 5)
    t.equal(pages, 3)
    t.same([...seen].sort(), Array.from({ length: 7 }, (_v, i) => `user${i}`))
  })

  t.test(`${tier}: validation and identity`, async (t) => {
    const { app } = await build(t, envFor())
    t.equal((await app.inject({ method: 'POST', url: '/presence/heartbeat', payload: {} })).statusCode, 401)
    t.equal((await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('bad user'), payload: {} })).statusCode, 401, 'an invalid identity is no identity')
    t.equal((await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('eve'), payload: { status: 'x'.repeat(65) } })).statusCode, 400)
    t.equal((await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('eve'), payload: { meta: { big: 'x'.repeat(2000) } } })).statusCode, 400)
    t.equal((await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('eve'), payload: { device: 'bad device' } })).statusCode, 400)
    t.equal((await app.inject({ url: '/presence/online?cursor=abc' })).statusCode, 400)
    await t.rejects(app.presence.heartbeat('', {}), { statusCode: 400, message: /userId/ })
  })
}

t.test('the presence specification on every tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  for (const tier of ['tcp', 'rest', 'memory'] as const) spec(t, tier, (extra = {}) => envForTier(tier, redis, rest, { ...BASE, ...extra }))
})

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: two instances share presence; events reach both; an expiry leave fires once`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const env = envForTier(tier, redis, rest, BASE)
    const a = await build(t, env)
    const b = await build(t, env)
    const seen = { a: [] as string[], b: [] as string[] }
    for (const [name, app] of [['a', a.app], ['b', b.app]] as const) {
      app.presence.on('join', (e) => seen[name].push(`join:${e.userId}`))
      app.presence.on('leave', (e) => seen[name].push(`leave:${e.userId}`))
    }
    await a.app.presence.heartbeat('zoe', { status: 'here' })
    t.match(await b.app.presence.get('zoe'), { status: 'here' }, 'a heartbeat on A is visible on B')
    await eventually(() => seen.a.includes('join:zoe') && seen.b.includes('join:zoe'), 3000, 'join on both')
    await eventually(() => seen.a.includes('leave:zoe') && seen.b.includes('leave:zoe'), 3000, 'leave on both')
    await new Promise((resolve) => setTimeout(resolve, 500)) // both instances keep sweeping
    t.same(seen.a, ['join:zoe', 'leave:zoe'], 'A saw one join and one leave')
    t.same(seen.b, ['join:zoe', 'leave:zoe'], 'B too: two sweepers, one leave')
  })
}

t.test('tcp: Redis paused mid-heartbeat answers 503 fast, then works again', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, PRESENCE_TTL_MS: 60_000 })
  await app.presence.heartbeat('fay')
  redis.pause()
  t.teardown(() => redis.resume())
  const started = Date.now()
  // A status change must reach Redis (a heartbeat that changes nothing waits for the flush and answers at once).
  const res = await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('fay'), payload: { status: 'away' } })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { message: /presence is unavailable: Redis did not answer the heartbeat/ })
  t.ok(Date.now() - started < BASE.PRESENCE_TIMEOUT_MS + 300, `answered in ${Date.now() - started} ms`)
  redis.resume()
  await eventually(async () => (await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('fay'), payload: {} })).statusCode === 200, 5000, 'heartbeats work again')
  t.equal(await app.presence.isOnline('fay'), true)
})

t.test('a skipped presence still decorates and answers 503 with the reason', async (t) => {
  const { app } = await build(t, { ...BASE, PRESENCE_ENABLED: 'false' })
  t.equal(app.presence.available, false)
  const res = await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('gil'), payload: {} })
  t.equal(res.statusCode, 503)
  t.match(res.json(), { message: 'presence is unavailable: disabled by PRESENCE_ENABLED=false' })
})

t.test('the device name is validated on every route that takes it', async (t) => {
  const { app } = await build(t, BASE)
  const headers = { 'x-user-id': 'u1' }
  const long = 'd'.repeat(5000)
  t.equal((await app.inject({ method: 'DELETE', url: `/presence?device=${long}`, headers })).statusCode, 400, 'DELETE /presence')
  t.equal((await app.inject({ method: 'DELETE', url: '/presence?device=bad%20name', headers })).statusCode, 400)
  t.equal((await app.inject({ method: 'POST', url: '/presence/heartbeat', headers, payload: { device: long } })).statusCode, 400, 'POST /presence/heartbeat')
  t.equal((await app.inject({ method: 'DELETE', url: '/presence?device=phone', headers })).statusCode, 204, 'a valid one is accepted')
})

for (const [tier, users] of [['tcp', 5000], ['rest', 1000]] as const) {
  t.test(`${tier}: ${users} users stop heartbeating at once: each leave arrives once, within 1.5 x TTL + 1.5 s, with two instances sweeping`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const ttlMs = 2000
    const env = envForTier(tier, redis, rest, { ...BASE, PRESENCE_PREFIX: `mass${++namespaces}`, PRESENCE_TTL_MS: ttlMs, PRESENCE_TIMEOUT_MS: 5000 })
    const a = await build(t, env)
    const b = await build(t, env)
    const leaves = new Map<string, number>()
    b.app.presence.on('leave', (e) => leaves.set(e.userId, (leaves.get(e.userId) ?? 0) + 1))
    for (let from = 0; from < users; from += 500) {
      await Promise.all(Array.from({ length: Math.min(500, users - from) }, async (_v, i) => await a.app.presence.heartbeat(`user${from + i}`)))
    }
    const lastHeartbeat = Date.now()
    const budgetMs = 1.5 * ttlMs + 1500
    await eventually(() => leaves.size === users, budgetMs + 2000, `${users} leaves (got ${leaves.size})`)
    const ms = Date.now() - lastHeartbeat
    t.ok(ms <= budgetMs, `the last leave came ${ms} ms after the last heartbeat (budget ${budgetMs} ms)`)
    await new Promise((resolve) => setTimeout(resolve, ttlMs)) // both instances sweep again meanwhile
    t.same([...leaves.values()].filter((n) => n !== 1), [], 'each user left exactly once')
    t.equal(await a.app.presence.count(), 0)
  })
}

t.test('PRESENCE_FLUSH_MS must be well under the TTL, and says so naming both variables', async (t) => {
  await t.rejects(build(t, { ...BASE, PRESENCE_TTL_MS: 1000, PRESENCE_FLUSH_MS: 500 }), { message: /PRESENCE_FLUSH_MS must be at most a quarter of PRESENCE_TTL_MS \(250 for PRESENCE_TTL_MS=1000\)/ })
  await t.rejects(build(t, { ...BASE, PRESENCE_FLUSH_MS: 'soon' }), { message: /PRESENCE_FLUSH_MS must be a whole number/ })
})

t.test('tcp: a graceful shutdown writes the heartbeats waiting for the flush', async (t) => {
  const redis = await startRedisServer(t)
  const env = { ...BASE, REDIS_URL: redis.url, PRESENCE_PREFIX: `close${++namespaces}`, PRESENCE_TTL_MS: 60_000, PRESENCE_FLUSH_MS: 10_000 }
  const a = await build(t, env)
  const b = await build(t, env)
  await a.app.presence.heartbeat('hal')
  await new Promise((resolve) => setTimeout(resolve, 20))
  const beat = Date.now()
  await a.app.presence.heartbeat('hal') // waits for a flush 10 s away
  t.ok(((await b.app.presence.get('hal'))?.lastSeen ?? 0) < beat, 'not written yet')
  await a.app.close()
  t.ok(((await b.app.presence.get('hal'))?.lastSeen ?? 0) >= beat, 'written on close')
})

t.test('tcp: a heartbeat that changes nothing answers at once while Redis is paused, and is written once it answers', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...BASE, REDIS_URL: redis.url, PRESENCE_TTL_MS: 60_000, PRESENCE_FLUSH_MS: 200 })
  await app.presence.heartbeat('ivy')
  redis.pause()
  t.teardown(() => redis.resume())
  const beat = Date.now()
  const res = await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: as('ivy'), payload: {} })
  t.equal(res.statusCode, 200)
  t.ok(Date.now() - beat < 100, 'at once')
  await new Promise((resolve) => setTimeout(resolve, 700)) // flushes fail meanwhile and keep the heartbeat
  redis.resume()
  await eventually(async () => ((await app.presence.get('ivy').catch(() => null))?.lastSeen ?? 0) >= beat, 5000, 'written by a later flush')
})

// Coalescing (PRESENCE_FLUSH_MS): two instances behind a round-robin balancer, on tcp and rest.
// Stated bounds (docs/presence.md): a join, status change or leave is in Redis when the call
// returns (visible on every instance at once; its event arrives over pub/sub); a heartbeat that
// changes nothing is in Redis within one flush interval; a user who stops heartbeating gets
// their leave within TTL + TTL / 2 + one flush interval of their last heartbeat.
const COALESCE = { ...BASE, SSE_ENABLED: false, QUEUES_ENABLED: false, CACHE_ENABLED: false, PRESENCE_TIMEOUT_MS: 5000 }

/** Every command Redis ran, scripts' own included, minus the INFO calls that read them. */
async function commandsRun (admin: Redis): Promise<number> {
  const info = await admin.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/^cmdstat_([a-z|_-]+):calls=(\d+)/gm)) if (m[1] !== 'info') calls += Number(m[2])
  return calls
}

const presenceBilled = (...apps: FastifyInstance[]): number => apps.reduce((n, app) => n + app.connections.usage.entries().filter((e) => e.feature === 'presence').reduce((m, e) => m + e.commands, 0), 0)
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: coalesced, two instances: joins and status changes visible at once, coalesced heartbeats within one flush interval, a leave within its bound`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const ttlMs = 2000
    const flushMs = 250
    const env = envForTier(tier, redis, rest, { ...COALESCE, PRESENCE_PREFIX: `co${++namespaces}`, PRESENCE_TTL_MS: ttlMs, PRESENCE_FLUSH_MS: flushMs })
    const a = (await build(t, env)).app
    const b = (await build(t, env)).app
    const onB: Array<{ type: string, at: number }> = []
    for (const type of ['join', 'status', 'leave'] as const) b.presence.on(type, (e) => { if (e.userId === 'zoe') onB.push({ type, at: Date.now() }) })

    await a.presence.heartbeat('zoe', { status: 'here' })
    const joined = Date.now()
    t.match(await b.presence.get('zoe'), { status: 'here' }, 'a join is on the other instance when the call returns')
    await eventually(() => onB.some((e) => e.type === 'join'), 1000, 'the join event on B')
    t.ok(onB[0].at - joined < 1000, `join event on B ${onB[0].at - joined} ms after the call returned`)

    await a.presence.heartbeat('zoe', { status: 'busy' })
    t.match(await b.presence.get('zoe'), { status: 'busy' }, 'a status change too')
    await eventually(() => onB.some((e) => e.type === 'status'), 1000, 'the status event on B')

    await sleep(50)
    const beat = Date.now()
    await a.presence.heartbeat('zoe', { status: 'busy' }) // nothing new: coalesced
    await eventually(async () => ((await b.presence.get('zoe'))?.lastSeen ?? 0) >= beat, flushMs + 1000, 'the coalesced heartbeat reaches Redis')
    const landed = Date.now() - beat
    t.ok(landed <= flushMs + 300, `visible on B ${landed} ms after the heartbeat (flush interval ${flushMs} ms)`)

    const last = Date.now()
    await a.presence.heartbeat('zoe', { status: 'busy' }) // the last one, coalesced too
    const boundMs = ttlMs + ttlMs / 2 + flushMs
    await eventually(() => onB.some((e) => e.type === 'leave'), boundMs + 2000, 'the leave on B')
    const leftAfter = (onB.find((e) => e.type === 'leave')?.at ?? 0) - last
    t.ok(leftAfter >= ttlMs && leftAfter <= boundMs + 500, `leave ${leftAfter} ms after the last heartbeat (TTL ${ttlMs}, bound ${boundMs} ms)`)
    t.equal(await a.presence.count(), 0)
    t.ok(Math.abs((await b.presence.lastSeen('zoe') ?? 0) - last) < 50, 'lastSeen is the last (coalesced) heartbeat')
    t.same(onB.map((e) => e.type), ['join', 'status', 'leave'])
  })

  t.test(`${tier}: 1 000 users heartbeating through two instances: count() is exact at every sample, leaves within the bound, billed commands per minute within the formula (INFO commandstats)`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const admin = new Redis(redis.url, { protocol: 2 })
    t.teardown(() => admin.disconnect())
    const ttlMs = 2000
    const flushMs = 250
    const everyMs = 600 // the clients' heartbeat interval (30 s against a 60 s TTL in production)
    const users = 1000
    const stopping = 200
    const env = envForTier(tier, redis, rest, { ...COALESCE, PRESENCE_PREFIX: `cm${++namespaces}`, PRESENCE_TTL_MS: ttlMs, PRESENCE_FLUSH_MS: flushMs })
    const apps = [(await build(t, env)).app, (await build(t, env)).app]
    const leaves = new Map<string, number>()
    apps[1].presence.on('leave', (e) => leaves.set(e.userId, (leaves.get(e.userId) ?? 0) + 1))
    const lastBeat = new Map<string, number>()
    let round = 0
    let stopped = false
    let running = true
    // Round r sends user i's heartbeat to instance (i + r) % 2: every instance sees every user.
    const clients = (async () => {
      while (running) {
        const started = Date.now()
        await Promise.all(Array.from({ length: users }, async (_v, i) => {
          if (stopped && i < stopping) return
          const user = `user${i}`
          lastBeat.set(user, Date.now())
          await apps[(i + round) % 2].presence.heartbeat(user)
        }))
        round++
        await sleep(Math.max(0, everyMs - (Date.now() - started)))
      }
    })()
    t.teardown(async () => { running = false; await clients })

    // count() against the truth: users whose last heartbeat is within the TTL. A sample is
    // skipped when some user's expiry falls within 100 ms of it (the sample itself takes time).
    const samples = { taken: 0, exact: 0, skipped: 0, wrong: [] as string[] }
    async function sample (): Promise<void> {
      const at = Date.now()
      const counted = await apps[samples.taken % 2].presence.count()
      const done = Date.now()
      samples.taken++
      let truth = 0
      let ambiguous = false
      for (const beatAt of lastBeat.values()) {
        if (beatAt > done - ttlMs) truth++
        if (beatAt + ttlMs > at - 100 && beatAt + ttlMs < done + 100) ambiguous = true
      }
      if (ambiguous) samples.skipped++
      else if (counted === truth) samples.exact++
      else samples.wrong.push(`${counted} counted, ${truth} online`)
    }
    const sampleFor = async (ms: number): Promise<void> => {
      const until = Date.now() + ms
      while (Date.now() < until) {
        await sample()
        await sleep(50)
      }
    }

    await eventually(() => round >= 3, 10_000, 'three rounds (joins, then each user known on both instances)')
    await sampleFor(500)
    // Steady state: measure a window of whole seconds.
    const windowMs = 3000
    const ran0 = await commandsRun(admin)
    const billed0 = presenceBilled(...apps)
    const taken0 = samples.taken
    await sampleFor(windowMs)
    const counts = samples.taken - taken0 // each sample is a count(): EVAL + ZCOUNT
    const ran = await commandsRun(admin) - ran0 - 2 * counts
    const billed = presenceBilled(...apps) - billed0 - 2 * counts
    t.equal(billed, ran, `besides the ${counts} count() samples, presence billed exactly what Redis ran (${ran} commands in ${windowMs} ms)`)
    // Per instance: a flush script (EVAL + ZMSCORE + 2 ZADDs) per interval, a sweep (up to 5 more) per TTL / 2.
    const formula = apps.length * ((windowMs / flushMs + 1) * 4 + (windowMs / (ttlMs / 2) + 1) * 5)
    const perMinute = ran * 60_000 / windowMs
    const heartbeatsPerMinute = users * 60_000 / everyMs
    t.ok(ran <= formula, `${ran} commands in ${windowMs} ms, formula ${formula}: ${perMinute.toFixed(0)} per minute for ${heartbeatsPerMinute} heartbeats per minute (9 each before: ${9 * heartbeatsPerMinute})`)
    t.ok(9 * heartbeatsPerMinute / perMinute >= 100, `${(9 * heartbeatsPerMinute / perMinute).toFixed(0)}x fewer than one 9-command script per heartbeat`)

    stopped = true
    const stoppedAt = Date.now()
    const boundMs = ttlMs + ttlMs / 2 + flushMs
    await sampleFor(ttlMs + 600)
    await eventually(() => leaves.size === stopping, boundMs + 2000, `${stopping} leaves (got ${leaves.size})`)
    const leftAfter = Date.now() - stoppedAt
    t.ok(leftAfter <= boundMs + everyMs + 500, `the last leave ${leftAfter} ms after the users stopped (bound ${boundMs} ms after each one's last heartbeat)`)
    await sampleFor(500)
    t.same(samples.wrong, [], `count() exact at every sample (${samples.exact} exact, ${samples.skipped} at an expiry boundary skipped)`)
    t.ok(samples.exact >= 40, `${samples.exact} samples`)
    t.same([...leaves.keys()].filter((u) => Number(u.slice(4)) >= stopping), [], 'nobody still heartbeating left')
    t.same([...leaves.values()].filter((n) => n !== 1), [], 'each left once')
  })
}
