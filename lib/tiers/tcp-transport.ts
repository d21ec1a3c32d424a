import type { BusTransport, Deliver, Resumed } from '../bus'
import { closeTcp, duplicateTcp, type TcpClient } from './tcp'
import { withTimeout } from '../deadline'

// One subscriber connection per instance, made on first use. SUBSCRIBE is
// only sent on a ready connection (ioredis 5 silently loses one sent before
// `ready`), and every `ready` after a reconnect subscribes all wanted
// channels again, so a Redis restart does not leave the bus deaf.

export function tcpTransport (publisher: TcpClient, commandTimeoutMs: number, onError: (err: Error) => void) {
  return (deliver: Deliver, resumed: Resumed): BusTransport => {
    const wanted = new Set<string>()
    let subscriber: TcpClient | undefined
    let closed = false

    function connection (): TcpClient {
      if (subscriber !== undefined) return subscriber
      const sub = duplicateTcp(publisher, 'redis-tiers-subscriber')
      sub.on('error', onError)
      sub.on('message', (channel: string, text: string) => deliver(channel, text))
      let connectedBefore = false
      sub.on('ready', () => {
        // The first `ready` is listen()'s to use; every later one follows a gap in the subscription.
        const gap = connectedBefore
        connectedBefore = true
        if (!gap || wanted.size === 0) return
        const channels = [...wanted]
        sub.subscribe(...channels).then(() => { for (const channel of channels) if (wanted.has(channel)) resumed(channel) }, onError)
      })
      sub.connect().catch(() => {}) // reported through `error`
      subscriber = sub
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
        const sub = connection()
        await untilReady(sub)
        await sub.subscribe(channel) // confirmed before we resolve; a repeat SUBSCRIBE is harmless
      },
      async unlisten (channel) {
        wanted.delete(channel)
        if (subscriber?.status === 'ready') await subscriber.unsubscribe(channel)
      },
      async publish (channel, text) {
        await publisher.publish(channel, text)
      },
      async close () {
        if (closed) return
        closed = true
        wanted.clear()
        if (subscriber !== undefined) await closeTcp(subscriber, commandTimeoutMs)
      }
    }
  }
}
