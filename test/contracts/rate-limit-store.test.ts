import t, { type Test } from 'tap'
import { counter, namespace, startHarness, type OpenTier } from '../helpers/contract-harness'
import { limitId, memoryRateLimitStore, redisRateLimitStore, type RateLimitRule, type RateLimitStore } from '../../lib/rate-limit/store'
import type { Tier } from '../../lib/resolve-tier'

// The rate-limit store contract: a fixed window allows exactly `limit`
// requests per key per window and then refuses until the window ends; a
// sliding window allows `limit` within any window, weighting the previous
// window by how much of it still overlaps, and does not count what it
// refuses; instances sharing a store share the count; keys reach Redis
// hashed; one decision is one round trip, and what the meter is told is what
// Redis ran.
//
// Implementations, each run through the same spec below:
//   tcp     redisRateLimitStore over the tcp driver's commands
//   rest    redisRateLimitStore over the rest driver's commands
//   memory  memoryRateLimitStore (this process only: two instances do not share it)
// A new tier or rate-limit store is done when this suite passes for it.

interface RateLimitImplementation {
  tier: Tier
  /** Two instances' stores over one namespace (memory: each its own). */
  open: (prefix: string) => [RateLimitStore, RateLimitStore]
  shared: boolean
  billed: (() => number) | null
  /** Round trips sent so far (null: memory). */
  sent: (() => number) | null
}

function redisImplementation (open: OpenTier): RateLimitImplementation {
  const { meter, total } = counter()
  const one = open.commands(meter)
  const two = open.commands(meter)
  return {
    tier: open.tier,
    shared: true,
    billed: total,
    sent: () => one.sent() + two.sent(),
    open: (prefix) => [redisRateLimitStore(one, prefix), redisRateLimitStore(two, prefix)]
  }
}

const memoryImplementation: RateLimitImplementation = {
  tier: 'memory',
  shared: false,
  billed: null,
  sent: null,
  open: () => [memoryRateLimitStore(), memoryRateLimitStore()]
}

const WINDOW = 60_000
const fixed: RateLimitRule = { limit: 5, windowMs: WINDOW, algorithm: 'fixed-window' }
const sliding: RateLimitRule = { limit: 10, windowMs: WINDOW, algorithm: 'sliding-window' }

/** The start of the key's window that holds `near` (windows start at an offset taken from the key's hash). */
function windowStart (id: string, near: number): number {
  const offset = Buffer.from(id, 'base64url').readUInt32BE(0) % WINDOW
  return Math.floor((near - offset) / WINDOW) * WINDOW + offset
}

function rateLimitContract (t: Test, impl: RateLimitImplementation, commandsRun: () => Promise<number>, keys: (pattern: string) => Promise<string[]>): void {
  const { tier } = impl

  t.test(`${tier}: a fixed window allows exactly its limit, counting down, then refuses until the window ends`, async (t) => {
    const [store] = impl.open(namespace('rl'))
    const id = limitId('client-a')
    const start = windowStart(id, Date.now())
    const decisions = []
    for (let i = 0; i < 7; i++) decisions.push(await store.consume(id, fixed, start + 1000 + i))
    t.same(decisions.map((d) => d.allowed), [true, true, true, true, true, false, false])
    t.same(decisions.map((d) => d.remaining), [4, 3, 2, 1, 0, 0, 0])
    t.equal(decisions[5].resetMs, WINDOW - 1005, 'refused until this key\'s window ends')
    t.equal(decisions[5].limit, 5)
    const next = await store.consume(id, fixed, start + WINDOW)
    t.same({ allowed: next.allowed, remaining: next.remaining, resetMs: next.resetMs }, { allowed: true, remaining: 4, resetMs: WINDOW }, 'the next window starts from zero')
    const other = await store.consume(limitId('client-b'), fixed, start + 2000)
    t.equal(other.allowed, true, 'another key has its own count')
  })

  t.test(`${tier}: two instances ${impl.shared ? 'share one count' : 'each count alone (memory is per instance)'}`, async (t) => {
    const [one, two] = impl.open(namespace('rl'))
    const id = limitId('shared-client')
    const start = windowStart(id, Date.now())
    let allowed = 0
    for (let i = 0; i < 10; i++) if ((await (i % 2 === 0 ? one : two).consume(id, fixed, start + 10 + i)).allowed) allowed++
    t.equal(allowed, impl.shared ? 5 : 10)
  })

  t.test(`${tier}: concurrent decisions for one key never allow more than the limit`, async (t) => {
    const [one, two] = impl.open(namespace('rl'))
    const id = limitId('burst')
    const start = windowStart(id, Date.now())
    const rule = { ...fixed, limit: 20 }
    const decisions = await Promise.all(Array.from({ length: 60 }, async (_, i) => await (i % 2 === 0 ? one : two).consume(id, rule, start + 100)))
    t.equal(decisions.filter((d) => d.allowed).length, impl.shared ? 20 : 40)
  })

  t.test(`${tier}: a sliding window weights the previous window by its overlap and does not count what it refuses`, async (t) => {
    const [store] = impl.open(namespace('rl'))
    const id = limitId('slider')
    const start = windowStart(id, Date.now())
    for (let i = 0; i < 10; i++) t.equal((await store.consume(id, sliding, start + i)).allowed, true, `request ${i + 1} of 10`)
    const refused = await store.consume(id, sliding, start + 20)
    t.equal(refused.allowed, false, 'the 11th in the window is refused')
    t.ok(refused.resetMs > WINDOW - 20 && refused.resetMs <= 2 * WINDOW, `refused for the rest of this window and part of the next (${refused.resetMs} ms)`)
    // A quarter into the next window, three quarters of the previous 10 still count: 7 used, 3 left.
    const quarter = start + WINDOW + WINDOW / 4
    const after = []
    for (let i = 0; i < 4; i++) after.push(await store.consume(id, sliding, quarter + i))
    t.same(after.map((d) => d.allowed), [true, true, true, false], 'three more, then refused')
    t.same(after.slice(0, 3).map((d) => d.remaining), [2, 1, 0])
    // At the start of the window after, almost all of those 3 still count (floor(3 x 0.99998) = 2): 2 + this one used.
    t.equal((await store.consume(id, sliding, start + 2 * WINDOW + 1)).remaining, 7)
    // A window with nothing before it: only this one counts.
    t.equal((await store.consume(id, sliding, start + 4 * WINDOW + 1)).remaining, 9)
  })

  if (impl.billed !== null && impl.sent !== null) {
    const billed = impl.billed
    const sent = impl.sent
    t.test(`${tier}: keys are hashed; each decision is one round trip; what the meter is told is what Redis ran`, async (t) => {
      const prefix = namespace('rl')
      const [store] = impl.open(prefix)
      const id = limitId('203.0.113.7')
      const start = windowStart(id, Date.now())
      const round = async (at: number): Promise<void> => {
        for (let i = 0; i < 7; i++) await store.consume(id, fixed, at + i)
        for (let i = 0; i < 12; i++) await store.consume(id, sliding, at + i)
      }
      await round(start) // every script is in Redis's script cache
      const ran = await commandsRun()
      const counted = billed()
      const trips = sent()
      await round(start + WINDOW)
      t.equal(sent() - trips, 19, 'one round trip per decision')
      const ranNow = await commandsRun()
      t.equal(billed() - counted, ranNow - ran, `billed = ran (${ranNow - ran} commands for 19 decisions)`)
      const names = await keys(`${prefix}:*`)
      t.ok(names.length > 0, 'keys written')
      t.notOk(names.some((name) => name.includes('203.0.113.7')), 'no key carries the client key')
    })
  }
}

t.test('rate-limit store contract', async (t) => {
  const harness = await startHarness(t)
  const implementations: RateLimitImplementation[] = [...harness.tiers.map(redisImplementation), memoryImplementation]
  for (const impl of implementations) rateLimitContract(t, impl, harness.commandsRun, async (pattern) => await harness.admin.keys(pattern))
})
