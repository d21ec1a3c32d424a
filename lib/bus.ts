import { BusClosedError, InvalidChannelError } from './errors'
import type { Tier } from './resolve-tier'

// One pub/sub API for every tier. Channels are ref-counted: the first handler
// of a channel makes the transport listen, the last one to leave makes it
// stop. Messages are JSON, so a payload never contains a raw line break (the
// REST event stream is line-framed).

export type MessageHandler = (message: unknown, channel: string) => void
export type Unsubscribe = () => Promise<void>

export interface Bus {
  readonly tier: Tier
  /**
   * Registers `handler` and resolves once the channel is live. When Redis is
   * away the registration is kept and re-established when it returns; the
   * failure is reported through `onError`, never thrown. `onResume` is called whenever the
   * subscription is live again after a gap (a reconnect, a resubscribed stream): messages
   * published during the gap were not delivered, so readers with a history catch up then.
   */
  subscribe: (channel: string, handler: MessageHandler, onResume?: () => void) => Promise<Unsubscribe>
  /** Rejects (fast) when the tier is down: callers decide whether that matters. */
  publish: (channel: string, message: unknown) => Promise<void>
  /** Channel -> number of local handlers. */
  subscriptions: () => Record<string, number>
  close: () => Promise<void>
}

/** What a tier provides underneath the bus; it calls `deliver` for every message. */
export interface BusTransport {
  listen: (channel: string) => Promise<void>
  unlisten: (channel: string) => Promise<void>
  publish: (channel: string, text: string) => Promise<void>
  close: () => Promise<void>
}

export type Deliver = (channel: string, text: string) => void
/** The transport's subscription to `channel` is live again after a gap. */
export type Resumed = (channel: string) => void

export const MAX_CHANNEL_LENGTH = 256

export function createBus (tier: Tier, makeTransport: (deliver: Deliver, resumed: Resumed) => BusTransport, onError: (err: Error, channel: string) => void): Bus {
  const channels = new Map<string, { handlers: Set<MessageHandler>, resumers: Set<() => void>, live: Promise<void> }>()
  let closed = false

  const deliver: Deliver = (channel, text) => {
    const entry = channels.get(channel)
    if (entry === undefined) return
    let message: unknown
    try {
      message = JSON.parse(text)
    } catch {
      message = text // published by someone else, not through a bus
    }
    for (const handler of [...entry.handlers]) {
      try {
        handler(message, channel)
      } catch (err) {
        onError(err as Error, channel)
      }
    }
  }
  const resumed: Resumed = (channel) => {
    for (const resume of [...(channels.get(channel)?.resumers ?? [])]) {
      try {
        resume()
      } catch (err) {
        onError(err as Error, channel)
      }
    }
  }
  const transport = makeTransport(deliver, resumed)

  function validate (channel: string): void {
    if (typeof channel !== 'string' || channel.length === 0 || channel.length > MAX_CHANNEL_LENGTH || /[\s*?[\]]/.test(channel)) {
      throw new InvalidChannelError(`invalid channel name ${JSON.stringify(String(channel).slice(0, 40))}: 1-${MAX_CHANNEL_LENGTH} characters, no spaces or glob characters`)
    }
  }

  return {
    tier,
    async subscribe (channel, handler, onResume) {
      validate(channel)
      if (closed) throw new BusClosedError()
      let entry = channels.get(channel)
      if (entry === undefined) {
        const live = transport.listen(channel).catch((err: Error) => onError(err, channel))
        entry = { handlers: new Set(), resumers: new Set(), live }
        channels.set(channel, entry)
      }
      entry.handlers.add(handler)
      const resume = onResume !== undefined ? () => onResume() : undefined // its own identity, even if passed twice
      if (resume !== undefined) entry.resumers.add(resume)
      await entry.live
      let done = false
      return async () => {
        if (done) return
        done = true
        const current = channels.get(channel)
        if (current === undefined) return
        current.handlers.delete(handler)
        if (resume !== undefined) current.resumers.delete(resume)
        if (current.handlers.size === 0) {
          channels.delete(channel)
          if (!closed) await transport.unlisten(channel).catch((err: Error) => onError(err, channel))
        }
      }
    },
    async publish (channel, message) {
      validate(channel)
      if (closed) throw new BusClosedError()
      await transport.publish(channel, JSON.stringify(message ?? null))
    },
    subscriptions () {
      return Object.fromEntries([...channels].map(([name, entry]) => [name, entry.handlers.size]))
    },
    async close () {
      if (closed) return
      closed = true
      channels.clear()
      await transport.close()
    }
  }
}
