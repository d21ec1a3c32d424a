import type { IncomingHttpHeaders, ServerResponse } from 'node:http'
import type { Unsubscribe } from '../bus'
import type { TierBinding } from '../feature'
import { clientRegistry, type Client, type ClientCounters, type ClientRegistry, type Every } from './clients'
import { compareIds, isEventId, memorySseStore, parseId, redisSseStore, type HistoryOptions, type Replay, type SseEvent, type SseStore } from './store'

// What sse does between its store and its streams: one fan-out subscription
// per instance on the bus of the current tier (memory included: its store
// notifies through the memory bus), held while any stream is open; the replay
// from Last-Event-ID; the catch-up after a gap; the move of connected streams
// to another tier.

const RESET = 'event: reset\ndata: {}\n\n'

export const STREAM_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  'x-accel-buffering': 'no'
}

/** Last-Event-ID, or `?lastEventId=` where the client cannot set headers (EventSource's first connect). */
export function lastEventId (request: { headers: IncomingHttpHeaders, query: unknown }): string | null {
  const header = request.headers['last-event-id']
  if (typeof header === 'string' && header !== '') return header
  const query = (request.query as Record<string, unknown> | undefined)?.lastEventId
  return typeof query === 'string' && query !== '' ? query : null
}

/** The head of an event stream and the client's reconnect delay. */
export function startStream (res: ServerResponse, retryMs: number): void {
  res.writeHead(200, STREAM_HEADERS)
  res.write(`retry: ${retryMs}\n\n`)
  // Node keeps the response head for the life of the response as a tree of
  // some 40 concatenated strings (0.5 KB per idle stream, measured with a
  // heap snapshot); reading it as a number makes V8 flatten it in place.
  void Number((res as unknown as { _header: unknown })._header)
}

/** The store of one binding, the channel its events fan out on, and the subscription to it while held. */
export interface SseBinding { binding: TierBinding, store: SseStore, channel: string, fanout: Promise<Unsubscribe> | null }

export interface SseCounters extends ClientCounters {
  published: number
  redisErrors: number
}

/** The store of a binding: Redis where there are commands, this instance's memory else; both notify through the tier's bus. */
export function openSse (binding: TierBinding, prefix: string, history: HistoryOptions, shed: () => boolean): SseBinding {
  const { commands } = binding
  // On a Redis Cluster with sharded pub/sub the fan-out channel is a shard channel (hash-tagged):
  // SPUBLISH reaches only the nodes of its slot instead of every node.
  const channel = commands?.shardedPubSub === true ? `{${prefix}:sse}:events` : `${prefix}:sse:events`
  const store = commands !== null
    ? redisSseStore(commands, prefix, channel, history, shed)
    : memorySseStore(history, (notice) => { binding.bus.publish(channel, notice).catch(() => {}) })
  return { binding, store, channel, fanout: null }
}

export interface FanoutOptions {
  settings: { heartbeatMs: number, maxBufferBytes: number }
  counters: SseCounters
  current: () => SseBinding | null
  /** The feature's scheduler, for the heartbeat. */
  every: Every
  /** A Redis read failed (`key`, the operation): logged at a bounded rate. */
  warn: (key: string, what: string, err: unknown) => void
}

export interface Fanout {
  readonly clients: ClientRegistry
  /** A slot for a stream not registered yet (authorize, subscribe), unless `max` are taken: the fan-out outlives it. */
  reserve: (max: number) => boolean
  /** The slot is the stream's now, or given back. */
  unreserve: () => void
  /** Subscribed before a stream is answered: once it has our headers, nothing it is sent can be missed. */
  ensure: () => Promise<void>
  /** Replays what the client missed since `lastId`, then what arrived meanwhile. */
  resume: (client: Client, lastId: string | null) => Promise<void>
  /** Redis lost the histories: ids older than now cannot be replayed. */
  historyLost: () => void
  handOver: (from: SseBinding | null, to: SseBinding) => Promise<void>
  close: (old: SseBinding, next: SseBinding | null) => Promise<void>
}

interface FanoutState {
  o: FanoutOptions
  clients: ClientRegistry
  counters: SseCounters
  /** When this instance saw the histories' Redis come back empty: what came after an older id cannot be replayed (0: never). */
  historyLostAt: number
}

/**
 * After a gap in the subscription (a reconnect, a resubscribed REST stream), every connected
 * client gets what was published meanwhile from the history, once and in order, before live
 * events resume: they wait in `pending` while the history is read, as on a first connect.
 */
async function catchUp (s: FanoutState): Promise<void> {
  const { clients, counters, o } = s
  const store = o.current()?.store
  if (store === undefined) return
  const groups = new Map<string, Client[]>()
  for (const client of clients.all()) {
    if (client.pending !== null) continue // still replaying its own history
    client.pending = []
    const key = client.channels.join(',')
    const group = groups.get(key)
    if (group !== undefined) group.push(client)
    else groups.set(key, [client])
  }
  for (const group of groups.values()) {
    const from = group.reduce((min, c) => Math.min(min, c.lastMs >= 0 ? c.lastMs : c.floorMs), Infinity)
    let events: SseEvent[] = []
    try {
      events = (await store.replay(group[0].channels, `${Math.max(0, from - 1)}-0`)).events
    } catch (err) {
      counters.redisErrors++
      o.warn('sse-catch-up', 'sse catch-up after a subscription gap failed', err)
    }
    for (const client of group) {
      for (const event of events) clients.send(client, event, true)
      clients.flushPending(client)
    }
  }
}

/**
 * Without an id there is nothing to replay. A malformed id, one older than the retained
 * history, one beyond the newest event (a client cannot have seen it: forged, or from another
 * database), or one from a history that Redis lost gets `event: reset`; live events then flow as
 * to a new client.
 */
async function resume (s: FanoutState, client: Client, lastId: string | null): Promise<void> {
  const { clients, counters, o } = s
  const store = o.current()?.store
  if (lastId !== null && store !== undefined) {
    const valid = isEventId(lastId)
    let replay: Replay
    try {
      replay = valid ? await store.replay(client.channels, lastId) : { events: [], reset: true, newest: null }
    } catch (err) {
      counters.redisErrors++
      o.warn('sse-replay', 'sse replay failed', err)
      replay = { events: [], reset: true, newest: null } // history unreachable: the client must resync
    }
    const beyond = valid && (replay.newest !== null ? compareIds(lastId, replay.newest) > 0 : parseId(lastId)[0] > Date.now())
    const lost = valid && parseId(lastId)[0] < s.historyLostAt
    // What the client has seen is not sent again (a lagging fan-out may still bring it), unless it cannot have seen it.
    if (valid && !beyond) [client.lastMs, client.lastSeq] = parseId(lastId)
    if (replay.reset || beyond || lost) clients.write(client, RESET)
    for (const event of replay.events) clients.send(client, event, true)
  }
  clients.flushPending(client)
}

export function sseFanout (o: FanoutOptions): Fanout {
  const clients = clientRegistry(o.settings, o.counters, () => releaseWhenIdle(), o.every)
  const s: FanoutState = { o, clients, counters: o.counters, historyLostAt: 0 }
  let reserved = 0

  function onFanout (message: unknown): void {
    const m = message as { c?: unknown, i?: unknown, e?: unknown, d?: unknown } | null
    if (m === null || typeof m !== 'object' || typeof m.c !== 'string' || typeof m.i !== 'string') return
    clients.deliver({ channel: m.c, id: m.i, event: typeof m.e === 'string' ? m.e : '', data: typeof m.d === 'string' ? m.d : '' })
  }

  const subscribe = (of: SseBinding): Promise<Unsubscribe> => of.binding.bus.subscribe(of.channel, onFanout, () => { void catchUp(s) })

  async function release (of: SseBinding): Promise<void> {
    const held = of.fanout
    of.fanout = null
    if (held !== null) await (await held)()
  }

  function releaseWhenIdle (): void {
    const current = o.current()
    if (clients.size > 0 || reserved > 0 || current === null) return
    void release(current)
  }

  return {
    clients,
    reserve (max) {
      if (clients.size + reserved >= max) return false
      reserved++
      return true
    },
    unreserve () {
      reserved--
      releaseWhenIdle()
    },
    async ensure () {
      const current = o.current()
      if (current === null) return
      current.fanout ??= subscribe(current)
      await current.fanout
    },
    resume: async (client, lastId) => await resume(s, client, lastId),
    historyLost: () => { s.historyLostAt = Date.now() },
    // Connected clients stay connected through a move: the fan-out moves to the new tier's bus
    // first, then the store; ids of the new tier are a new sequence, so every event on it is new to
    // them. What other instances published there since each client's last event is caught up.
    async handOver (from, to) {
      if (from?.fanout == null) return
      to.fanout = subscribe(to)
      await to.fanout
    },
    async close (old, next) {
      if (next !== null) clients.forgetIds()
      await release(old)
      if (next?.fanout != null) await catchUp(s)
    }
  }
}
