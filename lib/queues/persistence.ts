import { withTimeout } from '../deadline'

// Jobs live only in Redis: a Redis that keeps no copy of its data (no AOF, no
// RDB snapshots) loses every waiting and running job when it restarts. Read
// once when queues bind to a TCP Redis (two CONFIG GETs); a Redis that does
// not allow CONFIG (some managed ones) is not judged.

type Call = (command: string, ...args: string[]) => Promise<unknown>

/** A CONFIG GET reply, RESP2 (flat array) or RESP3 (map, as ioredis 6 may give it), as the one value asked for. */
function configValue (reply: unknown, name: string): string | null {
  if (Array.isArray(reply)) {
    const i = reply.findIndex((v, j) => j % 2 === 0 && String(v) === name)
    return i >= 0 ? String(reply[i + 1]) : null
  }
  if (reply instanceof Map) return reply.has(name) ? String(reply.get(name)) : null
  if (reply !== null && typeof reply === 'object' && name in reply) return String((reply as Record<string, unknown>)[name])
  return null
}

/** The warning when the Redis keeps no copy of its data, else null (kept, or not known). */
export async function persistenceWarning (call: Call, timeoutMs: number): Promise<string | null> {
  const read = async (name: string): Promise<string | null> => configValue(await withTimeout(call('config', 'get', name), timeoutMs), name)
  const [appendonly, save] = await Promise.all([read('appendonly'), read('save')]).catch(() => [null, null])
  if (appendonly === null || save === null) return null
  if (appendonly === 'yes' || save.trim() !== '') return null
  return 'the Redis that holds the queues keeps no copy of its data (appendonly no, no RDB save): a restart loses every job; set appendonly yes (or a save schedule) on it'
}
