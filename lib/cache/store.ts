import { lua, type RedisCommands } from '../redis-commands'

// The cache's Redis layer (tcp and rest alike, through RedisCommands). Each
// write is one Lua script that also publishes the invalidation for other
// instances' L1, so a write costs one round trip even on Upstash REST.
// Layout under the namespace `<prefix>`:
//   <prefix>:c:<key>   the value envelope, with a TTL
//   <prefix>:v:{<route>} a sorted set of a cached route's entries, scored by when each expires: the
//                      route's variant cap counts its live members (the braces put it in the slot
//                      of the route's entries, whose keys carry the same hash tag)
//   <prefix>:t:<tag>   a sorted set of value keys carrying that tag, scored by when each expires
//                      (Redis's clock, so instances cannot disagree); members that expired are
//                      pruned on every write to the tag and before an invalidation, so its size
//                      follows the live entries; it lives as long as its longest member
// Nothing here runs unbounded inside Redis: an invalidation deletes at most
// INVALIDATE_BATCH keys per script call, clear() unlinks one SCAN page at a time.
// On a Redis Cluster entries spread over the slots (one key per entry, no
// namespace-wide hash tag), so a script touches one key only: a write is its
// SET script plus one script per tag, sent together; an invalidation pops each
// tag's members in the tag's slot, then unlinks them per slot and publishes.

/** What is stored: the value and when it stops being fresh (it may be kept longer to serve stale on error). */
export interface Envelope {
  v: unknown
  /** Fresh until (epoch ms). */
  e: number
}

/** Sent to every instance on the invalidation channel. */
export interface InvalidationMessage {
  from: string
  keys?: string[]
  clear?: boolean
}

/** The route an entry belongs to, and how many live entries that route may hold at once. */
export interface Variants { id: string, max: number }

export interface CacheStore {
  /** The envelope as stored (JSON text), or null on a miss. */
  get: (key: string) => Promise<string | null>
  /** Resolves false when `variants` is full and the key is not one of its live entries: nothing was written. */
  set: (key: string, envelopeJson: string, keepMs: number, tags: readonly string[], variants?: Variants) => Promise<boolean>
  del: (keys: readonly string[]) => Promise<void>
  /** Deletes every key carrying one of the tags; resolves with those keys. */
  invalidateTags: (tags: readonly string[]) => Promise<string[]>
  clear: () => Promise<void>
}

/** Keys one invalidation call deletes at most, so that no single script holds Redis for long. */
export const INVALIDATE_BATCH = 500

// The scripts whose commands depend on the data return how many they ran (what they are billed).

// KEYS: value key, the route's variant set when ARGV[5] (its cap) is not 0, then tag keys.
// ARGV: envelope, keep ms, channel, message, cap. Returns { commands run, 1 if written else 0 }.
// A new variant of a full route prunes the expired ones and is refused if the route is still full;
// otherwise the cap costs ZADD + PEXPIRE, and ZCARD for a new variant: 2 or 3 commands, no round trip.
const SET_SCRIPT = lua(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[2])
local cap = tonumber(ARGV[5])
local calls = 1
local first = 2
if cap > 0 then
  first = 3
  local v = KEYS[2]
  calls = calls + 1
  if redis.call('ZADD', v, now + keep, KEYS[1]) == 1 then
    calls = calls + 1
    if redis.call('ZCARD', v) > cap then
      redis.call('ZREMRANGEBYSCORE', v, '-inf', now)
      calls = calls + 2
      if redis.call('ZCARD', v) > cap then
        redis.call('ZREM', v, KEYS[1])
        return { calls + 1, 0 }
      end
    end
  end
  -- A route's writes share one keep, so the newest member always expires last: the set lives as long.
  redis.call('PEXPIRE', v, keep)
  calls = calls + 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', keep)
calls = calls + 2
for i = first, #KEYS do
  redis.call('ZADD', KEYS[i], now + keep, KEYS[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  calls = calls + 3
  if redis.call('PTTL', KEYS[i]) < keep then
    redis.call('PEXPIRE', KEYS[i], keep)
    calls = calls + 1
  end
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return { calls, 1 }`, (keys, reply) => Array.isArray(reply) ? Number(reply[0]) : 3 + 3 * (keys - 1))

const DEL_SCRIPT = lua(`
redis.call('DEL', unpack(KEYS))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1`, 2)

// KEYS: tag keys. ARGV: channel, instance id, value key prefix, batch. Deletes up to `batch`
// live members of the tags, in order, and tells the other instances which; returns how many
// members each tag has left, the keys removed, and how many commands it ran.
const INVALIDATE_SCRIPT = lua(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local budget = tonumber(ARGV[4])
local cut = #ARGV[3] + 1
local removed, left, calls = {}, {}, 1
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  calls = calls + 2
  if budget > 0 then
    local members = redis.call('ZRANGE', KEYS[i], 0, budget - 1)
    calls = calls + 1
    if #members > 0 then
      redis.call('ZREM', KEYS[i], unpack(members))
      calls = calls + 1 + #members
      budget = budget - #members
      for _, k in ipairs(members) do
        if redis.call('DEL', k) == 1 then table.insert(removed, string.sub(k, cut)) end
      end
    end
  end
  left[i] = redis.call('ZCARD', KEYS[i])
end
if #removed > 0 then
  redis.call('PUBLISH', ARGV[1], cjson.encode({ from = ARGV[2], keys = removed }))
  calls = calls + 1
end
return { left, removed, calls }`, (keys, reply) => Array.isArray(reply) ? Number(reply[2]) : 1 + 3 * keys)

// KEYS: tag key. ARGV: value key, keep ms. A tag's part of a write on a cluster.
const TAG_SCRIPT = lua(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + keep, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
  return 5
end
return 4`, (_keys, calls) => calls === undefined ? 4 : Number(calls))

// KEYS: tag key. ARGV: batch. Prunes what expired, removes and returns up to `batch` live members, and how many are left.
const POP_TAG_SCRIPT = lua(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #members > 0 then redis.call('ZREM', KEYS[1], unpack(members)) end
return { redis.call('ZCARD', KEYS[1]), members }`, 5)

export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`)
}

export function redisCacheStore (commands: RedisCommands, prefix: string, channel: string, instanceId: string): CacheStore {
  const valueKey = (key: string): string => `${prefix}:c:${key}`
  const tagKey = (tag: string): string => `${prefix}:t:${tag}`
  const variantKey = (id: string): string => `${prefix}:v:{${id}}`
  const message = (m: Omit<InvalidationMessage, 'from'>): string => JSON.stringify({ from: instanceId, ...m })

  /** Cluster: each tag's members popped in its own slot, then unlinked per slot, then one message. */
  async function invalidateAcrossSlots (tags: readonly string[]): Promise<string[]> {
    const removed: string[] = []
    await Promise.all([...new Set(tags)].map(async (tag) => {
      for (let left = Infinity, calls = Infinity, call = 0; left > 0 && call < calls; call++) {
        const [remaining, members] = await commands.eval(POP_TAG_SCRIPT, [tagKey(tag)], [INVALIDATE_BATCH]) as [number, string[]]
        left = Number(remaining)
        if (call === 0) calls = 1 + Math.ceil(left / INVALIDATE_BATCH)
        if (members.length > 0) await commands.unlink(members.map(String))
        removed.push(...members.map((k) => String(k).slice(valueKey('').length)))
      }
    }))
    if (removed.length > 0) await commands.publish(channel, message({ keys: removed }))
    return removed
  }

  return {
    get: (key) => commands.get(valueKey(key)),
    async set (key, envelopeJson, keepMs, tags, variants) {
      // The variant set shares the entry's slot (its hash tag), so it stays in the SET script on a cluster too.
      const own = variants === undefined ? [valueKey(key)] : [valueKey(key), variantKey(variants.id)]
      const args = [envelopeJson, keepMs, channel, message({ keys: [key] }), variants?.max ?? 0]
      if (!commands.cluster) return (await commands.eval(SET_SCRIPT, [...own, ...tags.map(tagKey)], args) as [number, number])[1] === 1
      const [written] = await Promise.all([
        commands.eval(SET_SCRIPT, own, args),
        ...tags.map(async (tag) => await commands.eval(TAG_SCRIPT, [tagKey(tag)], [valueKey(key), keepMs]))
      ])
      return (written as [number, number])[1] === 1
    },
    async del (keys) {
      if (keys.length === 0) return
      if (!commands.cluster) {
        await commands.eval(DEL_SCRIPT, keys.map(valueKey), [channel, message({ keys: [...keys] })])
        return
      }
      await commands.unlink(keys.map(valueKey))
      await commands.publish(channel, message({ keys: [...keys] }))
    },
    async invalidateTags (tags) {
      if (commands.cluster) return await invalidateAcrossSlots(tags)
      const removed: string[] = []
      let pending = [...new Set(tags)]
      // Bounded by the first answer: writes that keep tagging during the invalidation cannot keep it going forever.
      let calls = Infinity
      for (let call = 0; pending.length > 0 && call < calls; call++) {
        const [left, keys] = await commands.eval(INVALIDATE_SCRIPT, pending.map(tagKey), [channel, instanceId, valueKey(''), INVALIDATE_BATCH]) as [number[], string[]]
        removed.push(...keys.map(String))
        if (call === 0) calls = 1 + Math.ceil(left.reduce((n, l) => n + Number(l), 0) / INVALIDATE_BATCH)
        pending = pending.filter((_tag, i) => Number(left[i]) > 0)
      }
      return removed
    },
    async clear () {
      // SCAN + UNLINK only within our namespace: never FLUSHDB, never someone else's keys. UNLINK frees
      // large tag sets in the background; each call removes one SCAN page.
      for (const kind of ['c', 't', 'v']) {
        let cursor = '0'
        do {
          const [next, keys] = await commands.scan(cursor, `${escapeGlob(prefix)}:${kind}:*`, 500)
          if (keys.length > 0) await commands.unlink(keys)
          cursor = next
        } while (cursor !== '0')
      }
      await commands.publish(channel, message({ clear: true }))
    }
  }
}
