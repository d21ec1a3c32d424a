import t from 'tap'
import http from 'node:http'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import { build, eventually, type Built } from './helpers/build'
import { startRedisServer, type RedisServer, type Teardown } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { diagnose, type DiagnosisContext } from '../lib/diagnose'
import { refusalCause } from '../lib/refusal'
import type { EnvInput } from '../lib/config'

// A Redis that answers but refuses: full (OOM under maxmemory: writes refused,
// reads served) or a provider whose request quota is spent (everything
// refused). Each is a state of the tier with its cause and fix, on /health, in
// the log, on /metrics and the status page, and never "cannot reach".

const FAST = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, REDIS_REPROBE_MAX_MS: 500, REDIS_HOLD_DOWN_MS: 200 }
const QUOTA_TEXT = 'ERR max requests limit exceeded. Limit: 500000, Usage: 500000.'
const WARN = 40

interface TierBody { reachable: boolean, lastError: string | null, refusing: { cause: string, reason: string } | null, maxmemory?: number | null, maxmemoryPolicy?: string | null }
interface HealthBody { status: string, tiers: Record<'tcp' | 'rest', TierBody> }

async function admin (t: Teardown, redis: RedisServer): Promise<Redis> {
  const client = new Redis(redis.url, { lazyConnect: true })
  t.teardown(() => client.disconnect())
  await client.connect()
  return client
}

async function health (app: Built['app']): Promise<{ code: number, body: HealthBody }> {
  const res = await app.inject('/health')
  return { code: res.statusCode, body: res.json<HealthBody>() }
}

async function publish (app: Built['app'], channel = 'public:misbehaving'): Promise<{ statusCode: number, message: string }> {
  const res = await app.inject({ method: 'POST', url: `/events/${channel}`, payload: { n: 1 } })
  return { statusCode: res.statusCode, message: res.json<{ message?: string }>().message ?? '' }
}

/** An Upstash-compatible endpoint in front of the bridge that answers Upstash's quota error while `spent`. */
async function quotaProxy (t: Teardown, target: string, spent: boolean): Promise<{ url: string, spend: (on: boolean) => void, refused: () => number }> {
  let refusing = spent
  let refused = 0
  const server = http.createServer((req, res) => {
    if (refusing) {
      refused++
      const body = JSON.stringify({ error: QUOTA_TEXT })
      res.writeHead(400, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
      return
    }
    const upstream = http.request(new URL(req.url ?? '/', target), { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    upstream.on('error', () => res.destroy())
    res.on('close', () => upstream.destroy())
    req.pipe(upstream)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spend: (on) => { refusing = on }, refused: () => refused }
}

async function restBehindQuota (t: Teardown, spent: boolean, env: EnvInput = {}): Promise<Built & { proxy: Awaited<ReturnType<typeof quotaProxy>> }> {
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const proxy = await quotaProxy(t, bridge.url, spent)
  const built = await build(t, { ...FAST, ...env, UPSTASH_REDIS_REST_URL: proxy.url, UPSTASH_REDIS_REST_TOKEN: bridge.token })
  return { ...built, proxy }
}

const lines = (built: Built, pattern: RegExp): Array<{ level: number, msg: string }> => built.logs().filter((l) => pattern.test(l.msg))

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: a write refused with OOM makes the tier full on the next /health, and a write that succeeds again clears it`, async (t) => {
    const redis = await startRedisServer(t)
    const env = tier === 'tcp' ? { REDIS_URL: redis.url } : await startRestServer(t, redis).then((b) => ({ UPSTASH_REDIS_REST_URL: b.url, UPSTASH_REDIS_REST_TOKEN: b.token }))
    const built = await build(t, { ...FAST, ...env })
    const { app } = built
    const redisAdmin = await admin(t, redis)
    t.equal((await health(app)).body.status, 'ok', 'ok before')

    await redisAdmin.config('SET', 'maxmemory', '1')
    const refused = await publish(app)
    t.equal(refused.statusCode, 503, 'the write is refused')
    t.match(refused.message, new RegExp(`${tier} refuses writes \\(.*OOM command not allowed.*\\): Redis is full \\(maxmemory (unknown|1 B)`), 'the 503 names the cause and the fix, after Redis\'s words')

    const full = await health(app)
    t.equal(full.code, 200, 'reads are served: not a reason to take the instance out')
    t.equal(full.body.status, 'degraded')
    t.match(full.body.tiers[tier], {
      reachable: true,
      refusing: {
        cause: 'full',
        reason: /^Redis is full \(maxmemory 1 B, noeviction\): writes are refused, reads are served; this app keeps there cache entries for CACHE_DEFAULT_TTL \(60s\).*SSE histories of SSE_HISTORY \(1000\) events per channel for SSE_HISTORY_TTL \(1h\).*lower CACHE_DEFAULT_TTL or SSE_HISTORY or SSE_HISTORY_TTL, or raise maxmemory/
      }
    })
    await eventually(() => lines(built, new RegExp(`^tier ${tier}: refusing writes: Redis is full \\(maxmemory 1 B`)).length === 1, 2000, 'the transition logged')

    await redisAdmin.config('SET', 'maxmemory', '0')
    t.equal(app.connections.tiers[tier].refusing?.cause, 'full', 'still full until a write or a check says otherwise')
    t.equal((await publish(app)).statusCode, 201, 'a write succeeds')
    t.equal(app.connections.tiers[tier].refusing, null, 'the successful write cleared it')
    t.match((await health(app)).body, { status: 'ok', tiers: { [tier]: { refusing: null } } })
    const transitions = lines(built, new RegExp(`^tier ${tier}: (refusing writes|accepts writes again)`))
    t.same(transitions.map((l) => [l.level, l.msg.split(':')[1].trim()]), [[WARN, 'refusing writes'], [30, 'accepts writes again']], 'one line per transition')
  })
}

t.test('tcp full: /health alone finds that there is room again', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  const redisAdmin = await admin(t, redis)
  await redisAdmin.config('SET', 'maxmemory', '1')
  t.equal((await publish(app)).statusCode, 503)
  t.equal((await health(app)).body.status, 'degraded')
  await redisAdmin.config('SET', 'maxmemory', '0')
  t.match((await health(app)).body, { status: 'ok', tiers: { tcp: { refusing: null, maxmemory: 0 } } }, 'the check while full read INFO memory')
})

t.test('tcp full: /metrics and the status page say so', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
  const redisAdmin = await admin(t, redis)
  t.match((await app.inject('/metrics')).body, /redis_tiers_tier_full\{tier="tcp"\} 0/)
  await redisAdmin.config('SET', 'maxmemory', '1')
  t.equal((await publish(app)).statusCode, 503)
  const metrics = (await app.inject('/metrics')).body
  t.match(metrics, /redis_tiers_tier_full\{tier="tcp"\} 1/)
  t.match(metrics, /redis_tiers_tier_quota_spent\{tier="tcp"\} 0/)
  t.match(metrics, /redis_tiers_tier_up\{tier="tcp"\} 1/, 'full is not down')
  const status = (await app.inject('/status.json')).json<{ status: string, tiers: Array<{ tier: string, refusing: { cause: string, reason: string } | null }> }>()
  t.equal(status.status, 'degraded')
  t.match(status.tiers.find((s) => s.tier === 'tcp'), { refusing: { cause: 'full', reason: /Redis is full/ } })
})

t.test('boot: maxmemory and its policy are measured with one command, and said in the boot line and /health', async (t) => {
  const redis = await startRedisServer(t, { extraArgs: ['--maxmemory', '64mb'] })
  const built = await build(t, { ...FAST, REDIS_URL: redis.url })
  // The measure is one INFO memory; the rest of connections' boot is the restart watch's INFO server and its
  // dataset id (EVALSHA answered NOSCRIPT, then EVAL running GET and SET on a new Redis), as MONITOR shows.
  t.equal(built.app.connections.usage.entries().find((e) => e.feature === 'connections' && e.tier === 'tcp')?.commands, 1 + 1 + 4, 'one INFO memory')
  t.equal(lines(built, /^tier tcp: reachable at .* ms; maxmemory 64 MB, noeviction$/).length, 1)
  t.equal(lines(built, /BullMQ requires noeviction/).length, 0, 'no eviction warning under noeviction')
  t.match((await health(built.app)).body.tiers.tcp, { maxmemory: 64 * 1024 * 1024, maxmemoryPolicy: 'noeviction' })
})

t.test('boot: queues on a Redis whose policy can evict their keys get a warning with the fix', async (t) => {
  const redis = await startRedisServer(t, { extraArgs: ['--maxmemory-policy', 'allkeys-lru'] })
  const built = await build(t, { ...FAST, REDIS_URL: redis.url })
  const warned = lines(built, /^tier tcp: maxmemory-policy is allkeys-lru/)
  t.equal(warned.length, 1)
  t.equal(warned[0].level, WARN)
  t.match(warned[0].msg, /may evict BullMQ's keys .* BullMQ requires noeviction; set maxmemory-policy noeviction/)
})

t.test('boot: without queues an evicting policy is no warning', async (t) => {
  const redis = await startRedisServer(t, { extraArgs: ['--maxmemory-policy', 'allkeys-lru'] })
  const built = await build(t, { ...FAST, REDIS_URL: redis.url, QUEUES_ENABLED: false })
  t.equal(lines(built, /maxmemory-policy is/).length, 0)
})

t.test('rest, quota spent before boot: reachable but refusing, features bound to it and following their outage behaviour', async (t) => {
  const built = await restBehindQuota(t, true)
  const { app } = built
  const boot = lines(built, /^tier rest: /)
  t.equal(boot.length, 1)
  t.equal(boot[0].level, WARN)
  t.match(boot[0].msg, /^tier rest: reachable at .* but refusing commands: the Redis provider refuses every command at .*: its request quota is spent \(limit 500000, used 500000\); the endpoint is reachable and UPSTASH_REDIS_REST_TOKEN is accepted; Upstash counts requests per month .* Fix: move the database to a paid plan .* REDIS_DAILY_COMMAND_BUDGET=16129 .* and REDIS_BUDGET_GUARD=true$/)
  t.notMatch(built.logText(), /cannot reach/)
  for (const feature of ['cache', 'sse', 'presence', 'queues', 'rate-limit']) t.match(app.features[feature], { status: 'active', tier: 'rest', reason: /refuses commands \(.*request quota is spent/ }, `${feature} is on rest, not a memory island`)
  const refused = await publish(app)
  t.equal(refused.statusCode, 503, 'sse: unavailable, as declared')
  t.match(refused.message, /rest refuses commands \(ERR max requests limit exceeded[^)]*\): the Redis provider .*request quota is spent.*REDIS_BUDGET_GUARD=true/)
  t.notMatch(refused.message, /127\.0\.0\.1/, 'no address in a 503')
  const h = await health(app)
  t.equal(h.body.status, 'degraded')
  t.match(h.body.tiers.rest, { reachable: true, lastError: null, refusing: { cause: 'quota', reason: /request quota is spent/ } })
})

t.test('rest, quota spent before boot, <FEATURE>_ON_OUTAGE=memory: the feature runs in memory and says so at warn on this instance', async (t) => {
  const built = await restBehindQuota(t, true, { SSE_ON_OUTAGE: 'memory' })
  t.match(built.app.features.sse, { status: 'active', tier: 'memory', reason: /^rest refuses commands \(.*request quota is spent.*\); SSE_ON_OUTAGE=memory: running in memory/ })
  const memory = Object.entries(built.app.features).filter(([, f]) => f.tier === 'memory').map(([name]) => name)
  t.same(memory, ['sse'], 'only the feature that asked for memory')
  for (const name of memory) {
    t.equal(lines(built, new RegExp(`^feature ${name}: active on memory \\(rest refuses commands .*request quota is spent`)).filter((l) => l.level === WARN).length, 1, `${name} in memory is warned with the reason`)
  }
})

t.test('rest, quota spent after boot: /health names the quota, not "cannot reach", and clears when commands are answered again', async (t) => {
  const built = await restBehindQuota(t, false)
  const { app, proxy } = built
  t.equal((await health(app)).body.status, 'ok')
  proxy.spend(true)
  const refused = await publish(app)
  t.equal(refused.statusCode, 503)
  t.match(refused.message, /request quota is spent \(limit 500000, used 500000\)/)
  const h = await health(app)
  t.equal(h.body.status, 'degraded')
  t.match(h.body.tiers.rest, { reachable: true, refusing: { cause: 'quota', reason: /the Redis provider refuses every command .* request quota is spent/ } })
  t.notMatch(JSON.stringify(h.body), /cannot reach|down:/)
  t.equal(lines(built, /^tier rest: refusing commands: .*request quota is spent/).length, 1, 'logged once')
  t.ok(proxy.refused() > 0)

  proxy.spend(false)
  t.match((await health(app)).body, { status: 'ok', tiers: { rest: { refusing: null } } }, 'an answered PING clears it')
  t.equal(lines(built, /^tier rest: accepts commands again$/).length, 1)
})

t.test('rest, quota spent after boot with SSE_ON_OUTAGE=memory: sse moves to memory with a warn line, and back', async (t) => {
  const built = await restBehindQuota(t, false, { SSE_ON_OUTAGE: 'memory' })
  const { app, proxy } = built
  proxy.spend(true)
  await health(app)
  await eventually(() => app.features.sse.tier === 'memory', 2000, 'sse in memory')
  t.equal(lines(built, /^feature sse: rest -> memory/).filter((l) => l.level === WARN).length, 1)
  t.equal(app.features.cache.tier, 'rest', 'cache fails open where it is')
  proxy.spend(false)
  await health(app)
  await eventually(() => app.features.sse.tier === 'rest', 3000, 'sse back on rest')
})

t.test('the TCP form of the quota error is diagnosed the same way', async (t) => {
  const ctx: DiagnosisContext = { tier: 'tcp', variable: 'REDIS_URL', secretVariable: 'REDIS_URL', endpoint: 'rediss://default:***@eu1.upstash.io:6379', tls: true, timeoutMs: 2000 }
  const err = Object.assign(new Error(QUOTA_TEXT), { name: 'ReplyError' })
  t.equal(refusalCause(err), 'quota')
  t.match(diagnose(err, ctx), /^the Redis provider refuses every command at rediss:\/\/default:\*\*\*@eu1\.upstash\.io:6379 \(REDIS_URL\): its request quota is spent \(limit 500000, used 500000\); the endpoint is reachable and REDIS_URL is accepted; Upstash counts requests per month/)
  t.match(diagnose(new Error('ERR max daily request limit exceeded'), ctx), /request quota is spent; .*per day/)
  t.equal(refusalCause(new Error("OOM command not allowed when used memory > 'maxmemory'.")), 'full')
  t.equal(refusalCause(new Error('Connection is closed.')), null)
})
