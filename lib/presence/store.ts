import { lua, lengthOf, type RedisCommands } from '../redis-commands'

// Who is online, one small store per kind of tier behind one contract. On
// tcp/rest: a sorted set of users scored by their last heartbeat, a sorted set
// of devices per user, and a hash of status/meta/lastSeen; every operation is
// one Lua script (one round trip, Upstash REST runs EVAL too), and the script
// that changes presence publishes the event, so each event fires once no
// matter how many instances sweep. A sweep publishes one `leave` message
// with the `userIds` of its whole batch.

export type PresenceEventType = 'join' | 'leave' | 'status'

export interface PresenceEvent {
  type: PresenceEventType
  userId: string
  status?: string
  meta?: unknown
}

export interface PresenceEntry {
  userId: string
  status: string
  meta: unknown
  lastSeen: number
}

export interface PresenceStore {
  /** Records a heartbeat; resolves with the event it caused ('join', 'status' or null). */
  heartbeat: (userId: string, device: string, status: string, metaJson: string, now: number) => Promise<PresenceEventType | null>
  /**
   * Writes back a heartbeat seen at `at`, without an event and never over a newer one: Redis came
   * back empty and the user never left.
   */
  restore: (userId: string, device: string, status: string, metaJson: string, at: number) => Promise<void>
  /** Removes a device; resolves true when that was the user's last one (a leave). */
  leave: (userId: string, device: string, now: number) => Promise<boolean>
  /** Removes users whose last heartbeat is older than the TTL, at most SWEEP_BATCH per call on Redis; idempotent across instances. */
  sweep: (now: number) => Promise<string[]>
  count: (now: number) => Promise<number>
  /** Online users, most recent first. */
  list: (now: number, offset: number, limit: number) => Promise<PresenceEntry[]>
  /** The user's entry while online, else null. */
  get: (userId: string, now: number) => Promise<PresenceEntry | null>
  /** Last heartbeat, kept PRESENCE_LAST_SEEN_TTL after going offline. */
  lastSeen: (userId: string) => Promise<number | null>
  /** Memory only: who is online here, to hand them over to a shared store when the feature is promoted. */
  online?: (now: number) => OnlineUser[]
}

export interface OnlineUser { userId: string, status: string, metaJson: string, devices: Array<[device: string, lastHeartbeat: number]> }

export interface PresenceTimes {
  ttlMs: number
  lastSeenTtlMs: number
}

// KEYS: online, devices, info. ARGV: user, device, now, ttl, status, meta, lastSeenTtl, channel
const HEARTBEAT = lua(`
local now = tonumber(ARGV[3])
local cutoff = now - tonumber(ARGV[4])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local wasOnline = score and tonumber(score) > cutoff
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local oldStatus = redis.call('HGET', KEYS[3], 'status')
redis.call('HSET', KEYS[3], 'status', ARGV[5], 'meta', ARGV[6], 'lastSeen', now)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
local event = ''
if not wasOnline then event = 'join' elseif oldStatus ~= ARGV[5] then event = 'status' end
if event ~= '' then
  redis.call('PUBLISH', ARGV[8], cjson.encode({ type = event, userId = ARGV[1], status = ARGV[5], meta = ARGV[6] }))
end
return event`, (_keys, event) => event === 'join' || event === 'status' ? 9 : 8)

// KEYS: online, devices, info. ARGV: user, device, at, ttl, status, meta, lastSeenTtl. 1: written; 0: a newer heartbeat is there.
const RESTORE = lua(`
local at = tonumber(ARGV[3])
local device = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not device or tonumber(device) < at then redis.call('ZADD', KEYS[2], at, ARGV[2]) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) >= at then return 0 end
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('HSET', KEYS[3], 'status', ARGV[5], 'meta', ARGV[6], 'lastSeen', at)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 1`, (_keys, written) => Number(written) === 1 ? 7 : 4)

// KEYS: online, devices, info. ARGV: user, device, now, ttl, channel. 1: a leave; 0: other
// devices are online; 2: the user was not online.
const LEAVE = lua(`
local cutoff = tonumber(ARGV[3]) - tonumber(ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 2 end
redis.call('HSET', KEYS[3], 'lastSeen', ARGV[3])
redis.call('PUBLISH', ARGV[5], cjson.encode({ type = 'leave', userId = ARGV[1] }))
return 1`, (_keys, left) => [3, 6, 4][Number(left)] ?? 3)

/** Users one sweep call removes at most: a bounded script, however many expired at once; the plugin calls again while calls come back full. */
export const SWEEP_BATCH = 500

// KEYS: online. ARGV: cutoff, key prefix, channel, batch. One leave message for the whole batch.
const SWEEP = lua(`
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
if #gone == 0 then return gone end
redis.call('ZREM', KEYS[1], unpack(gone))
local devices = {}
for i, user in ipairs(gone) do devices[i] = ARGV[2] .. 'dev:' .. user end
redis.call('DEL', unpack(devices))
redis.call('PUBLISH', ARGV[3], cjson.encode({ type = 'leave', userIds = gone }))
return gone`, (_keys, gone) => lengthOf(gone) > 0 ? 4 : 1)

// KEYS: online. ARGV: cutoff, offset, limit, key prefix
const LIST = lua(`
local users = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '(' .. ARGV[1], 'WITHSCORES', 'LIMIT', ARGV[2], ARGV[3])
local out = {}
for i = 1, #users, 2 do
  local info = redis.call('HMGET', ARGV[4] .. 'info:' .. users[i], 'status', 'meta')
  table.insert(out, { users[i], users[i + 1], info[1] or '', info[2] or 'null' })
end
return out`, (_keys, rows) => 1 + lengthOf(rows))

// KEYS: online, info. ARGV: user
const GET = lua(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return false end
local info = redis.call('HMGET', KEYS[2], 'status', 'meta')
return { ARGV[1], score, info[1] or '', info[2] or 'null' }`, (_keys, row) => Array.isArray(row) ? 2 : 1)

const COUNT = lua("return redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[1], '+inf')", 1)
const LAST_SEEN = lua("return redis.call('HGET', KEYS[1], 'lastSeen')", 1)

type Row = [string, string | number, string | null, string | null]

function entry (row: Row): PresenceEntry {
  return { userId: String(row[0]), lastSeen: Number(row[1]), status: row[2] ?? '', meta: JSON.parse(row[3] ?? 'null') as unknown }
}

export function redisPresenceStore (commands: RedisCommands, prefix: string, channel: string, times: PresenceTimes): PresenceStore {
  // On a Redis Cluster one hash tag puts every presence key in one slot: each script stays one round trip.
  const base = commands.cluster ? `{${prefix}:presence}:` : `${prefix}:presence:`
  const online = `${base}online`
  const keys = (user: string): string[] => [online, `${base}dev:${user}`, `${base}info:${user}`]
  const cutoff = (now: number): number => now - times.ttlMs
  return {
    async heartbeat (userId, device, status, metaJson, now) {
      const event = await commands.eval(HEARTBEAT, keys(userId), [userId, device, now, times.ttlMs, status, metaJson, times.lastSeenTtlMs, channel])
      return event === 'join' || event === 'status' ? event : null
    },
    async restore (userId, device, status, metaJson, at) {
      await commands.eval(RESTORE, keys(userId), [userId, device, at, times.ttlMs, status, metaJson, times.lastSeenTtlMs])
    },
    async leave (userId, device, now) {
      return Number(await commands.eval(LEAVE, keys(userId), [userId, device, now, times.ttlMs, channel])) === 1
    },
    async sweep (now) {
      const gone = await commands.eval(SWEEP, [online], [cutoff(now), base, channel, SWEEP_BATCH])
      return Array.isArray(gone) ? gone.map(String) : []
    },
    async count (now) {
      return Number(await commands.eval(COUNT, [online], [cutoff(now)]))
    },
    async list (now, offset, limit) {
      const rows = await commands.eval(LIST, [online], [cutoff(now), offset, limit, base])
      return Array.isArray(rows) ? rows.map((row) => entry(row as Row)) : []
    },
    async get (userId, now) {
      const row = await commands.eval(GET, [online, `${base}info:${userId}`], [userId])
      if (!Array.isArray(row) || Number(row[1]) <= cutoff(now)) return null
      return entry(row as Row)
    },
    async lastSeen (userId) {
      const raw = await commands.eval(LAST_SEEN, [`${base}info:${userId}`], [])
      return raw === null || raw === undefined || raw === false ? null : Number(raw)
    }
  }
}

interface MemoryUser { devices: Map<string, number>, status: string, meta: string, lastSeen: number }

/** Memory tier: maps, swept by the plugin's timer; events go out through `publish` (the memory bus), as the scripts publish theirs. */
export function memoryPresenceStore (times: PresenceTimes, publish: (event: PresenceEvent) => void): PresenceStore {
  const users = new Map<string, MemoryUser>()
  const lastSeen = new Map<string, number>()
  const isOnline = (u: MemoryUser, now: number): boolean => u.lastSeen > now - times.ttlMs
  const toEntry = (userId: string, u: MemoryUser): PresenceEntry => ({ userId, status: u.status, meta: JSON.parse(u.meta) as unknown, lastSeen: u.lastSeen })
  const event = publish
  return {
    async heartbeat (userId, device, status, metaJson, now) {
      const existing = users.get(userId)
      const wasOnline = existing !== undefined && isOnline(existing, now)
      const user = existing ?? { devices: new Map<string, number>(), status, meta: metaJson, lastSeen: now }
      const oldStatus = user.status
      for (const [d, at] of user.devices) if (at <= now - times.ttlMs) user.devices.delete(d)
      user.devices.set(device, now)
      Object.assign(user, { status, meta: metaJson, lastSeen: now })
      users.set(userId, user)
      lastSeen.set(userId, now)
      const type = !wasOnline ? 'join' : oldStatus !== status ? 'status' : null
      if (type !== null) event({ type, userId, status, meta: JSON.parse(metaJson) as unknown })
      return type
    },
    async restore (userId, device, status, metaJson, at) {
      const user = users.get(userId) ?? { devices: new Map<string, number>(), status, meta: metaJson, lastSeen: at }
      user.devices.set(device, Math.max(user.devices.get(device) ?? 0, at))
      if (at >= user.lastSeen) Object.assign(user, { status, meta: metaJson, lastSeen: at })
      users.set(userId, user)
      lastSeen.set(userId, Math.max(lastSeen.get(userId) ?? 0, at))
    },
    async leave (userId, device, now) {
      const user = users.get(userId)
      if (user === undefined) return false
      user.devices.delete(device)
      for (const [d, at] of user.devices) if (at <= now - times.ttlMs) user.devices.delete(d)
      if (user.devices.size > 0) return false
      users.delete(userId)
      lastSeen.set(userId, now)
      event({ type: 'leave', userId })
      return true
    },
    async sweep (now) {
      const gone: string[] = []
      for (const [userId, user] of users) {
        if (isOnline(user, now)) continue
        users.delete(userId)
        gone.push(userId)
        event({ type: 'leave', userId })
      }
      for (const [userId, at] of lastSeen) if (at <= now - times.lastSeenTtlMs) lastSeen.delete(userId)
      return gone
    },
    async count (now) {
      let n = 0
      for (const user of users.values()) if (isOnline(user, now)) n++
      return n
    },
    async list (now, offset, limit) {
      return [...users].filter(([, u]) => isOnline(u, now)).sort((a, b) => b[1].lastSeen - a[1].lastSeen).slice(offset, offset + limit).map(([id, u]) => toEntry(id, u))
    },
    async get (userId, now) {
      const user = users.get(userId)
      return user !== undefined && isOnline(user, now) ? toEntry(userId, user) : null
    },
    async lastSeen (userId) {
      return lastSeen.get(userId) ?? null
    },
    online (now) {
      return [...users].filter(([, u]) => isOnline(u, now)).map(([userId, u]) => ({ userId, status: u.status, metaJson: u.meta, devices: [...u.devices] }))
    }
  }
}
