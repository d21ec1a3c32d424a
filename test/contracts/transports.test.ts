import t, { type Test } from 'tap'
import { eventually } from '../helpers/build'
import { namespace, startHarness, type Harness, type OpenTier } from '../helpers/contract-harness'
import { memoryTransport } from '../../lib/tiers/memory'
import type { BusTransport } from '../../lib/bus'
import type { Tier } from '../../lib/resolve-tier'

// The pub/sub transport contract (lib/bus.ts's BusTransport, under the bus):
// listen resolves once the subscription is live, so a message published after
// it is delivered as `deliver(channel, text)`, text as sent; only channels
// listened to are delivered; after unlisten (or close) a channel is no longer
// delivered; listening again works; and when the subscription was lost (the
// subscriber connection dropped, the event stream ended) it comes back by
// itself and calls `resumed(channel)` — never on the first listen — so that
// readers with a history catch up.
//
// Implementations, each run through the same spec below:
//   tcp     tcpTransport (one shared ioredis subscriber, resubscribed on every ready)
//   rest    restTransport (one followed event stream per channel, made again when it ends)
//   memory  memoryTransport (in-process; it has no connection to lose)
// A new tier or transport is done when this suite passes for it: add it to the implementations below.

interface Received {
  transport: BusTransport
  delivered: Array<[string, string]>
  resumed: string[]
  errors: Error[]
  /** Texts delivered on `channel`. */
  on: (channel: string) => string[]
}

interface TransportImplementation {
  tier: Tier
  open: (t: Test) => Received
  /** Subscriptions Redis holds for `channel` (null: not a Redis tier). */
  subscribers: ((channel: string) => Promise<number>) | null
  /** Drops the subscriber's connection under it, as an idle timeout or a restart does (null: nothing to drop). */
  gap: (() => Promise<void>) | null
}

function received (t: Test, make: (deliver: (channel: string, text: string) => void, resumed: (channel: string) => void, onError: (err: Error) => void) => BusTransport): Received {
  const delivered: Array<[string, string]> = []
  const resumed: string[] = []
  const errors: Error[] = []
  const transport = make((channel, text) => delivered.push([channel, text]), (channel) => resumed.push(channel), (err) => errors.push(err))
  t.teardown(async () => await transport.close())
  return { transport, delivered, resumed, errors, on: (channel) => delivered.filter(([c]) => c === channel).map(([, text]) => text) }
}

function redisImplementation (open: OpenTier, harness: Harness): TransportImplementation {
  return {
    tier: open.tier,
    open: (t) => received(t, (deliver, resumed, onError) => open.transport(deliver, resumed, onError)),
    async subscribers (channel) {
      const reply = await harness.admin.pubsub('NUMSUB', channel) as [string, number]
      return Number(reply[1])
    },
    async gap () {
      // Every pub/sub connection on the harness Redis: the tcp subscriber, or the REST bridge's (which ends its streams).
      await harness.admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
    }
  }
}

const memoryImplementation: TransportImplementation = {
  tier: 'memory',
  open: (t) => received(t, (deliver) => memoryTransport(deliver)),
  subscribers: null,
  gap: null
}

function transportContract (t: Test, impl: TransportImplementation): void {
  const { tier, subscribers, gap } = impl

  t.test(`${tier}: once listen resolves, a message published is delivered with its channel and text as sent; resumed is not called`, async (t) => {
    const r = impl.open(t)
    const channel = namespace('bus')
    await r.transport.listen(channel)
    const text = '{"text":"a, b, and ü — \\"quoted\\"","n":[1,2]}'
    await r.transport.publish(channel, text)
    await eventually(() => r.delivered.length === 1, 3000, 'the message')
    t.same(r.delivered, [[channel, text]])
    t.same(r.resumed, [], 'no gap, no resume')
    t.same(r.errors, [], 'no error reported')
  })

  t.test(`${tier}: only channels listened to are delivered; publishing where nobody listens resolves`, async (t) => {
    const r = impl.open(t)
    const listened = namespace('bus')
    const other = namespace('bus')
    await r.transport.listen(listened)
    await r.transport.publish(other, '"not for us"')
    await r.transport.publish(listened, '"marker"')
    await eventually(() => r.on(listened).length === 1, 3000, 'the marker')
    t.same(r.delivered, [[listened, '"marker"']], 'nothing from the other channel')
  })

  t.test(`${tier}: a channel name the bus accepts (a comma in it) is delivered under that name`, async (t) => {
    const r = impl.open(t)
    const channel = `${namespace('bus')},part`
    await r.transport.listen(channel)
    await r.transport.publish(channel, '"x"')
    await eventually(() => r.delivered.length === 1, 3000, 'the message')
    t.same(r.delivered, [[channel, '"x"']], 'channel and text as sent')
  })

  t.test(`${tier}: after unlisten a channel is not delivered; the others are; listening again works`, async (t) => {
    const r = impl.open(t)
    const dropped = namespace('bus')
    const kept = namespace('bus')
    await r.transport.listen(dropped)
    await r.transport.listen(kept)
    await r.transport.unlisten(dropped)
    if (subscribers !== null) await eventually(async () => await subscribers(dropped) === 0, 3000, 'Redis holds no subscription for the channel')
    await r.transport.publish(dropped, '"after unlisten"')
    await r.transport.publish(kept, '"marker"')
    await eventually(() => r.on(kept).length === 1, 3000, 'the marker')
    t.same(r.on(dropped), [], 'nothing after unlisten')
    await r.transport.listen(dropped)
    await r.transport.publish(dropped, '"again"')
    await eventually(() => r.on(dropped).length === 1, 3000, 'delivered again')
    t.same(r.on(dropped), ['"again"'])
  })

  t.test(`${tier}: after close nothing is delivered and no subscription is left`, async (t) => {
    const r = impl.open(t)
    const witness = impl.open(t)
    const channel = namespace('bus')
    await r.transport.listen(channel)
    await r.transport.close()
    if (subscribers !== null) await eventually(async () => await subscribers(channel) === 0, 3000, 'Redis holds no subscription for the channel')
    await witness.transport.listen(channel)
    await witness.transport.publish(channel, '"after close"')
    await eventually(() => witness.delivered.length === 1, 3000, 'another transport got it')
    t.same(r.delivered, [], 'the closed transport got nothing')
  })

  t.test(`${tier}: after the subscriber's connection dropped, the subscription comes back by itself and resumed is called`, { skip: gap === null ? 'in-process: no connection to lose' : false }, async (t) => {
    if (gap === null) return
    const r = impl.open(t)
    const channel = namespace('bus')
    await r.transport.listen(channel)
    await r.transport.publish(channel, '"before"')
    await eventually(() => r.delivered.length === 1, 3000, 'the first message')
    await gap()
    await eventually(() => r.resumed.includes(channel), 5000, 'resumed called for the channel')
    t.same(r.resumed, [channel], 'resumed once, for the channel listened to')
    await r.transport.publish(channel, '"after"')
    await eventually(() => r.delivered.length === 2, 3000, 'the message after the gap')
    t.same(r.on(channel), ['"before"', '"after"'], 'messages flow again')
  })
}

t.test('pub/sub transport contract', async (t) => {
  const harness = await startHarness(t)
  const implementations = [...harness.tiers.map((open) => redisImplementation(open, harness)), memoryImplementation]
  for (const impl of implementations) transportContract(t, impl)
})
