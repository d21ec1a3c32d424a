import type { BusTransport, Deliver, Resumed } from '../bus'
import { closeTcp, duplicateTcp, isShardChannel, type TcpClient } from './tcp-client'
import { withTimeout } from '../deadline'
import { reduceRedisError } from '../redact'

// One subscriber connection per instance, made on first use. SUBSCRIBE is
// only sent on a ready connection (ioredis 5 silently loses one sent before
// `ready`), and every `ready` after a reconnect subscribes all wanted
// channels again, so a Redis restart does not leave the bus deaf. On a
// cluster with sharded pub/sub, shard channels ({hash-tagged}) go through a
// second client whose subscribers ioredis keeps one per shard node.

/** The message event and connection name of each kind of subscription. */
const KINDS = {
  classic: { event: 'message', name: 'redis-tiers-subscriber' },
  shard: { event: 'smessage', name: 'redis-tiers-shard-subscriber' }
} as const
type Kind = keyof typeof KINDS

export function tcpTransport (publisher: TcpClient, commandTimeoutMs: number, onError: (err: Error) => void) {
  return (deliver: Deliver, resumed: Resumed): BusTransport => {
    const wanted = new Set<string>()
    const subscribers = new Map<Kind, TcpClient>()
    let closed = false
    const kindOf = (channel: string): Kind => isShardChannel(publisher, channel) ? 'shard' : 'classic'

    function connection (kind: Kind): TcpClient {
      const existing = subscribers.get(kind)
      if (existing !== undefined) return existing
      const k = KINDS[kind]
      // Shard channels exist only on a cluster: ioredis then keeps one subscriber per shard node.
      const sub = duplicateTcp(publisher, k.name, {}, kind === 'shard' ? { shardedSubscribers: true } : {})
      sub.on('error', onError)
      sub.on(k.event, (channel: string, text: string) => deliver(channel, text))
      let connectedBefore = false
      sub.on('ready', () => {
        // The first `ready` is listen()'s to use; every later one follows a gap in the subscription.
        const gap = connectedBefore
        connectedBefore = true
        const channels = [...wanted].filter((channel) => kindOf(channel) === kind)
        if (!gap || channels.length === 0) return
        const again = kind === 'shard' ? Promise.all(channels.map(async (channel) => await sub.ssubscribe(channel))) : sub.subscribe(...channels)
        again.then(() => { for (const channel of channels) if (wanted.has(channel)) resumed(channel) }, onError)
      })
      sub.connect().catch(() => {}) // reported through `error`
      subscribers.set(kind, sub)
      return sub
    }

    async function untilReady (sub: TcpClient): Promise<void> {
      if (sub.status === 'ready') return
      let ready = (): void => {}
      try {
        await withTimeout(new Promise<void>((resolve) => { ready = resolve; sub.once('ready', ready) }), commandTimeoutMs,
          () => new Error(`subscriber connection not ready within ${commandTimeoutMs} ms; the subscription is kept and made when Redis answers`))
      } finally {
        sub.off('ready', ready)
      }
    }

    return {
      async listen (channel) {
        wanted.add(channel)
        const kind = kindOf(channel)
        const sub = connection(kind)
        await untilReady(sub)
        // Confirmed before we resolve; a repeat SUBSCRIBE is harmless.
        if (kind === 'shard') await sub.ssubscribe(channel)
        else await sub.subscribe(channel)
      },
      async unlisten (channel) {
        wanted.delete(channel)
        const kind = kindOf(channel)
        const sub = subscribers.get(kind)
        if (sub?.status !== 'ready') return
        if (kind === 'shard') await sub.sunsubscribe(channel)
        else await sub.unsubscribe(channel)
      },
      async publish (channel, text) {
        const sent = kindOf(channel) === 'shard' ? publisher.spublish(channel, text) : publisher.publish(channel, text)
        await sent.catch((err: unknown) => { throw reduceRedisError(err) }) // ioredis attaches the command, arguments included
      },
      async close () {
        if (closed) return
        closed = true
        wanted.clear()
        await Promise.all([...subscribers.values()].map(async (sub) => await closeTcp(sub, commandTimeoutMs)))
        subscribers.clear()
      }
    }
  }
}
