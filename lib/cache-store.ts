import type { RedisCommands } from './redis-commands'

// The cache's Redis layer (tcp and rest alike, through RedisCommands). Each
// write is one Lua script that also publishes the invalidation for other
// instances' L1, so a write costs one round trip even on Upstash REST.
// Layout under the namespace `<prefix>`:
//   <prefix>:c:<key>   the value envelope, with a TTL
//   <prefix>:t:<tag>   a set of value keys carrying that tag, living at least as long as its longest member

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

export interface CacheStore {
  /** The envelope as stored (JSON text), or null on a miss. */
  get: (key: string) => Promise<string | null>
  set: (key: string, envelopeJson: string, keepMs: number, tags: readonly string[]) => Promise<void>
  del: (keys: readonly string[]) => Promise<void>
  /** Deletes every key carrying one of the tags; resolves with those keys. */
  invalidateTags: (tags: readonly string[]) => Promise<string[]>
  clear: () => Promise<void>
}

const SET_SCRIPT = `
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local keep = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1`

const DEL_SCRIPT = `
redis.call('DEL', unpack(KEYS))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1`

const INVALIDATE_SCRIPT = `
local removed = {}
local cut = #ARGV[3] + 1
for i = 1, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, k in ipairs(members) do
    if redis.call('DEL', k) == 1 then table.insert(removed, string.sub(k, cut)) end
  end
  redis.call('DEL', KEYS[i])
end
if #removed > 0 then redis.call('PUBLISH', ARGV[1], cjson.encode({ from = ARGV[2], keys = removed })) end
return removed`

export function escapeGlob (text: string): string {
  return text.replace(/[*?[\]\\]/g, (c) => `\\${c}`)
}

export function redisCacheStore (commands: RedisCommands, prefix: string, channel: string, instanceId: string): CacheStore {
  const valueKey = (key: string): string => `${prefix}:c:${key}`
  const tagKey = (tag: string): string => `${prefix}:t:${tag}`
  const message = (m: Omit<InvalidationMessage, 'from'>): string => JSON.stringify({ from: instanceId, ...m })

  return {
    get: (key) => commands.get(valueKey(key)),
    async set (key, envelopeJson, keepMs, tags) {
      await commands.eval(SET_SCRIPT, [valueKey(key), ...tags.map(tagKey)], [envelopeJson, keepMs, channel, message({ keys: [key] })])
    },
    async del (keys) {
      if (keys.length === 0) return
      await commands.eval(DEL_SCRIPT, keys.map(valueKey), [channel, message({ keys: [...keys] })])
    },
    async invalidateTags (tags) {
      if (tags.length === 0) return []
      const removed = await commands.eval(INVALIDATE_SCRIPT, tags.map(tagKey), [channel, instanceId, valueKey('')])
      return Array.isArray(removed) ? removed.map(String) : []
    },
    async clear () {
      // SCAN + DEL only within our namespace: never FLUSHDB, never someone else's keys.
      for (const kind of ['c', 't']) {
        let cursor = '0'
        do {
          const [next, keys] = await commands.scan(cursor, `${escapeGlob(prefix)}:${kind}:*`, 500)
          if (keys.length > 0) await commands.del(keys)
          cursor = next
        } while (cursor !== '0')
      }
      await commands.publish(channel, message({ clear: true }))
    }
  }
}
