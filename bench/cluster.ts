import type { FastifyInstance } from 'fastify'
import { teardownList, bootApp, compare, opsPerSecond, row } from './helpers'
import { startRedisServer } from '../support/redis-server'
import { startRedisCluster } from '../support/redis-cluster'

// Redis Cluster (3 masters) vs one Redis, same run, ABBA pairs, medians:
// cache writes and L2 reads (L1 off, so every call reaches Redis), and SSE
// publishes, from one app instance and from two at once. On a 2-core machine
// that also runs every Redis node the cluster cannot add capacity: the figure
// that matters is what it costs one instance (aim: no more than 10 %).
// Run with `npm run bench -- cluster`.

const CONCURRENCY = 32

async function workload (apps: FastifyInstance[], kind: 'cache' | 'sse', ms: number): Promise<number> {
  let i = 0
  const one = async (): Promise<unknown> => {
    const app = apps[i % apps.length]
    const n = i++
    if (kind === 'sse') return await app.sse.publish(`public:bench:${n % 100}`, { n })
    if (n % 2 === 0) return await app.cache.set(`k:${n % 1000}`, { n }, { ttl: 60 })
    return await app.cache.get(`k:${n % 1000}`)
  }
  const lanes = await Promise.all(Array.from({ length: CONCURRENCY }, async () => await opsPerSecond(ms, one)))
  return lanes.reduce((a, b) => a + b, 0)
}

export async function run (): Promise<void> {
  const cleanups = teardownList()
  try {
    const single = await startRedisServer(cleanups)
    const cluster = await startRedisCluster(cleanups, { masters: 3 })
    const env = { CACHE_L1_MAX_ENTRIES: 0, PRESENCE_ENABLED: false, QUEUES_ENABLED: false, REDIS_COMMAND_TIMEOUT_MS: 2000, CACHE_TIMEOUT_MS: 2000, SSE_TIMEOUT_MS: 2000 }
    const onSingle = [await bootApp({ ...env, REDIS_URL: single.url }), await bootApp({ ...env, REDIS_URL: single.url })]
    const onCluster = [await bootApp({ ...env, REDIS_URL: cluster.url }), await bootApp({ ...env, REDIS_URL: cluster.url })]
    process.stdout.write(`${CONCURRENCY} calls in flight, 2 s per sample, 5 alternating pairs, medians; ratio = cluster / single\n`)
    for (const kind of ['cache', 'sse'] as const) {
      await workload(onSingle.slice(0, 1), kind, 500)
      await workload(onCluster.slice(0, 1), kind, 500)
      for (const instances of [1, 2]) {
        const r = await compare(5, async () => await workload(onSingle.slice(0, instances), kind, 2000), async () => await workload(onCluster.slice(0, instances), kind, 2000))
        const what = kind === 'cache' ? 'cache set/get (L1 off)' : 'sse publish'
        row(`${what}, ${instances} instance${instances > 1 ? 's' : ''}: single Redis`, `${r.base.toFixed(0)} ops/s`)
        row(`${what}, ${instances} instance${instances > 1 ? 's' : ''}: 3-master cluster`, `${r.ours.toFixed(0)} ops/s`, r.ratio, instances === 1 ? 0.9 : undefined)
      }
    }
    const errors = [...onSingle, ...onCluster].reduce((n, app) => n + app.cache.stats().redisErrors, 0)
    process.stdout.write(`    Redis errors during the run: ${errors}\n`)
    await Promise.all([...onSingle, ...onCluster].map(async (app) => await app.close()))
  } finally {
    await cleanups.run()
  }
}
