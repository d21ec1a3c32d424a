import { startRestBridge, type RestBridge } from '../tools/rest-bridge'
import type { RedisServer, Teardown } from './redis-server'

// The Upstash-REST-compatible bridge in front of a harness redis-server; the
// app's rest tier talks to it through the real @upstash/redis client.

export const TEST_REST_TOKEN = 'test-rest-token-0123456789abcdef'

export async function startRestServer (t: Teardown, redis: RedisServer, token = TEST_REST_TOKEN): Promise<RestBridge & { token: string }> {
  const bridge = await startRestBridge({ redisUrl: redis.url, token })
  t.teardown(async () => await bridge.close())
  return Object.assign(bridge, { token })
}
