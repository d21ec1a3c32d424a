import t from 'tap'
import { Redis } from 'ioredis'
import { build } from './helpers/build'
import { startRedisServer } from '../support/redis-server'

// What a mount exposes. /health is mounted by default and load balancers
// call it without credentials: in a host it says states and reasons, not
// where the database is or who logs in to it. The status page and /metrics
// are opt-in; mounted without an access check, boot says so.

const FAST = { REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 300, QUEUES_DRAIN_MS: 200 }
const USER = 'm4rkeruser'

/** A Redis with its own ACL user, and the REDIS_URL that logs in as it. */
async function redisWithUser (t: Parameters<typeof startRedisServer>[0]): Promise<{ url: string, port: number, stop: () => Promise<void> }> {
  const redis = await startRedisServer(t)
  const admin = new Redis(redis.url)
  await admin.acl('SETUSER', USER, 'on', '>m4rker-password', '~*', '&*', '+@all')
  admin.disconnect()
  return { url: `redis://${USER}:m4rker-password@127.0.0.1:${redis.port}`, port: redis.port, stop: redis.stop }
}

function addressIn (text: string, port: number): boolean {
  return text.includes('127.0.0.1') || text.includes(String(port)) || text.includes(USER) || text.includes('m4rker-password')
}

t.test('a host\'s /health says states and reasons without host, port or user', async (t) => {
  const redis = await redisWithUser(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  const up = await app.inject('/health')
  t.match(up.json(), { status: 'ok', tiers: { tcp: { configured: true, reachable: true, source: 'REDIS_URL' } } })
  t.notOk('endpoint' in up.json<{ tiers: { tcp: object } }>().tiers.tcp, 'no endpoint field')
  t.notOk(addressIn(up.body, redis.port), up.body)

  await redis.stop()
  const down = await app.inject('/health')
  t.equal(down.statusCode, 503)
  t.match(down.json(), { tiers: { tcp: { reachable: false, lastError: /the Redis in REDIS_URL/ } } })
  t.notOk(addressIn(down.body, redis.port), down.body)
})

t.test('a feature\'s reason and its 503 name the variable, not the address', async (t) => {
  const redis = await redisWithUser(t)
  await redis.stop()
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url }, { plugins: [async (fastify) => { fastify.queues.define('mail', async () => null) }] })
  t.equal(app.queues.available, false)
  t.match(app.queues.reason, /connection refused by the Redis in REDIS_URL/)
  t.notOk(addressIn(app.queues.reason, redis.port), app.queues.reason)
  const refused = await app.queues.add('mail', {}).then(() => null, (err: Error) => err)
  t.match(refused, { code: 'REDIS_TIERS_FEATURE_UNAVAILABLE', message: /REDIS_URL/ })
  t.notOk(addressIn(refused?.message ?? '', redis.port), refused?.message ?? 'no error')
  const health = await app.inject('/health')
  t.notOk(addressIn(health.body, redis.port), health.body)
})

t.test('/health shows the redacted endpoint when asked, and with the demo routes', async (t) => {
  const redis = await redisWithUser(t)
  for (const [how, opts] of [['health: { showEndpoints: true }', { app: { health: { showEndpoints: true } } }], ['DEMO_ROUTES=true', {}]] as const) {
    const { app } = await build(t, { ...FAST, REDIS_URL: redis.url, DEMO_ROUTES: how === 'DEMO_ROUTES=true' }, opts)
    const body = (await app.inject('/health')).body
    t.match(JSON.parse(body), { tiers: { tcp: { endpoint: `redis://${USER}:***@127.0.0.1:${redis.port}/0` } } }, how)
    t.notOk(body.includes('m4rker-password'), 'never the password')
  }
})

t.test('boot warns, naming the variables, when the status page or /metrics has no authorize', async (t) => {
  const { logs } = await build(t, { STATUS_PAGE: true, METRICS: true })
  const warning = logs().find((l) => l.level === 40 && /without an authorize/.test(l.msg))
  t.match(warning?.msg, /STATUS_PAGE/)
  t.match(warning?.msg, /METRICS/)
})

t.test('no such warning when each has its authorize, or when neither is mounted', async (t) => {
  const guarded = await build(t, {}, { app: { statusPage: { authorize: () => true }, metrics: { authorize: () => true } } })
  const plain = await build(t, {})
  for (const { logs } of [guarded, plain]) t.notOk(logs().some((l) => /without an authorize/.test(l.msg)))
})

t.test('metrics: { authorize } guards /metrics: false is a 403, true the series', async (t) => {
  const { app } = await build(t, {}, { app: { metrics: { authorize: (request) => request.headers.authorization === 'Bearer scraper' } } })
  const refused = await app.inject('/metrics')
  t.equal(refused.statusCode, 403)
  t.equal(refused.json<{ code: string }>().code, 'REDIS_TIERS_FORBIDDEN')
  const allowed = await app.inject({ url: '/metrics', headers: { authorization: 'Bearer scraper' } })
  t.equal(allowed.statusCode, 200)
  t.match(allowed.body, /redis_tiers_feature_active/)
})
