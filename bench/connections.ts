import net from 'node:net'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import type { EnvInput } from '../lib/config'
import { teardownList, bootApp, median, opsPerSecond, row, time } from './helpers'
import { startRedisServer, freePort } from '../test/helpers/redis-server'
import { startRestServer } from '../test/helpers/rest-server'

// Foundation benchmarks: what the tier machinery costs at boot and per
// request, each against a baseline measured in the same run.
// Run with `npm run bench -- connections`; needs redis-server on PATH.

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const rest = await startRestServer(cleanups, redis)
  const closed = await freePort()
  // Accepts TCP and never answers, like a firewalled or stopped host: the probe can only end at its deadline.
  const silent = net.createServer((socket) => { socket.on('error', () => {}); cleanups.teardown(() => socket.destroy()) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  cleanups.teardown(() => silent.close())

  process.stdout.write('boot to ready (median of 7), ratio against a bare Fastify instance\n')
  const bare = await median(7, async () => { const [ms, f] = await time(async () => { const f = Fastify(); await f.ready(); return f }); await f.close(); return ms })
  row('bare Fastify', `${bare.toFixed(1)} ms`)
  const cases: Array<[string, EnvInput]> = [
    ['memory (no env)', {}],
    ['tcp reachable', { REDIS_URL: redis.url }],
    ['rest reachable', { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }],
    ['tcp + rest reachable', { REDIS_URL: redis.url, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }],
    ['tcp closed port (deadline 2000 ms)', { REDIS_URL: `redis://127.0.0.1:${closed}` }],
    ['tcp host never answers (deadline 2000 ms)', { REDIS_URL: `redis://127.0.0.1:${(silent.address() as net.AddressInfo).port}` }],
    ['rest closed port (deadline 2000 ms)', { UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${closed}`, UPSTASH_REDIS_REST_TOKEN: 'x' }]
  ]
  for (const [name, env] of cases) {
    const ms = await median(name.includes('deadline') ? 3 : 7, async () => { const [ms, f] = await time(async () => await bootApp(env)); await f.close(); return ms })
    row(name, `${ms.toFixed(1)} ms`, ms / bare)
  }

  process.stdout.write('\nrequests per second over inject (2 s each), ratio against the baseline above it\n')
  const plain = Fastify()
  plain.get('/health/live', async () => ({ status: 'ok' }))
  await plain.ready()
  const withApp = await bootApp({ REDIS_URL: redis.url })
  await opsPerSecond(500, async () => await plain.inject('/health/live')) // warm-up
  await opsPerSecond(500, async () => await withApp.inject('/health/live'))
  const base = await opsPerSecond(2000, async () => await plain.inject('/health/live'))
  row('bare route /health/live', `${base.toFixed(0)} req/s`)
  const live = await opsPerSecond(2000, async () => await withApp.inject('/health/live'))
  row('app /health/live (tcp connected)', `${live.toFixed(0)} req/s`, live / base)

  const direct = new Redis(redis.url)
  const pingBase = await opsPerSecond(2000, async () => await direct.ping())
  row('hand-written ioredis PING', `${pingBase.toFixed(0)} ops/s`)
  const health = await opsPerSecond(2000, async () => await withApp.inject('/health'))
  row('app /health (PINGs tcp)', `${health.toFixed(0)} req/s`, health / pingBase)
  direct.disconnect()
  await plain.close()
  await withApp.close()
  await promotion()
  await cleanups.run()
}

/**
 * A Redis that starts after the app: time from it accepting connections to every feature on tcp,
 * with the default re-probe cap (5 s) and hold-down (1 s), and with both at 250 ms. The re-probe
 * backoff, not the machinery, dominates: the figure also gives the re-probes made and the moves.
 * Median of 3 runs each. Target: <= hold-down + 1 s after the re-probe that finds it.
 */
async function promotion (): Promise<void> {
  const FEATURES = ['cache', 'sse', 'presence', 'queues'] as const
  process.stdout.write('\nlate Redis: from accepting connections to every feature on tcp (median of 3)\n')
  for (const [label, env] of [['defaults (re-probe <= 5 s, hold-down 1 s)', {}], ['REDIS_REPROBE_MAX_MS=250, REDIS_HOLD_DOWN_MS=250', { REDIS_REPROBE_MAX_MS: 250, REDIS_HOLD_DOWN_MS: 250 }]] as const) {
    const samples: Array<{ total: number, afterFound: number }> = []
    for (let run = 0; run < 3; run++) {
      const cleanups = teardownList()
      const port = await freePort()
      const app = await bootApp({ REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_CONNECT_TIMEOUT_MS: 500, ...env })
      await new Promise((resolve) => setTimeout(resolve, 1500)) // the app has been up a while: its re-probe backoff has grown
      let foundAt = 0
      app.connections.on('tier', () => { foundAt ||= performance.now() })
      await startRedisServer(cleanups, { port })
      const started = performance.now()
      while (!FEATURES.every((f) => app.features[f].tier === 'tcp')) await new Promise((resolve) => setTimeout(resolve, 5))
      const done = performance.now()
      samples.push({ total: done - started, afterFound: done - foundAt })
      await app.close()
      await cleanups.run()
    }
    const mid = (pick: (s: { total: number, afterFound: number }) => number): number => samples.map(pick).sort((a, b) => a - b)[1]
    const holdDown = 'REDIS_HOLD_DOWN_MS' in env ? env.REDIS_HOLD_DOWN_MS : 1000
    row(`${label}: total`, `${mid((s) => s.total).toFixed(0)} ms`)
    row(`  from the re-probe that found it (target <= ${holdDown + 1000} ms)`, `${mid((s) => s.afterFound).toFixed(0)} ms ${mid((s) => s.afterFound) <= holdDown + 1000 ? 'met' : 'NOT met'}`)
  }
}
