import t from 'tap'
import { build } from './helpers/build'
import { freePort, startRedisServer } from '../support/redis-server'
import { registerTier } from '../lib/tiers/registry'
import { toyTier } from './helpers/toy-tier'

// A new tier is one file (test/helpers/toy-tier.ts: a TierDefinition and its
// name declared for the types) plus the one registration line below. With
// nothing else changed, connections configures and probes it, the features that
// accept any Redis tier resolve to it, and /health, /metrics, the status page
// and the boot report list it beside tcp and rest.

t.teardown(registerTier(toyTier))

const FAST = { REDIS_CONNECT_TIMEOUT_MS: 500, REDIS_COMMAND_TIMEOUT_MS: 500, METRICS: true, STATUS_PAGE: true }

t.test('a registered tier is configured, probed and resolved to like the built-in ones', async (t) => {
  const redis = await startRedisServer(t)
  const { app, logs } = await build(t, { ...FAST, TOY_REDIS_URL: redis.url })
  t.match(app.connections.tiers, { tcp: { configured: false }, rest: { configured: false }, toy: { configured: true, reachable: true, source: 'TOY_REDIS_URL' } })
  for (const feature of ['cache', 'sse', 'presence', 'rate-limit']) {
    t.match(app.features[feature], { status: 'active', tier: 'toy', shared: true, reason: /tcp is not configured; using toy/ }, feature)
  }
  t.match(app.features.queues, { status: 'skipped', reason: /queues need a TCP Redis \(REDIS_URL\) or Upstash REST/ }, 'a feature that names its tiers keeps them')

  await app.cache.set('greeting', 'hello')
  t.equal(await app.cache.get('greeting'), 'hello', 'the cache works on it')
  t.ok(app.connections.usage.entries().some((e) => e.tier === 'toy' && e.feature === 'cache' && e.commands > 0), 'its commands are metered as the tier\'s')

  t.match(logs().find((l) => l.msg.startsWith('tier toy:')), { level: 30, msg: /tier toy: reachable at redis:\/\/127\.0\.0\.1:\d+\/0 \(TOY_REDIS_URL\)/ }, 'a boot line of its own')
  const health = await app.inject('/health')
  t.match(health.json(), { status: 'ok', tiers: { toy: { configured: true, reachable: true, mode: 'single' } } }, '/health reports it')
  const metrics = await app.inject('/metrics')
  t.match(metrics.body, /redis_tiers_tier_up\{tier="toy"\} 1/, '/metrics reports it')
  const status = await app.inject('/status.json')
  t.match(status.json(), { tiers: [{ tier: 'tcp', setUp: 'Set REDIS_URL to use a TCP Redis.' }, { tier: 'rest' }, { tier: 'toy', configured: true, reachable: true }] }, 'the status page lists it last, as registered')
})

t.test('it is forced, and diagnosed, by the same variables as the others', async (t) => {
  const redis = await startRedisServer(t)
  const { app } = await build(t, { ...FAST, TOY_REDIS_URL: redis.url, REDIS_URL: redis.url, CACHE_TIER: 'toy' })
  t.match(app.features.cache, { status: 'active', tier: 'toy', reason: /forced by CACHE_TIER=toy/ })
  t.match(app.features.sse, { status: 'active', tier: 'tcp' }, 'registered after tcp, it is preferred after tcp')

  const port = await freePort()
  const down = await build(t, { ...FAST, TOY_REDIS_URL: `redis://127.0.0.1:${port}` })
  t.match(down.app.connections.tiers.toy, { configured: true, reachable: false, lastError: /connection refused by .* \(TOY_REDIS_URL\)/ })
  t.match(down.app.features.cache, { status: 'active', tier: 'memory', reason: /toy unreachable: connection refused/ })
})
