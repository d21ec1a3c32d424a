import type { EnvInput } from '../../lib/config'
import type { Tier } from '../../lib/resolve-tier'
import type { RedisServer } from '../../support/redis-server'

/** The env that puts the app on `tier`: REDIS_URL for tcp, the REST bridge for rest, nothing for memory. */
export function envForTier (tier: Tier, redis: RedisServer, rest: { url: string, token: string }, base: EnvInput): EnvInput {
  if (tier === 'tcp') return { ...base, REDIS_URL: redis.url }
  if (tier === 'rest') return { ...base, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }
  return { ...base }
}
