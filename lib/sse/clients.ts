import type { ServerResponse } from 'node:http'
import { parseId, type SseEvent } from './store'

// The event streams one instance holds, by channel: writing with the
// slow-client cut-off, de-duplicating by id, the heartbeat, and the
// "pending" buffer that keeps live events behind a history replay. Nothing
// here knows about tiers or Redis: the sse plugin feeds it events.

export interface Client {
  res: ServerResponse
  channels: readonly string[]
  /** Last id written to this client, as numbers (-1 before the first): anything not newer is a duplicate. */
  lastMs: number
  lastSeq: number
  /** Live events that arrive while the history is being replayed. */
  pending: SseEvent[] | null
  /** Nothing written since the last heartbeat check. */
  silent: boolean
  /** Where a catch-up starts (ms) when the client's last id says nothing: when it connected, or its last event on a former tier. */
  floorMs: number
}

export interface ClientCounters { delivered: number, replayed: number, slowClientsDropped: number }

export interface ClientRegistry {
  readonly size: number
  readonly channelCount: number
  all: () => IterableIterator<Client>
  /** Registers a stream (it starts with its live events pending) and removes it when it closes. */
  add: (res: ServerResponse, channels: readonly string[]) => Client
  /** Writes raw bytes, cutting off a client whose unsent buffer passes the limit. */
  write: (client: Client, chunk: Buffer | string) => void
  /** Writes the event unless the client already has it; returns whether it wrote. */
  send: (client: Client, event: SseEvent, replayed?: boolean) => boolean
  /** One event to every client of its channel (or to their pending buffers). */
  deliver: (event: SseEvent) => void
  /** Sends what arrived while the client's history was read, minus what the history already sent. */
  flushPending: (client: Client) => void
  /** Forgets every client's last id (a move to another tier, whose ids are a new sequence); the time of its last event stays as its catch-up floor. */
  forgetIds: () => void
  /** Ends every stream and closes its socket. */
  endAll: () => void
  stop: () => void
}

const PING = Buffer.from(': ping\n\n')

/** One SSE frame: multi-line data becomes several `data:` lines. */
export function frame (event: SseEvent): string {
  const name = event.event !== '' ? `event: ${event.event}\n` : ''
  return `id: ${event.id}\n${name}${event.data.split(/\r\n|\r|\n/).map((line) => `data: ${line}`).join('\n')}\n\n`
}

/** Runs `task` every `ms` until the returned function is called (the feature runtime's scheduler). */
export type Every = (ms: number, task: () => void) => () => void

export function clientRegistry (settings: { heartbeatMs: number, maxBufferBytes: number }, counters: ClientCounters, onEmpty: () => void, every: Every): ClientRegistry {
  const clients = new Set<Client>()
  const byChannel = new Map<string, Set<Client>>()
  let heartbeat: (() => void) | undefined

  function write (client: Client, chunk: Buffer | string): void {
    if (client.res.destroyed) return
    client.silent = false
    client.res.write(chunk)
    // A client that does not read would make us buffer without bound: cut it off.
    if (client.res.writableLength > settings.maxBufferBytes) {
      counters.slowClientsDropped++
      client.res.destroy()
    }
  }

  function sendFrame (client: Client, ms: number, seq: number, chunk: Buffer | string): boolean {
    if (ms < client.lastMs || (ms === client.lastMs && seq <= client.lastSeq)) return false
    client.lastMs = ms
    client.lastSeq = seq
    write(client, chunk)
    return true
  }

  function send (client: Client, event: SseEvent, replayed = false): boolean {
    const [ms, seq] = parseId(event.id)
    const sent = sendFrame(client, ms, seq, frame(event))
    if (sent) counters[replayed ? 'replayed' : 'delivered']++
    return sent
  }

  function startHeartbeat (): void {
    if (heartbeat !== undefined) return
    // Only streams that were silent since the last check need a ping (a busy
    // stream costs nothing); checking twice per interval means no stream is
    // silent for longer than SSE_HEARTBEAT_MS.
    heartbeat = every(Math.floor(settings.heartbeatMs / 2), () => {
      for (const client of clients) {
        if (client.silent && client.pending === null) write(client, PING)
        client.silent = true
      }
    })
  }

  function remove (client: Client): void {
    if (!clients.delete(client)) return
    for (const channel of client.channels) {
      const set = byChannel.get(channel)
      set?.delete(client)
      if (set?.size === 0) byChannel.delete(channel)
    }
    if (clients.size > 0) return
    heartbeat?.()
    heartbeat = undefined
    onEmpty()
  }

  return {
    get size () { return clients.size },
    get channelCount () { return byChannel.size },
    all: () => clients.values(),
    add (res, channels) {
      const client: Client = { res, channels: [...new Set(channels)], lastMs: -1, lastSeq: -1, pending: [], silent: false, floorMs: Date.now() }
      clients.add(client)
      for (const channel of client.channels) {
        let set = byChannel.get(channel)
        if (set === undefined) byChannel.set(channel, set = new Set())
        set.add(client)
      }
      res.on('close', () => remove(client))
      startHeartbeat()
      return client
    },
    write,
    send,
    deliver (event) {
      const targets = byChannel.get(event.channel)
      if (targets === undefined) return
      const [ms, seq] = parseId(event.id)
      // Encoded once per event: a string would be measured and encoded again for every client.
      const chunk = Buffer.from(frame(event))
      let sent = 0
      for (const client of targets) {
        if (client.pending !== null) client.pending.push(event)
        else if (sendFrame(client, ms, seq, chunk)) sent++
      }
      counters.delivered += sent
    },
    flushPending (client) {
      const pending = client.pending ?? []
      client.pending = null
      for (const event of pending) send(client, event)
    },
    forgetIds () {
      for (const client of clients) {
        client.floorMs = Math.max(client.floorMs, client.lastMs)
        ;[client.lastMs, client.lastSeq] = [-1, -1]
      }
    },
    endAll () {
      for (const client of [...clients]) {
        // Close the socket too: a keep-alive connection would hold server.close() until the client drops it.
        client.res.end(() => client.res.destroy())
        remove(client)
      }
    },
    stop () {
      heartbeat?.()
      heartbeat = undefined
    }
  }
}
