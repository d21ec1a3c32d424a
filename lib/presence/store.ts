import { lua, lengthOf, type RedisCommands } from '../redis-commands'

// Who is online, one small store per kind of tier behind one contract. On
// tcp/rest every operation is one Lua script (one round trip, Upstash REST
// runs EVAL too), and the script that changes presence publishes the event,
// so each event fires once no matter how many instances sweep. A sweep
// publishes one `leave` message with the `userIds` of its whole batch.
// Heartbeats that change nothing are written in batches by `flush` (see
// lib/presence/coalesce.ts, which decides what is coalesced).

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
  /**
   * Writes coalesced heartbeats of devices still online (never one that left or expired, never a
   * score moved back) and, with `sweep`, sweeps as `sweep()` does, in one script on Redis.
   */
  flush: (beats: Beat[], now: number, sweep: boolean) => Promise<FlushResult>
  count: (now: number) => Promise<number>
  /** Online users, most recent first. */
  list: (now: number, offset: number, limit: number) => Promise<PresenceEntry[]>
  /** The user's entry while online, else null. */
  get: (userId: string, now: number) => Promise<PresenceEntry | null>
  /** Last heartbeat, kept PRESENCE_LAST_SEEN_TTL after going offline. */
  lastSeen: (userId: string) => Promise<number | null>
  /** The coalescing layer (lib/presence/coalesce.ts): an event from any instance, so what this instance assumes stays true. */
  observe?: (event: PresenceEvent) => void
  /** The coalescing layer: writes every pending heartbeat (a graceful shutdown loses none). */
  close?: (now: number) => Promise<void>
  /** Memory only: who is online here, to hand them over to a shared store when the feature is promoted. */
  online?: (now: number) => OnlineUser[]
}

/** One coalesced heartbeat: `device` of `userId` beat at `at`. */
export interface Beat { userId: string, device: string, at: number }

export interface FlushResult {
  /** Heartbeats not written because the device had expired before them: the user is back, write them as full heartbeats. */
  expired: Array<{ userId: string, device: string }>
  /** Heartbeats not written because the user or the device left after them: dropped. */
  left: Array<{ userId: string, device: string }>
  /** Users the sweep removed (each with one leave, published by the store). */
  gone: string[]
  /** Users left online after the sweep; null without a sweep. */
  online: number | null
}

export interface OnlineUser { userId: string, status: string, metaJson: string, devices: Array<[device: string, lastHeartbeat: number]> }

export interface PresenceTimes {
  ttlMs: number
  lastSeenTtlMs: number
}

// Keys, all under one prefix (one hash tag on a cluster): `online`, users scored by their last
// heartbeat; `devices`, every live device of the fleet as `<user>\n<device>` scored by its last
// heartbeat (where liveness is read); `seen`, the lastSeen of users gone offline, pruned after
// PRESENCE_LAST_SEEN_TTL; `info:<user>`, a hash of status, meta and one `d:<device>` field per
// device (the user's device index), written only when something about the user changes. A
// coalesced heartbeat (FLUSH) touches only the three shared sorted sets: its cost is per flush,
// not per user.

// KEYS: online, devices, info. ARGV: user, device, now, ttl, status, meta, lastSeenTtl, channel
const HEARTBEAT = lua(`
local now = tonumber(ARGV[3])
local cutoff = now - tonumber(ARGV[4])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local wasOnline = score and tonumber(score) > cutoff
redis.call('ZADD', KEYS[1], 'GT', now, ARGV[1])
redis.call('ZADD', KEYS[2], 'GT', now, ARGV[1] .. '\\n' .. ARGV[2])
local oldStatus = redis.call('HGET', KEYS[3], 'status')
redis.call('HSET', KEYS[3], 'status', ARGV[5], 'meta', ARGV[6], 'd:' .. ARGV[2], 1)
redis.call('PEXPIRE', KEYS[3], ARGV[7])
local event = ''
if not wasOnline then event = 'join' elseif oldStatus ~= ARGV[5] then event = 'status' end
if event ~= '' then
  redis.call('PUBLISH', ARGV[8], cjson.encode({ type = event, userId = ARGV[1], status = ARGV[5], meta = ARGV[6] }))
end
return event`, (_keys, event) => event === 'join' || event === 'status' ? 7 : 6)

// KEYS: online, devices, info. ARGV: user, device, at, ttl, status, meta, lastSeenTtl. 1: written; 0: a newer heartbeat is there.
const RESTORE = lua(`
local at = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', at, ARGV[1] .. '\\n' .. ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local written = 0
if not score or tonumber(score) < at then
  redis.call('ZADD', KEYS[1], at, ARGV[1])
  redis.call('HSET', KEYS[3], 'status', ARGV[5], 'meta', ARGV[6], 'd:' .. ARGV[2], 1)
  written = 1
else
  redis.call('HSET', KEYS[3], 'd:' .. ARGV[2], 1)
end
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return written`, (_keys, written) => Number(written) === 1 ? 5 : 4)

// KEYS: online, devices, info, seen. ARGV: user, device, now, ttl, channel. Replies { code, commands }:
// 1: a leave; 0: another device is live (read from `devices`, where flushes write; the device's
// leave time goes in `seen`, so a flush never brings it back with an older heartbeat); 2: the user was not online.
const LEAVE = lua(`
local cutoff = tonumber(ARGV[3]) - tonumber(ARGV[4])
redis.call('HDEL', KEYS[3], 'd:' .. ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1] .. '\\n' .. ARGV[2])
local n = 3
local others = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
  if string.sub(field, 1, 2) == 'd:' then table.insert(others, ARGV[1] .. '\\n' .. string.sub(field, 3)) end
end
if #others > 0 then
  n = n + 1
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(others))
  local live, expired = false, {}
  for i = 1, #others do
    if scores[i] and tonumber(scores[i]) > cutoff then live = true
    else table.insert(expired, 'd:' .. string.sub(others[i], #ARGV[1] + 2)) end
  end
  if live then
    -- The fields of devices that expired go too: a user online for long does not collect them.
    if #expired > 0 then
      redis.call('HDEL', KEYS[3], unpack(expired))
      n = n + 1
    end
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1] .. '\\n' .. ARGV[2])
    return { 0, n + 1 }
  end
end
n = n + 1
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return { 2, n } end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[5], cjson.encode({ type = 'leave', userId = ARGV[1] }))
n = n + 3
if #others > 0 then
  redis.call('ZREM', KEYS[2], unpack(others))
  n = n + 1
end
return { 1, n }`, (_keys, reply) => Array.isArray(reply) ? Number(reply[1]) : 0)

/** Users one sweep removes at most: a bounded script, however many expired at once; the plugin calls again while calls come back full. */
export const SWEEP_BATCH = 500

// KEYS: online, devices, seen. ARGV: now, ttl, sweep (1 or 0), batch, key prefix, channel,
// lastSeenTtl, then a member (`<user>\n<device>`) and its heartbeat time per coalesced heartbeat.
// Writes the heartbeats of devices still live in `devices` (XX GT: never re-adds a device that
// left or expired, never moves a score back) with one ZADD per sorted set. Of the others, one
// ZMSCORE of `seen` tells those whose user or device left after the heartbeat (dropped) from
// those that expired before it (answered, to be written as full heartbeats: the user is back).
// The sweep (one leave message per batch, lastSeen of each user in one ZADD of `seen`) folds
// into the same script. Replies { commands, expired, left, gone, online after the sweep or -1 }.
const FLUSH = lua(`
local now = tonumber(ARGV[1])
local cutoff = now - tonumber(ARGV[2])
local n = 0
local stale, expired, left = {}, {}, {}
local beats = (#ARGV - 7) / 2
if beats > 0 then
  local members = {}
  for i = 1, beats do members[i] = ARGV[6 + 2 * i] end
  local scores = redis.call('ZMSCORE', KEYS[2], unpack(members))
  n = n + 1
  local devices, latest = {}, {}
  for i = 1, beats do
    local at = tonumber(ARGV[7 + 2 * i])
    if scores[i] and tonumber(scores[i]) > cutoff then
      table.insert(devices, at)
      table.insert(devices, members[i])
      local user = string.match(members[i], '^(.-)\\n')
      if not latest[user] or latest[user] < at then latest[user] = at end
    else
      table.insert(stale, i)
    end
  end
  if #stale > 0 then
    local asked = {}
    for _, i in ipairs(stale) do
      table.insert(asked, string.match(members[i], '^(.-)\\n'))
      table.insert(asked, members[i])
    end
    local leftAt = redis.call('ZMSCORE', KEYS[3], unpack(asked))
    n = n + 1
    for j, i in ipairs(stale) do
      local at = tonumber(ARGV[7 + 2 * i])
      local user, device = leftAt[2 * j - 1], leftAt[2 * j]
      if (user and tonumber(user) >= at) or (device and tonumber(device) >= at) then
        table.insert(left, members[i])
      else
        table.insert(expired, members[i])
      end
    end
  end
  if #devices > 0 then
    redis.call('ZADD', KEYS[2], 'XX', 'GT', unpack(devices))
    local users = {}
    for user, at in pairs(latest) do
      table.insert(users, at)
      table.insert(users, user)
    end
    redis.call('ZADD', KEYS[1], 'XX', 'GT', unpack(users))
    n = n + 2
  end
end
local gone = {}
local online = -1
if ARGV[3] == '1' then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[4]))
  n = n + 1
  if #expired > 0 then
    local seen, infos = {}, {}
    for i = 1, #expired, 2 do
      table.insert(gone, expired[i])
      table.insert(seen, expired[i + 1])
      table.insert(seen, expired[i])
      table.insert(infos, ARGV[5] .. 'info:' .. expired[i])
    end
    redis.call('ZREM', KEYS[1], unpack(gone))
    redis.call('ZADD', KEYS[3], unpack(seen))
    redis.call('DEL', unpack(infos))
    redis.call('PUBLISH', ARGV[6], cjson.encode({ type = 'leave', userIds = gone }))
    n = n + 4
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[7]))
  online = redis.call('ZCARD', KEYS[1])
  n = n + 3
end
return { n, expired, left, gone, online }`, (_keys, reply) => Array.isArray(reply) ? Number(reply[0]) : 0)

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

// KEYS: online, seen. ARGV: user. An online user's last heartbeat (as last flushed), else when they went offline.
const LAST_SEEN = lua(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then return { 1, score } end
return { 2, redis.call('ZSCORE', KEYS[2], ARGV[1]) }`, (_keys, reply) => Array.isArray(reply) ? Number(reply[0]) : 0)

type Row = [string, string | number, string | null, string | null]

function entry (row: Row): PresenceEntry {
  return { userId: String(row[0]), lastSeen: Number(row[1]), status: row[2] ?? '', meta: JSON.parse(row[3] ?? 'null') as unknown }
}

export function redisPresenceStore (commands: RedisCommands, prefix: string, channel: string, times: PresenceTimes): PresenceStore {
  // On a Redis Cluster one hash tag puts every presence key in one slot: each script stays one round trip.
  const base = commands.cluster ? `{${prefix}:presence}:` : `${prefix}:presence:`
  const online = `${base}online`
  const devices = `${base}devices`
  const seen = `${base}seen`
  const info = (user: string): string => `${base}info:${user}`
  const cutoff = (now: number): number => now - times.ttlMs
  async function flush (beats: Beat[], now: number, sweep: boolean): Promise<FlushResult> {
    const args: Array<string | number> = [now, times.ttlMs, sweep ? 1 : 0, SWEEP_BATCH, base, channel, times.lastSeenTtlMs]
    for (const beat of beats) args.push(`${beat.userId}\n${beat.device}`, beat.at)
    const reply = await commands.eval(FLUSH, [online, devices, seen], args)
    const [, expired, left, gone, remaining] = Array.isArray(reply) ? reply as unknown[] : []
    const pairs = (members: unknown): Array<{ userId: string, device: string }> => (Array.isArray(members) ? members : []).map((member) => {
      const [userId, device] = String(member).split('\n')
      return { userId, device }
    })
    return {
      expired: pairs(expired),
      left: pairs(left),
      // @upstash/redis parses replies that look like JSON: a user id of digits comes back a number.
      gone: Array.isArray(gone) ? gone.map(String) : [],
      online: sweep ? Number(remaining) : null
    }
  }
  return {
    async heartbeat (userId, device, status, metaJson, now) {
      const event = await commands.eval(HEARTBEAT, [online, devices, info(userId)], [userId, device, now, times.ttlMs, status, metaJson, times.lastSeenTtlMs, channel])
      return event === 'join' || event === 'status' ? event : null
    },
    async restore (userId, device, status, metaJson, at) {
      await commands.eval(RESTORE, [online, devices, info(userId)], [userId, device, at, times.ttlMs, status, metaJson, times.lastSeenTtlMs])
    },
    async leave (userId, device, now) {
      const reply = await commands.eval(LEAVE, [online, devices, info(userId), seen], [userId, device, now, times.ttlMs, channel])
      return Array.isArray(reply) && Number(reply[0]) === 1
    },
    async sweep (now) {
      return (await flush([], now, true)).gone
    },
    flush,
    async count (now) {
      return Number(await commands.eval(COUNT, [online], [cutoff(now)]))
    },
    async list (now, offset, limit) {
      const rows = await commands.eval(LIST, [online], [cutoff(now), offset, limit, base])
      return Array.isArray(rows) ? rows.map((row) => entry(row as Row)) : []
    },
    async get (userId, now) {
      const row = await commands.eval(GET, [online, info(userId)], [userId])
      if (!Array.isArray(row) || Number(row[1]) <= cutoff(now)) return null
      return entry(row as Row)
    },
    async lastSeen (userId) {
      const reply = await commands.eval(LAST_SEEN, [online, seen], [userId])
      const raw: unknown = Array.isArray(reply) ? reply[1] : null
      return raw === null || raw === undefined || raw === false ? null : Number(raw)
    }
  }
}

interface MemoryUser { devices: Map<string, number>, status: string, meta: string, lastSeen: number }

/** Memory tier: maps, swept by the plugin's timer; events go out through `publish` (the memory bus), as the scripts publish theirs. */
export function memoryPresenceStore (times: PresenceTimes, publish: (event: PresenceEvent) => void): PresenceStore {
  const users = new Map<string, MemoryUser>()
  const lastSeen = new Map<string, number>()
  const devicesLeft = new Map<string, number>() // `<user>\n<device>` -> when the device left while its user stayed online
  const isOnline = (u: MemoryUser, now: number): boolean => u.lastSeen > now - times.ttlMs
  const toEntry = (userId: string, u: MemoryUser): PresenceEntry => ({ userId, status: u.status, meta: JSON.parse(u.meta) as unknown, lastSeen: u.lastSeen })
  const event = publish
  const live = (at: number | undefined, now: number): boolean => at !== undefined && at > now - times.ttlMs
  async function sweep (now: number): Promise<string[]> {
    const gone: string[] = []
    for (const [userId, user] of users) {
      if (isOnline(user, now)) continue
      users.delete(userId)
      lastSeen.set(userId, user.lastSeen)
      gone.push(userId)
      event({ type: 'leave', userId })
    }
    for (const [userId, at] of lastSeen) if (at <= now - times.lastSeenTtlMs) lastSeen.delete(userId)
    for (const [key, at] of devicesLeft) if (at <= now - times.lastSeenTtlMs) devicesLeft.delete(key)
    return gone
  }
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
      if (user.devices.size > 0) {
        devicesLeft.set(`${userId}\n${device}`, now)
        return false
      }
      users.delete(userId)
      lastSeen.set(userId, now)
      event({ type: 'leave', userId })
      return true
    },
    sweep,
    async flush (beats, now, sweeping) {
      const expired: FlushResult['expired'] = []
      const left: FlushResult['left'] = []
      for (const { userId, device, at } of beats) {
        const user = users.get(userId)
        const last = user?.devices.get(device)
        if (user === undefined || !live(last, now)) {
          // As `seen` on Redis: the user's leave (lastSeen of a user no longer here) or the device's, after this heartbeat?
          const leftAt = Math.max(user === undefined ? lastSeen.get(userId) ?? 0 : 0, devicesLeft.get(`${userId}\n${device}`) ?? 0)
          ;(leftAt >= at ? left : expired).push({ userId, device })
          continue
        }
        user.devices.set(device, Math.max(last ?? 0, at))
        user.lastSeen = Math.max(user.lastSeen, at)
        lastSeen.set(userId, Math.max(lastSeen.get(userId) ?? 0, at))
      }
      const gone = sweeping ? await sweep(now) : []
      return { expired, left, gone, online: sweeping ? users.size : null }
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
