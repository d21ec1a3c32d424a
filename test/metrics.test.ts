import t from 'tap'
import { build, eventually } from './helpers/build'
import { startRedisServer } from '../support/redis-server'

// GET /metrics: Prometheus text that a strict line grammar accepts, series
// per feature and tier, live tier state, opt-in when mounted, no secret.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)$/
const COMMENT = /^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped))$/

interface Sample { name: string, labels: Record<string, string>, value: number }

/** Parses the exposition format line by line; any line the grammar does not accept fails. */
function parse (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    if (line.startsWith('#')) {
      if (!COMMENT.test(line)) throw new Error(`not a HELP/TYPE line: ${line}`)
      continue
    }
    const m = SAMPLE.exec(line)
    if (m === null) throw new Error(`not a sample line: ${line}`)
    const labels = Object.fromEntries([...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]))
    samples.push({ name: m[1], labels, value: Number(m[4]) })
  }
  return samples
}

const find = (samples: Sample[], name: string, labels: Record<string, string> = {}): Sample | undefined =>
  samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))

t.test('/metrics on tcp: per-feature series, the live tier state, and no secret', async (t) => {
  const password = 'metrics-secret-password'
  const redis = await startRedisServer(t, { password })
  const { app } = await build(t, { DEMO_ROUTES: true, METRICS: true, REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: 500, QUEUES_DRAIN_MS: 500, REDIS_DAILY_COMMAND_BUDGET: 1_000_000 })
  await app.cache.getOrSet('k', () => 1)
  await app.cache.get('k')
  await app.sse.publish('public:m', { n: 1 })
  await app.presence.heartbeat('u1')
  for (let i = 0; i < 3; i++) await app.rateLimiter.consume('m', { limit: 1, window: '1m' })
  await app.queues.add('report', { userId: 'u1', steps: 1, stepMs: 1 })

  const res = await app.inject('/metrics')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  t.notOk(res.body.includes(password), 'no credential')
  const samples = parse(res.body)
  t.match(find(samples, 'redis_tiers_tier_up', { tier: 'tcp' }), { value: 1 })
  t.ok(find(samples, 'redis_tiers_tier_latency_milliseconds', { tier: 'tcp' }) !== undefined)
  for (const feature of ['cache', 'sse', 'presence', 'queues', 'rate-limit']) t.match(find(samples, 'redis_tiers_feature_active', { feature }), { labels: { tier: 'tcp' }, value: 1 }, feature)
  t.match(find(samples, 'redis_tiers_cache_hits_total', { tier: 'tcp', level: 'l1' }), { value: 1 })
  t.match(find(samples, 'redis_tiers_cache_misses_total', { tier: 'tcp' }), { value: 1 })
  t.match(find(samples, 'redis_tiers_sse_events_total', { outcome: 'published' }), { value: 2 }, 'ours, and presence\'s join event for browsers')
  t.match(find(samples, 'redis_tiers_presence_online', { tier: 'tcp' }), { value: 1 })
  t.ok(find(samples, 'redis_tiers_queue_jobs', { queue: 'report' }) !== undefined, 'jobs per queue and state')
  t.match(find(samples, 'redis_tiers_rate_limit_decisions_total', { tier: 'tcp', source: 'shared' }), { value: 2 }, 'the first two decided by Redis')
  t.match(find(samples, 'redis_tiers_rate_limit_decisions_total', { tier: 'tcp', source: 'blocked' }), { value: 1 }, 'the third by the local block list')
  const cacheCommands = find(samples, 'redis_tiers_redis_commands_total', { feature: 'cache', tier: 'tcp' })?.value ?? 0
  t.ok(cacheCommands >= 5, 'commands per feature and tier, scripts\' own included')
  t.ok(cacheCommands > (find(samples, 'redis_tiers_redis_requests_total', { feature: 'cache', tier: 'tcp' })?.value ?? Infinity), 'more commands than round trips')
  const used = find(samples, 'redis_tiers_budget_commands', { kind: 'used' })?.value ?? 0
  t.ok(used >= cacheCommands, 'the budget counts every feature')
  t.match(find(samples, 'redis_tiers_budget_commands', { kind: 'limit' }), { value: 1_000_000 })
  t.match(find(samples, 'redis_tiers_budget_commands', { kind: 'remaining' }), { value: 1_000_000 - used })
  t.match(find(samples, 'redis_tiers_budget_shedding'), { value: 0 })

  await redis.stop()
  await eventually(async () => find(parse((await app.inject('/metrics')).body), 'redis_tiers_tier_up', { tier: 'tcp' })?.value === 0, 5000, 'tier_up 0 once Redis is gone')
})

t.test('/metrics is opt-in when the app is mounted', async (t) => {
  const { app } = await build(t, {})
  t.equal((await app.inject('/metrics')).statusCode, 404)
  const on = await build(t, { METRICS: true })
  const samples = parse((await on.app.inject('/metrics')).body)
  t.equal(find(samples, 'redis_tiers_tier_up'), undefined, 'no tier configured, no tier series')
  t.match(find(samples, 'redis_tiers_feature_active', { feature: 'queues' }), { labels: { tier: 'none' }, value: 0 }, 'a skipped feature is 0')
  t.match(find(samples, 'redis_tiers_budget_commands', { kind: 'used' }), { value: 0 })
  t.equal(find(samples, 'redis_tiers_budget_commands', { kind: 'limit' }), undefined, 'no budget set: no limit series, rather than a limit of 0')
  t.equal(find(samples, 'redis_tiers_budget_exhaustion_timestamp_seconds'), undefined)
})
