import t, { type Test } from 'tap'
import { eventually } from '../helpers/build'
import { counter, namespace, startHarness, type Harness, type OpenTier } from '../helpers/contract-harness'
import { memoryPresenceStore, redisPresenceStore, type PresenceEvent, type PresenceStore, type PresenceTimes } from '../../lib/presence/store'
import type { Tier } from '../../lib/resolve-tier'

// The presence store contract: who is online, whatever holds it. A heartbeat
// makes a user online (a `join` the first time, a `status` event when the
// status changes, nothing otherwise); a user is online while one of their
// devices beat within the TTL; leave of the last live device is a `leave`;
// count, list (most recent first, paged) and get see only users online at
// `now`; sweep removes the users whose TTL passed, once, with a `leave` each;
// lastSeen outlives the user's presence; every event is published for every
// instance; what the meter is told is what Redis ran.
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

  const { billed } = impl
  if (billed === null) return
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
      await store.sweep(now) // sweeps b
      await store.sweep(now) // nothing to sweep
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
