import { lua, type RedisCommands } from '../redis-commands'

// How many instances share a limit, for the outage fallback's share of it
// (limit / instances). Pub/sub cannot say: a REST endpoint multiplexes every
// instance's subscription onto one connection. So each instance that is
// deciding adds itself to one sorted set at most once per refresh interval,
// in the background of a decision (no timer: an idle or frozen instance costs
// nothing), and reads the set's size in the same script. An instance not
// seen for three intervals no longer counts; a closing one removes itself.

const CHECK_IN = lua(`
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])`, 4)

const CHECK_OUT = lua(`return redis.call('ZREM', KEYS[1], ARGV[1])`, 1)

export interface FleetCount {
  /** Instances seen at the last check-in (1 until the first). */
  count: () => number
  /** A check-in when one is due: the promise to hand to background work, else null. */
  due: () => Promise<void> | null
  /** Removes this instance from the count. */
  leave: () => Promise<void>
}

export function fleetCount (commands: () => RedisCommands | null, key: string, instanceId: string, refreshMs: number, now: () => number = Date.now): FleetCount {
  let known = 1
  let next = 0
  return {
    count: () => known,
    due () {
      const redis = commands()
      const at = now()
      if (redis === null || at < next) return null
      next = at + refreshMs
      return redis.eval(CHECK_IN, [key], [at, instanceId, at - 3 * refreshMs, 4 * refreshMs]).then((size) => {
        known = Math.max(1, Number(size))
      }, () => {
        next = at + Math.min(refreshMs, 10_000) // soon again: the count is what an outage needs
      })
    },
    async leave () {
      await commands()?.eval(CHECK_OUT, [key], [instanceId])
    }
  }
}
