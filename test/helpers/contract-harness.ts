import { Redis } from 'ioredis'
import { startRedisServer, type RedisServer, type Teardown } from '../../support/redis-server'
import { startRestServer } from '../../support/rest-server'
import { loadSettings, type EnvInput } from '../../lib/config'
import { tcpTier } from '../../lib/tiers/tcp'
import { restTier } from '../../lib/tiers/rest'
import type { TierDefinition, TierDriver, TierTimeouts } from '../../lib/tiers/driver'
import type { Meter, RedisCommands } from '../../lib/redis-commands'
import type { BusTransport, Deliver, Resumed } from '../../lib/bus'
import type { RedisTier } from '../../lib/resolve-tier'

// What every contract suite stands on: one private redis-server, the REST
// bridge in front of it, an admin connection that reads what Redis says it ran,
// and each Redis tier's driver probed for real and opened the way
// plugins/connections.ts opens it (driver -> client -> commands / transport).
// A new Redis tier joins every contract suite by adding one line to DRIVERS.

export const TIMEOUTS: TierTimeouts = { connectTimeoutMs: 2000, commandTimeoutMs: 2000 }

type Configure = TierDefinition['configure']

/** Every Redis tier driver, and the env that points it at the harness. */
export const DRIVERS: Array<{ tier: RedisTier, configure: Configure, env: (h: { redis: RedisServer, rest: { url: string, token: string } }) => EnvInput }> = [
  { tier: 'tcp', configure: tcpTier.configure as Configure, env: ({ redis }) => ({ REDIS_URL: redis.url }) },
  { tier: 'rest', configure: restTier.configure as Configure, env: ({ rest }) => ({ UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }) }
]

/** The driver of `configure` for exactly `env` (no process.env), or a thrown diagnosis. */
export function driverFor (configure: Configure, env: EnvInput, timeouts: TierTimeouts = TIMEOUTS): TierDriver<unknown> {
  const { env: settings } = loadSettings(env)
  const result = configure((name) => settings[name], timeouts)
  if (result.status !== 'ok') throw new Error(`driver not configured: ${result.status === 'invalid' ? result.diagnosis : 'nothing set'}`)
  return result.target
}

/** One Redis tier, connected: what a feature's binding gets from connections. */
export interface OpenTier {
  tier: RedisTier
  commands: (meter?: Meter) => RedisCommands
  transport: (deliver: Deliver, resumed: Resumed, onError?: (err: Error) => void) => BusTransport
}

export interface Harness {
  redis: RedisServer
  rest: { url: string, token: string }
  /** A plain ioredis connection to the harness Redis, for reading what really happened. */
  admin: Redis
  tiers: OpenTier[]
  /** Every command Redis ran so far (the commands inside scripts included), minus the INFO that reads it. */
  commandsRun: () => Promise<number>
  /** Messages published on `channel`, parsed, as a plain subscriber sees them; resolves once subscribed. */
  watch: (t: Teardown, channel: string) => Promise<unknown[]>
}

export async function startHarness (t: Teardown): Promise<Harness> {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const admin = new Redis(redis.url, { protocol: 2 })
  t.teardown(() => admin.disconnect())
  const tiers: OpenTier[] = []
  for (const { tier, configure, env } of DRIVERS) {
    const driver = driverFor(configure, env({ redis, rest }))
    const probe = await driver.probe(TIMEOUTS.connectTimeoutMs)
    if (!probe.ok) throw probe.error ?? new Error(`${tier} probe failed`)
    const client = probe.client
    t.teardown(async () => await driver.close(client))
    tiers.push({
      tier,
      commands: (meter = () => {}) => driver.commands(client, TIMEOUTS.commandTimeoutMs, meter),
      transport: (deliver, resumed, onError = () => {}) => driver.transport(client, onError)(deliver, resumed)
    })
  }
  return {
    redis,
    rest,
    admin,
    tiers,
    async commandsRun () {
      const info = await admin.info('commandstats')
      let calls = 0
      for (const m of info.matchAll(/^cmdstat_([a-z|_-]+):calls=(\d+)/gm)) if (m[1] !== 'info') calls += Number(m[2])
      return calls
    },
    async watch (t, channel) {
      const seen: unknown[] = []
      const sub = admin.duplicate()
      t.teardown(() => sub.disconnect())
      sub.on('message', (_channel: string, text: string) => seen.push(JSON.parse(text)))
      await sub.subscribe(channel)
      return seen
    }
  }
}

/** A meter that adds up what it is told. */
export function counter (): { meter: Meter, total: () => number } {
  let total = 0
  return { meter: (n) => { total += n }, total: () => total }
}

let unique = 0
/** A fresh namespace per test, so tests sharing one Redis never see each other's keys. */
export function namespace (what: string): string {
  return `contract-${what}-${process.pid}-${++unique}`
}
