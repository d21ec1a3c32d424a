import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { Redis } from 'ioredis'
import { eventually } from './eventually'
import { startRedisServer, type RedisServer, type Teardown } from './redis-server'

// A real Redis Cluster on free loopback ports: `masters` redis-servers
// started with --cluster-enabled yes (and `replicas` per master), joined by
// `redis-cli --cluster create`, ready once every node says cluster_state:ok.

const exec = promisify(execFile)

export interface RedisCluster {
  nodes: RedisServer[]
  /** redis://127.0.0.1:<first node>: the seed an app is given as REDIS_URL. */
  url: string
  /** The current masters, by asking the cluster. */
  masters: () => Promise<RedisServer[]>
  /** Waits until every live node reports cluster_state:ok. */
  healthy: (ms?: number) => Promise<void>
}

async function clusterState (port: number): Promise<string> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    const info = await client.cluster('INFO')
    return /cluster_state:(\w+)/.exec(info)?.[1] ?? 'unknown'
  } catch {
    return 'down'
  } finally {
    client.disconnect()
  }
}

export async function startRedisCluster (t: Teardown, opts: { masters?: number, replicas?: number, nodeTimeoutMs?: number } = {}): Promise<RedisCluster> {
  const masters = opts.masters ?? 3
  const replicas = opts.replicas ?? 0
  // No 5 s wait before a replica's first sync (repl-diskless-sync-delay): replicas are ready to take over at once.
  const extra = ['--cluster-enabled', 'yes', '--cluster-node-timeout', String(opts.nodeTimeoutMs ?? 1000), '--cluster-require-full-coverage', 'no', '--repl-diskless-sync-delay', '0']
  const nodes = await Promise.all(Array.from({ length: masters * (1 + replicas) }, async () => await startRedisServer(t, { extraArgs: extra })))
  await exec('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', String(replicas), '--cluster-yes'])
  const cluster: RedisCluster = {
    nodes,
    url: `redis://127.0.0.1:${nodes[0].port}`,
    async masters () {
      const seed = new Redis({ port: nodes[0].port, host: '127.0.0.1' })
      try {
        const lines = (await seed.cluster('NODES') as string).split('\n').filter((l) => /\bmaster\b/.test(l) && !/\bfail\b/.test(l))
        const ports = lines.map((l) => Number(/:(\d+)@/.exec(l)?.[1]))
        return nodes.filter((n) => ports.includes(n.port))
      } finally {
        seed.disconnect()
      }
    },
    async healthy (ms = 20_000) {
      await eventually(async () => {
        const states = await Promise.all(nodes.map(async (n) => n.pid() === undefined ? 'ok' : await clusterState(n.port)))
        return states.every((s) => s === 'ok')
      }, ms, 'every node reports cluster_state:ok')
    }
  }
  await cluster.healthy()
  if (replicas > 0) {
    // A replica can only take over once it has synced with its master.
    await eventually(async () => {
      const links = await Promise.all(nodes.map(async (n) => {
        const client = new Redis({ port: n.port, host: '127.0.0.1' })
        try {
          const info = await client.info('replication')
          return !/role:slave/.test(info) || /master_link_status:up/.test(info)
        } finally {
          client.disconnect()
        }
      }))
      return links.every(Boolean)
    }, 20_000, 'every replica synced with its master')
  }
  return cluster
}
