import t, { type Test } from 'tap'
import { eventually } from '../helpers/build'
import { counter, namespace, startHarness, type Harness, type OpenTier } from '../helpers/contract-harness'
import { memoryPresenceStore, redisPresenceStore, type PresenceEvent, type PresenceStore, type PresenceTimes } from '../../lib/presence/store'
import { coalescingPresenceStore } from '../../lib/presence/coalesce'
import type { Tier } from '../../lib/resolve-tier'

// The presence store contract: who is online, whatever holds it. A heartbeat
// makes a user online (a `join` the first time, a `status` event when the
// status changes, nothing otherwise); a user is online while one of their
// devices beat within the TTL; leave of the last live device is a `leave`;
// count, list (most recent first, paged) and get see only users online at
// `now`; sweep removes the users whose TTL passed, once, with a `leave` each;
// lastSeen outlives the user's presence; every event is published for every
// instance; flush writes coalesced heartbeats of devices still online (never
// one that left or expired, never a score moved back) and folds the sweep in;
// what the meter is told is what Redis ran, and a flush costs the same for
// one user or a hundred.
// Time is the `now` each call is given, so expiry is tested without waiting.
// Event shapes differ on the wire (a Redis sweep sends one message with
// `userIds`, a Redis heartbeat sends `meta` as JSON text); they are compared
// as plugins/presence.ts reads them.
//
// Implementations, each run through the same spec below:
//   tcp     redisPresenceStore over the tcp driver's commands (one Lua script per operation)
//   rest    redisPresenceStore over the rest driver's commands
//   memory  memoryPresenceStore (maps; events through the memory bus's publish)
// A new tier or presence store is done when this suite passes for it: add it to the implementations below.

const TIMES: PresenceTimes = { ttlMs: 60_000, lastSeenTtlMs: 120_000 }

interface Opened { store: PresenceStore, events: () => PresenceEvent[] }

interface PresenceImplementation {
  tier: Tier
  open: (t: Test) => Promise<Opened>
  billed: (() => number) | null
}

/** A published message as plugins/presence.ts reads it: a sweep's batch becomes one leave per user, meta text is parsed. */
function normalise (messages: unknown[]): PresenceEvent[] {
  const events: PresenceEvent[] = []
  for (const raw of messages) {
    const m = raw as PresenceEvent & { userIds?: string[] }
    if (m.type === 'leave' && Array.isArray(m.userIds)) {
      for (const userId of m.userIds) events.push({ type: 'leave', userId })
      continue
    }
    const meta = typeof m.meta === 'string' ? JSON.parse(m.meta) as unknown : m.meta
    events.push({ type: m.type, userId: m.userId, ...(m.status !== undefined ? { status: m.status } : {}), ...(meta !== undefined ? { meta } : {}) })
  }
  return events
}

function redisImplementation (open: OpenTier, harness: Harness): PresenceImplementation {
  const { meter, total } = counter()
  const commands = open.commands(meter)
  return {
    tier: open.tier,
    billed: total,
    async open (t) {
      const prefix = namespace('presence')
      const channel = `${prefix}:presence:events`
      const seen = await harness.watch(t, channel)
      return { store: redisPresenceStore(commands, prefix, channel, TIMES), events: () => normalise(seen) }
    }
  }
}

const memoryImplementation: PresenceImplementation = {
  tier: 'memory',
  billed: null,
  async open () {
    const seen: PresenceEvent[] = []
    return { store: memoryPresenceStore(TIMES, (event) => seen.push(event)), events: () => normalise(seen) }
  }
}

function presenceContract (t: Test, impl: PresenceImplementation, commandsRun: () => Promise<number>): void {
  const { tier } = impl

  t.test(`${tier}: a heartbeat joins once, a new status is a status event, a repeat is nothing`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    t.equal(await store.heartbeat('ann', 'phone', 'online', '{"name":"Ann"}', now), 'join')
    t.equal(await store.heartbeat('ann', 'phone', 'online', '{"name":"Ann"}', now + 1000), null, 'nothing new')
    t.equal(await store.heartbeat('ann', 'laptop', 'online', '{"name":"Ann"}', now + 2000), null, 'a second device is not a join')
    t.equal(await store.heartbeat('ann', 'phone', 'away', '{"name":"Ann"}', now + 3000), 'status')
    t.same(await store.get('ann', now + 3000), { userId: 'ann', status: 'away', meta: { name: 'Ann' }, lastSeen: now + 3000 })
    t.equal(await store.count(now + 3000), 1)
  })

  t.test(`${tier}: leave of one device keeps the user online; of the last one is a leave; lastSeen is kept`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('bob', 'phone', 'online', 'null', now)
    await store.heartbeat('bob', 'laptop', 'online', 'null', now)
    t.equal(await store.leave('bob', 'phone', now + 10), false, 'another device is online')
    t.not(await store.get('bob', now + 10), null, 'still online')
    t.equal(await store.leave('bob', 'laptop', now + 20), true, 'the last device: a leave')
    t.equal(await store.get('bob', now + 20), null, 'offline')
    t.equal(await store.count(now + 20), 0)
    t.equal(await store.lastSeen('bob'), now + 20, 'last seen when leaving')
    t.equal(await store.leave('bob', 'laptop', now + 30), false, 'leaving again is nothing')
    t.equal(await store.lastSeen('nobody'), null, 'an unknown user was never seen')
    t.equal(await store.get('nobody', now), null)
  })

  t.test(`${tier}: a device that stopped beating does not keep its user online`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('cy', 'old', 'online', 'null', now)
    await store.heartbeat('cy', 'new', 'online', 'null', now + TIMES.ttlMs / 2)
    // At now + ttl + 1 the old device is stale: leaving with the new one is leaving with the last.
    t.equal(await store.leave('cy', 'new', now + TIMES.ttlMs + 1), true)
    t.equal(await store.get('cy', now + TIMES.ttlMs + 1), null)
  })

  t.test(`${tier}: count, list and get see only users whose TTL has not passed; list is most recent first and paged`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('u1', 'd', 'online', '{"i":1}', now)
    await store.heartbeat('u2', 'd', 'busy', '{"i":2}', now + 100)
    await store.heartbeat('u3', 'd', 'online', '{"i":3}', now + 200)
    t.equal(await store.count(now + 200), 3)
    t.same(await store.list(now + 200, 0, 10), [
      { userId: 'u3', status: 'online', meta: { i: 3 }, lastSeen: now + 200 },
      { userId: 'u2', status: 'busy', meta: { i: 2 }, lastSeen: now + 100 },
      { userId: 'u1', status: 'online', meta: { i: 1 }, lastSeen: now }
    ])
    t.same((await store.list(now + 200, 1, 1)).map((e) => e.userId), ['u2'], 'offset and limit')
    const later = now + TIMES.ttlMs + 50 // u1's TTL has passed, u2's and u3's have not
    t.equal(await store.count(later), 2)
    t.same((await store.list(later, 0, 10)).map((e) => e.userId), ['u3', 'u2'])
    t.equal(await store.get('u1', later), null, 'not online, though not swept yet')
    t.equal(await store.heartbeat('u1', 'd', 'online', '{"i":1}', later), 'join', 'coming back after the TTL is a join')
  })

  t.test(`${tier}: sweep removes each user whose TTL passed, once, and keeps their lastSeen`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('gone1', 'd', 'online', 'null', now)
    await store.heartbeat('gone2', 'd', 'online', 'null', now + 10)
    await store.heartbeat('stays', 'd', 'online', 'null', now + TIMES.ttlMs)
    t.same(await store.sweep(now + 100), [], 'nothing expired yet')
    const later = now + TIMES.ttlMs + 20
    t.same([...await store.sweep(later)].sort(), ['gone1', 'gone2'])
    t.same(await store.sweep(later), [], 'a second sweep finds nothing (another instance may sweep too)')
    t.equal(await store.count(later), 1)
    t.equal(await store.lastSeen('gone1'), now, 'lastSeen outlives presence')
    t.equal(await store.leave('gone1', 'd', later), false, 'a swept user cannot leave again')
  })

  t.test(`${tier}: join, status, leave and a sweep's leaves are published for every instance`, async (t) => {
    const { store, events } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('ann', 'd', 'online', '{"a":1}', now)
    await store.heartbeat('ann', 'd', 'online', '{"a":1}', now + 1) // nothing new: nothing published
    await store.heartbeat('ann', 'd', 'away', '{"a":2}', now + 2)
    await store.leave('ann', 'd', now + 3)
    await store.heartbeat('bob', 'd', 'online', 'null', now)
    await store.heartbeat('cy', 'd', 'online', 'null', now)
    await store.sweep(now + TIMES.ttlMs + 10)
    const expected: PresenceEvent[] = [
      { type: 'join', userId: 'ann', status: 'online', meta: { a: 1 } },
      { type: 'status', userId: 'ann', status: 'away', meta: { a: 2 } },
      { type: 'leave', userId: 'ann' },
      { type: 'join', userId: 'bob', status: 'online', meta: null },
      { type: 'join', userId: 'cy', status: 'online', meta: null },
      { type: 'leave', userId: 'bob' },
      { type: 'leave', userId: 'cy' }
    ]
    await eventually(() => events().length >= expected.length, 3000, `${expected.length} events (got ${events().length})`)
    const got = events()
    // A sweep's leaves may come in any order.
    t.same([...got.slice(0, 5), ...got.slice(5).sort((a, b) => a.userId.localeCompare(b.userId))], expected)
  })

  t.test(`${tier}: flush writes the heartbeats of live devices, never moves a score back, drops those older than a leave and answers the expired`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('ann', 'phone', 'online', 'null', now)
    await store.heartbeat('bob', 'd', 'busy', '{"b":1}', now)
    const result = await store.flush([
      { userId: 'ann', device: 'phone', at: now + 1000 },
      { userId: 'bob', device: 'd', at: now + 500 },
      { userId: 'cy', device: 'd', at: now + 800 }, // never joined
      { userId: 'ann', device: 'laptop', at: now + 900 } // a device never written
    ], now + 1000, false)
    t.same([...result.expired].sort((a, b) => a.userId.localeCompare(b.userId)), [{ userId: 'ann', device: 'laptop' }, { userId: 'cy', device: 'd' }], 'not live, nobody left after them: to be written as full heartbeats')
    t.same(result.left, [])
    t.same(result.gone, [])
    t.equal(result.online, null, 'no sweep, no count')
    t.same(await store.get('ann', now + 1000), { userId: 'ann', status: 'online', meta: null, lastSeen: now + 1000 })
    t.same(await store.get('bob', now + 1000), { userId: 'bob', status: 'busy', meta: { b: 1 }, lastSeen: now + 500 }, 'status and meta untouched')
    t.equal(await store.get('cy', now + 1000), null, 'a flush never makes anyone online')
    t.equal(await store.count(now + 1000), 2)
    await store.flush([{ userId: 'ann', device: 'phone', at: now + 200 }], now + 1000, false)
    t.equal((await store.get('ann', now + 1000))?.lastSeen, now + 1000, 'an older heartbeat does not move the score back')
    t.equal(await store.leave('ann', 'phone', now + 1100), true)
    const after = await store.flush([{ userId: 'ann', device: 'phone', at: now + 1050 }], now + 1200, false)
    t.same(after, { expired: [], left: [{ userId: 'ann', device: 'phone' }], gone: [], online: null }, 'a heartbeat older than the user\'s leave is dropped')
    t.equal(await store.get('ann', now + 1200), null, 'and does not bring them back')
    t.same((await store.flush([{ userId: 'ann', device: 'phone', at: now + 1150 }], now + 1200, false)).expired, [{ userId: 'ann', device: 'phone' }], 'one after it is the user coming back')
    const late = await store.flush([{ userId: 'bob', device: 'd', at: now + 2 * TIMES.ttlMs }], now + 2 * TIMES.ttlMs, false)
    t.same(late.expired, [{ userId: 'bob', device: 'd' }], 'a device whose TTL passed is answered expired: the user is back')
    t.equal(await store.get('bob', now + 2 * TIMES.ttlMs), null, 'not written by the flush')
  })

  t.test(`${tier}: a leave reads the other devices' liveness from what flushes wrote`, async (t) => {
    const { store } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('dee', 'phone', 'online', 'null', now)
    await store.heartbeat('dee', 'laptop', 'online', 'null', now)
    await store.flush([{ userId: 'dee', device: 'laptop', at: now + TIMES.ttlMs / 2 }], now + TIMES.ttlMs / 2, false)
    t.equal(await store.leave('dee', 'phone', now + TIMES.ttlMs + 1), false, 'the laptop beat (coalesced) within the TTL')
    t.not(await store.get('dee', now + TIMES.ttlMs + 1), null)
    const old = await store.flush([{ userId: 'dee', device: 'phone', at: now + TIMES.ttlMs }], now + TIMES.ttlMs + 1, false)
    t.same(old.left, [{ userId: 'dee', device: 'phone' }], 'a heartbeat older than its device\'s leave is dropped')
    t.equal(await store.leave('dee', 'laptop', now + TIMES.ttlMs + 2), true, 'the last device')
    t.equal(await store.lastSeen('dee'), now + TIMES.ttlMs + 2)
  })

  t.test(`${tier}: a flush with the sweep keeps users it refreshed, removes the expired once, and counts who is left`, async (t) => {
    const { store, events } = await impl.open(t)
    const now = Date.now()
    await store.heartbeat('stays', 'd', 'online', 'null', now)
    await store.heartbeat('goes', 'd', 'online', 'null', now)
    await store.flush([{ userId: 'stays', device: 'd', at: now + TIMES.ttlMs / 2 }], now + TIMES.ttlMs / 2, false)
    const swept = await store.flush([], now + TIMES.ttlMs + 5, true)
    t.same(swept.gone, ['goes'])
    t.equal(swept.online, 1)
    t.same((await store.flush([], now + TIMES.ttlMs + 6, true)).gone, [], 'once')
    t.equal(await store.lastSeen('goes'), now, 'lastSeen of a swept user is their last heartbeat')
    t.equal(await store.lastSeen('stays'), now + TIMES.ttlMs / 2, 'an online user\'s lastSeen is their last flushed heartbeat')
    const empty = await store.flush([], now + 3 * TIMES.ttlMs, true)
    t.same(empty, { expired: [], left: [], gone: ['stays'], online: 0 }, 'nobody left online')
    await eventually(() => events().filter((e) => e.type === 'leave').length === 2, 3000, 'two leaves')
    t.same(events().filter((e) => e.type === 'leave').map((e) => e.userId), ['goes', 'stays'])
  })

  t.test(`${tier}: coalesced, a heartbeat that changes nothing waits for the tick; joins, status and new devices go at once`, async (t) => {
    const { store: inner, events } = await impl.open(t)
    const store = coalescingPresenceStore(inner, { flushMs: 1000, ttlMs: TIMES.ttlMs, refreshMs: 10 * TIMES.ttlMs })
    const now = Date.now()
    const billedNow = impl.billed ?? (() => 0)
    t.equal(await store.heartbeat('ann', 'phone', 'online', 'null', now), 'join')
    const before = billedNow()
    t.equal(await store.heartbeat('ann', 'phone', 'online', 'null', now + 100), null)
    t.equal(billedNow(), before, 'nothing sent')
    t.equal((await store.get('ann', now + 100))?.lastSeen, now, 'the score waits for the flush')
    t.equal(await store.heartbeat('ann', 'phone', 'away', 'null', now + 200), 'status', 'a status change goes at once')
    t.equal(await store.heartbeat('ann', 'laptop', 'away', 'null', now + 300), null, 'a new device goes at once (not an event)')
    t.equal(await store.heartbeat('ann', 'laptop', 'away', 'null', now + 400), null)
    await store.sweep(now + 500) // the tick
    t.equal((await store.get('ann', now + 500))?.lastSeen, now + 400, 'written by the tick')
    t.equal(await store.heartbeat('ann', 'laptop', 'away', 'null', now + 600), null)
    await store.close?.(now + 700)
    t.equal((await store.get('ann', now + 700))?.lastSeen, now + 600, 'close writes what is pending')
    await inner.sweep(now + 700 + TIMES.ttlMs) // ann expires
    const back = now + 800 + TIMES.ttlMs
    t.equal(await store.heartbeat('ann', 'laptop', 'away', 'null', back), null, 'known here: coalesced')
    await store.sweep(back)
    t.equal((await store.get('ann', back))?.lastSeen, back, 'the flush found her expired and wrote a full heartbeat')
    await eventually(() => events().length >= 4, 3000, 'join, status, leave, join')
    t.same(events().map((e) => e.type), ['join', 'status', 'leave', 'join'])
  })

  const { billed } = impl
  if (billed === null) return

  t.test(`${tier}: one tick writes a hundred users' heartbeats for the price of one`, async (t) => {
    const { store: inner } = await impl.open(t)
    const store = coalescingPresenceStore(inner, { flushMs: 1000, ttlMs: TIMES.ttlMs, refreshMs: 10 * TIMES.ttlMs })
    const now = Date.now()
    const tickCost = async (users: number, at: number): Promise<{ billed: number, ran: number }> => {
      for (let i = 0; i < users; i++) await store.heartbeat(`u${i}`, 'd', 'online', 'null', at)
      const b = billed()
      const r = await commandsRun()
      await store.sweep(at)
      return { billed: billed() - b, ran: await commandsRun() - r }
    }
    for (let i = 0; i < 100; i++) await store.heartbeat(`u${i}`, 'd', 'online', 'null', now) // joins
    await tickCost(1, now + 50) // the flush script is in Redis's script cache
    const one = await tickCost(1, now + 100)
    const hundred = await tickCost(100, now + 200)
    t.same(one, { billed: 4, ran: 4 }, 'EVALSHA, ZMSCORE, two ZADDs')
    t.same(hundred, one, 'the same for a hundred users')
    t.equal((await store.get('u99', now + 200))?.lastSeen, now + 200)
  })

  t.test(`${tier}: what the meter is told is what Redis ran (INFO commandstats)`, async (t) => {
    const { store } = await impl.open(t)
    const everyOperation = async (round: string): Promise<void> => {
      const now = Date.now()
      await store.heartbeat(`${round}a`, 'd1', 'online', 'null', now) // join
      await store.heartbeat(`${round}a`, 'd2', 'online', 'null', now) // nothing new
      await store.heartbeat(`${round}a`, 'd1', 'away', 'null', now) // status
      await store.heartbeat(`${round}b`, 'd1', 'online', 'null', now - TIMES.ttlMs - 1) // joins already expired
      await store.count(now)
      await store.list(now, 0, 10)
      await store.get(`${round}a`, now)
      await store.get(`${round}missing`, now)
      await store.lastSeen(`${round}a`)
      await store.leave(`${round}a`, 'd1', now) // another device online
      await store.leave(`${round}a`, 'd2', now) // the last: a leave
      await store.leave(`${round}a`, 'd2', now) // not online
      await store.flush([{ userId: `${round}c`, device: 'd', at: now }], now, false) // expired: never joined
      await store.heartbeat(`${round}c`, 'd1', 'online', 'null', now)
      await store.heartbeat(`${round}c`, 'd2', 'online', 'null', now)
      await store.flush([{ userId: `${round}c`, device: 'd1', at: now + 1 }, { userId: `${round}c`, device: 'd3', at: now + 1 }], now + 1, false)
      await store.leave(`${round}c`, 'd1', now + 2) // d2 is live
      await store.flush([{ userId: `${round}c`, device: 'd1', at: now + 1 }], now + 2, false) // left after it
      await store.restore(`${round}c`, 'd4', 'online', 'null', now - 10) // older than what is there
      await store.restore(`${round}e`, 'd', 'online', 'null', now) // written
      await store.lastSeen(`${round}missing`)
      await store.sweep(now) // sweeps b
      await store.sweep(now) // nothing to sweep
      await store.flush([{ userId: `${round}c`, device: 'd2', at: now + 3 }], now + 3, true) // a flush with a sweep
    }
    await everyOperation('warm') // the scripts are in Redis's script cache
    const ran = await commandsRun()
    const counted = billed()
    await everyOperation('measured')
    const ranNow = await commandsRun()
    t.ok(billed() - counted > 20, `the measured round is not trivial (${billed() - counted} commands)`)
    t.equal(billed() - counted, ranNow - ran, 'billed = ran')
  })
}

t.test('presence store contract', async (t) => {
  const harness = await startHarness(t)
  const implementations = [...harness.tiers.map((open) => redisImplementation(open, harness)), memoryImplementation]
  for (const impl of implementations) presenceContract(t, impl, harness.commandsRun)
})
