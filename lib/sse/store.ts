import { LRUCache } from 'lru-cache'
import { lua, type RedisCommands } from '../redis-commands'

// Where SSE events live for replay, one small store per kind of tier behind
// one contract. Event ids are `<ms>-<seq>` on every tier (Redis Stream ids on
// tcp/rest, the same shape in memory), so "everything after id X" is one
// comparison across channels.

export interface SseEvent {
  channel: string
  id: string
  /** Event name ('' for the default `message`). */
  event: string
  /** The data as it goes on the wire (JSON text, or a string as given). */
  data: string
}

export interface Replay {
  events: SseEvent[]
  /** The id asked for is older than the retained history: the client must resync. */
  reset: boolean
  /** The newest retained id of these channels (null: no history): an id beyond it was never sent. */
  newest: string | null
}

export interface SseStore {
  /** Appends to the channel's history and notifies every instance; resolves with the event id. */
  publish: (channel: string, event: string, data: string) => Promise<string>
  /** Events after `lastId` on these channels, oldest first. */
  replay: (channels: readonly string[], lastId: string) => Promise<Replay>
}

const ID = /^(\d{1,16})-(\d{1,16})$/

export function isEventId (id: string): boolean {
  return ID.test(id)
}

/** `<ms>-<seq>` as two numbers, for comparisons in hot loops. */
export function parseId (id: string): [number, number] {
  const dash = id.indexOf('-')
  return [Number(id.slice(0, dash)), Number(id.slice(dash + 1))]
}

/** Orders `<ms>-<seq>` ids; null (no id yet) sorts first. */
export function compareIds (a: string | null, b: string | null): number {
  if (a === b) return 0
  if (a === null) return -1
  if (b === null) return 1
  const [am, as] = a.split('-').map(Number)
  const [bm, bs] = b.split('-').map(Number)
  return am !== bm ? am - bm : as - bs
}

/** `<ms>-<seq>` ids made here, increasing even if the clock steps back (as Redis makes stream ids). */
function eventIds (): () => string {
  let lastMs = 0
  let seq = 0
  return () => {
    const now = Math.max(Date.now(), lastMs)
    seq = now === lastMs ? seq + 1 : 0
    lastMs = now
    return `${now}-${seq}`
  }
}

function sortEvents (events: SseEvent[]): SseEvent[] {
  return events.sort((x, y) => compareIds(x.id, y.id))
}

// One round trip: append (exact cap), refresh the TTL, notify. The notice
// carries the event so that no instance has to read it back.
const PUBLISH_SCRIPT = lua(`
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], cjson.encode({ c = ARGV[6], i = id, e = ARGV[2], d = ARGV[3] }))
return id`, 3)

// A Redis Cluster with sharded pub/sub: the fan-out channel is not in the
// stream's slot, so the notice is sent after the script, as SPUBLISH.
const APPEND_SCRIPT = lua(`
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'e', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return id`, 2)

// One round trip for every channel: entries after the id, the oldest and
// newest retained ids and the length (a full stream whose oldest id is newer
// than the one asked for has dropped events the client missed).
const REPLAY_SCRIPT = lua(`
local out = {}
for i = 1, #KEYS do
  local entries = redis.call('XRANGE', KEYS[i], '(' .. ARGV[1], '+')
  local first = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', 1)
  local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
  local oldest, newest = '', ''
  if first[1] then oldest = first[1][1] end
  if last[1] then newest = last[1][1] end
  out[i] = { entries, oldest, redis.call('XLEN', KEYS[i]), newest }
end
return out`, (keys) => 4 * keys)

export interface HistoryOptions {
  /** Events kept per channel. */
  maxLength: number
  /** How long a channel's history lives after its last event. */
  ttlMs: number
}

/**
 * `shed`: the daily command budget is spent and guarded: events still reach every instance's
 * clients (one PUBLISH), but are not kept for replay (ids are made here, in the same shape).
 */
export function redisSseStore (commands: RedisCommands, prefix: string, busChannel: string, history: HistoryOptions, shed: () => boolean): SseStore {
  const key = (channel: string): string => `${prefix}:sse:${channel}`
  const nextId = eventIds()
  type Replayed = Array<[Array<[string, string[]]>, string, number, string]>
  return {
    async publish (channel, event, data) {
      if (shed()) {
        const notice: FanoutNotice = { c: channel, i: nextId(), e: event, d: data }
        await commands.publish(busChannel, JSON.stringify(notice))
        return notice.i
      }
      if (!commands.shardedPubSub) return String(await commands.eval(PUBLISH_SCRIPT, [key(channel)], [history.maxLength, event, data, history.ttlMs, busChannel, channel]))
      const id = String(await commands.eval(APPEND_SCRIPT, [key(channel)], [history.maxLength, event, data, history.ttlMs]))
      const notice: FanoutNotice = { c: channel, i: id, e: event, d: data }
      await commands.publish(busChannel, JSON.stringify(notice))
      return id
    },
    async replay (channels, lastId) {
      // On a cluster each channel's history is in its own slot: one script per channel, sent together.
      const raw: Replayed = commands.cluster
        ? (await Promise.all(channels.map(async (channel) => await commands.eval(REPLAY_SCRIPT, [key(channel)], [lastId]) as Replayed))).flat()
        : await commands.eval(REPLAY_SCRIPT, channels.map(key), [lastId]) as Replayed
      const events: SseEvent[] = []
      let reset = false
      let newest: string | null = null
      channels.forEach((channel, i) => {
        const [entries, oldest, length, last] = raw[i]
        if (oldest !== '' && compareIds(lastId, String(oldest)) < 0 && Number(length) >= history.maxLength) reset = true
        if (last !== '' && compareIds(String(last), newest) > 0) newest = String(last)
        for (const [id, fields] of entries) {
          const f: Record<string, string> = {}
          for (let j = 0; j + 1 < fields.length; j += 2) f[fields[j]] = fields[j + 1]
          events.push({ channel, id: String(id), event: f.e ?? '', data: f.d ?? '' })
        }
      })
      return { events: sortEvents(events), reset, newest }
    }
  }
}

interface Ring { events: SseEvent[], trimmed: boolean }

/** The notice every store sends to every instance (the publish script's shape): channel, id, event, data. */
export interface FanoutNotice { c: string, i: string, e: string, d: string }

/**
 * Memory tier: a ring buffer per channel; channels idle past the TTL are dropped (LRU-bounded).
 * Events go out through `notify` (the memory bus), as the publish script sends them over Redis.
 */
export function memorySseStore (history: HistoryOptions, notify: (notice: FanoutNotice) => void): SseStore {
  const rings = new LRUCache<string, Ring>({ max: 10_000, ttl: history.ttlMs }) // lru-cache allocates `max` slots up front
  const nextId = eventIds()
  return {
    async publish (channel, event, data) {
      const ring = rings.get(channel) ?? { events: [], trimmed: false }
      const entry: SseEvent = { channel, id: nextId(), event, data }
      ring.events.push(entry)
      if (ring.events.length > history.maxLength) {
        ring.events.splice(0, ring.events.length - history.maxLength)
        ring.trimmed = true
      }
      rings.set(channel, ring) // refreshes the TTL
      notify({ c: channel, i: entry.id, e: event, d: data })
      return entry.id
    },
    async replay (channels, lastId) {
      const events: SseEvent[] = []
      let reset = false
      let newest: string | null = null
      for (const channel of channels) {
        const ring = rings.get(channel)
        if (ring === undefined) continue
        if (ring.trimmed && compareIds(lastId, ring.events[0].id) < 0) reset = true
        const last = ring.events[ring.events.length - 1].id
        if (compareIds(last, newest) > 0) newest = last
        for (const e of ring.events) if (compareIds(e.id, lastId) > 0) events.push(e)
      }
      return { events: sortEvents(events), reset, newest }
    }
  }
}
