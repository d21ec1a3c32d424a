import net from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import app from '../app'
import type { EnvInput } from '../lib/config'
import { startRedisServer, freePort } from '../test/helpers/redis-server'
import { startRestServer } from '../test/helpers/rest-server'

// Foundation benchmarks: what the tier machinery costs at boot and per
// request, each against a baseline measured in the same run.
// Run with `npm run bench`; needs redis-server on PATH.

const cleanups: Array<() => unknown> = []
const teardown = { teardown: (fn: () => unknown) => { cleanups.push(fn) } }

async function time<T> (fn: () => Promise<T>): Promise<[number, T]> {
  const started = performance.now()
  const value = await fn()
  return [performance.now() - started, value]
}

async function boot (env: EnvInput): Promise<FastifyInstance> {
  const fastify = Fastify()
  await fastify.register(app, { processEnv: false, env })
  await fastify.ready()
  return fastify
}

async function median (runs: number, fn: () => Promise<number>): Promise<number> {
  const samples: number[] = []
  for (let i = 0; i < runs; i++) samples.push(await fn())
  samples.sort((a, b) => a - b)
  return samples[Math.floor(samples.length / 2)]
}

async function opsPerSecond (ms: number, fn: () => Promise<unknown>): Promise<number> {
  const end = performance.now() + ms
  let ops = 0
  while (performance.now() < end) {
    await fn()
    ops++
  }
  return ops / (ms / 1000)
}

async function main (): Promise<void> {
  const redis = await startRedisServer(teardown)
  const rest = await startRestServer(teardown, redis)
  const closed = await freePort()
  // Accepts TCP and never answers, like a firewalled or stopped host: the probe can only end at its deadline.
  const silent = net.createServer((socket) => { socket.on('error', () => {}); cleanups.push(() => socket.destroy()) })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  cleanups.push(() => silent.close())
  const row = (name: string, value: string, ratio?: number): void => {
    process.stdout.write(`${name.padEnd(46)} ${value.padStart(14)}${ratio === undefined ? '' : `   ratio ${ratio.toFixed(2)}`}\n`)
  }

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
    const ms = await median(name.includes('deadline') ? 3 : 7, async () => { const [ms, f] = await time(async () => await boot(env)); await f.close(); return ms })
    row(name, `${ms.toFixed(1)} ms`, ms / bare)
  }

  process.stdout.write('\nrequests per second over inject (2 s each), ratio against the baseline above it\n')
  const plain = Fastify()
  plain.get('/health/live', async () => ({ status: 'ok' }))
  await plain.ready()
  const withApp = await boot({ REDIS_URL: redis.url })
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
  for (const fn of cleanups.reverse()) await fn()
}

main().catch((err: Error) => {
  process.stderr.write(`bench failed: ${err.message}\n`)
  process.exit(1)
})
