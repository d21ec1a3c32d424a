import { randomUUID } from 'node:crypto'
import { withTimeout } from './deadline'
import { lua, type Meter, type RedisCommands } from './redis-commands'
import type { RedisTier } from './resolve-tier'

// A Redis restarted without persistence comes back empty: every job, presence
// entry and history is gone, and nothing fails to say so. Two signals, cheap
// on purpose (every command is billed on metered Redis, so nothing periodic):
// - the dataset id: a random value kept in one key, created by whichever
//   instance first finds it missing. An instance that finds another id than
//   the one it knew has lost its data (a restart without persistence, a
//   FLUSHALL, a failover to an empty replica); a restart that kept its data
//   keeps the key. It works on every tier, the rest tier included.
// - the server's run_id (INFO server), on clients that say when they
//   reconnected (ioredis's `ready`): one command per reconnect, and the
//   dataset id is read only when run_id changed (or could not be read).

export interface RedisRestart {
  tier: RedisTier
  /** When it was noticed. */
  at: string
  /** One sentence: what was seen and what it means. */
  reason: string
}

/** One key per database, shared by every app on it: it is about the data, not about one app. */
export const DATASET_KEY = 'redis-tiers:dataset'

// The dataset id, created when missing; replies { id, 1 } when it created it.
const DATASET = lua(`local id = redis.call('GET', KEYS[1])
if id then return { id, 0 } end
redis.call('SET', KEYS[1], ARGV[1])
return { ARGV[1], 1 }`, (_keys, reply) => Array.isArray(reply) && Number(reply[1]) === 1 ? 2 : 1)

/** What an ioredis client (Redis or Cluster) offers that this needs; the Upstash client has neither. */
interface ReconnectingClient {
  on: (event: 'ready', listener: () => void) => unknown
  off: (event: 'ready', listener: () => void) => unknown
  info: (section: string) => Promise<string>
}

function reconnecting (client: unknown): client is ReconnectingClient {
  const c = client as Partial<ReconnectingClient> | null
  return typeof c?.on === 'function' && typeof c.off === 'function' && typeof c.info === 'function'
}

export interface RestartWatchOptions {
  commandTimeoutMs: number
  /** The commands adapter of a tier (metered as the connections' own), null while it has no client. */
  commands: (tier: RedisTier) => RedisCommands | null
  /** Told of each INFO sent. */
  meter: (tier: RedisTier) => Meter
  onRestart: (restart: RedisRestart) => void
  /** A check that failed (a timeout, a refused command): the next one tries again. */
  onError: (tier: RedisTier, err: unknown) => void
}

export interface RestartWatch {
  /**
   * The tier's client is up (boot, or back after being down): the first call per client learns
   * what it holds; later calls on a client without reconnect events check the dataset id.
   */
  up: (tier: RedisTier, client: unknown) => Promise<void>
  close: () => void
}

export function restartWatch (opts: RestartWatchOptions): RestartWatch {
  const known = new Map<RedisTier, { runId: string | null, dataset: string | null }>()
  const watched = new Map<unknown, { tier: RedisTier, listener: () => void }>()
  const queue = new Map<RedisTier, Promise<void>>()
  let closed = false

  async function runIdOf (tier: RedisTier, client: ReconnectingClient): Promise<string | null> {
    opts.meter(tier)(1)
    const info = await withTimeout(client.info('server'), opts.commandTimeoutMs)
    return /run_id:(\w+)/.exec(info)?.[1] ?? null
  }

  async function datasetOf (tier: RedisTier): Promise<string | null> {
    const commands = opts.commands(tier)
    if (commands === null) return null
    const reply = await commands.eval(DATASET, [DATASET_KEY], [randomUUID()])
    return Array.isArray(reply) ? String(reply[0]) : null
  }

  async function check (tier: RedisTier, client: unknown): Promise<void> {
    const before = known.get(tier) ?? { runId: null, dataset: null }
    const runId = reconnecting(client) ? await runIdOf(tier, client).catch(() => null) : null
    if (runId !== null && runId === before.runId) return
    const dataset = await datasetOf(tier)
    known.set(tier, { runId: runId ?? before.runId, dataset: dataset ?? before.dataset })
    if (closed || before.dataset === null || dataset === null || dataset === before.dataset) return
    const seen = runId !== null && before.runId !== null ? `its run_id changed and the data it held is gone` : 'the data it held is gone'
    opts.onRestart({ tier, at: new Date().toISOString(), reason: `Redis on ${tier} came back empty (${seen}): it restarted without persistence, or was flushed` })
  }

  /** Checks of one tier run one after the other, each on the state the previous one left. */
  function enqueue (tier: RedisTier, client: unknown): Promise<void> {
    const next = (queue.get(tier) ?? Promise.resolve()).then(async () => {
      if (!closed) await check(tier, client)
    }).catch((err: unknown) => opts.onError(tier, err))
    queue.set(tier, next)
    return next
  }

  return {
    async up (tier, client) {
      if (closed) return
      if (watched.has(client)) {
        // A client with reconnect events is checked on each `ready`: the tier coming back is one of them.
        if (!reconnecting(client)) await enqueue(tier, client)
        return
      }
      const listener = (): void => { void enqueue(tier, client) }
      watched.set(client, { tier, listener })
      if (reconnecting(client)) client.on('ready', listener)
      await enqueue(tier, client)
    },
    close () {
      closed = true
      for (const [client, { listener }] of watched) if (reconnecting(client)) client.off('ready', listener)
      watched.clear()
    }
  }
}
