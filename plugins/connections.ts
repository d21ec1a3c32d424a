import { EventEmitter } from 'node:events'
import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { TcpClient } from '../lib/tiers/tcp-client'
import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import { loadSettings, parseBooleanVariable, parseIntegerVariable, type EnvInput } from '../lib/config'
import { concealEndpoint, redactError, redactText } from '../lib/redact'
import type { Bus } from '../lib/bus'
import type { FeatureRequirement, RedisTier, Tier } from '../lib/resolve-tier'
import { featureBindings, type FeatureChange, type FeatureState, type Rebind } from '../lib/feature-bindings'
import { RedisRequiredError } from '../lib/errors'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import type { RedisCommands } from '../lib/redis-commands'
import { assertDecoratorFree } from '../lib/decorators'
import type { TierTimeouts } from '../lib/tiers/driver'
import type { LiveTier, TierState } from '../lib/tiers/live'
import { configureTiers, openLive, probeTiers, refusalsOf, restartsOf, tierBuses, whyNoneAnswered } from '../lib/tiers/connect'
import { byTier } from '../lib/tiers/registry'
import { holdDown } from '../lib/tiers/hold-down'
import { budgetWarning, createUsage, type Usage } from '../lib/usage'
import type { RedisRestart } from '../lib/restart-watch'
import { refusalCause, type Refusal } from '../lib/refusal'
import { report, type FeatureDetails, type HealthReport } from '../lib/report'

// The tier registry at run time: every registered tier (lib/tiers/registry.ts)
// configured, probed and kept live, the features bound to them, and what
// fastify.connections hands out. What is reported about them (/health, the
// boot lines) is lib/report.ts's.

export interface ConnectionsOptions {
  /** Settings by env variable name; they override `process.env`. */
  env?: EnvInput
  /** Read `process.env` as the base (default true). Tests turn it off to stay hermetic. */
  processEnv?: boolean
}

export type { TierState, HealthReport }

export type { FeatureChange, FeatureState, Rebind, RedisRestart }

export type { Refusal }

export interface TierChange {
  tier: RedisTier
  /** Whether the tier is reachable now. */
  up: boolean
  /** The diagnosis when it went down. */
  reason: string | null
  since: string
}

// The shared clients are typed by what this package promises of them, not by their libraries'
// declarations: a public type that names ioredis pulls its declarations into every host, and
// ioredis 6's import `redis-errors`, which has no types (TS7016 in a host with `strict` and
// tsc's default `skipLibCheck: false`). Both the clients satisfy these shapes, which connections
// checks where it hands them out; a host that wants the rest of a library casts to its own import.

/**
 * The shared ioredis client: a `Redis`, or a `Cluster` (`isCluster`) when REDIS_URL names a node of one.
 * For the rest of its API: `fastify.connections.tcp as import('ioredis').Redis | null`.
 */
export interface SharedTcpClient {
  readonly isCluster: boolean
  /** ioredis's connection status: `ready` while commands can run. */
  readonly status: string
  ping: () => Promise<string>
  get: (key: string) => Promise<string | null>
  set: (key: string, value: string | number) => Promise<'OK'>
  del: (...keys: string[]) => Promise<number>
  /** Any command, as ioredis's `call`. */
  call: (command: string, ...args: Array<string | number>) => Promise<unknown>
}

/**
 * The shared @upstash/redis client. For the rest of its API:
 * `fastify.connections.rest as import('@upstash/redis').Redis | null`.
 */
export interface SharedRestClient {
  ping: () => Promise<string>
  /** JSON values come back parsed, as @upstash/redis gives them. */
  get: <T = unknown>(key: string) => Promise<T | null>
  set: <T>(key: string, value: T) => Promise<'OK' | T | null>
  del: (...keys: string[]) => Promise<number>
  /** Any command, as @upstash/redis's `exec`. */
  exec: <T = unknown>(command: [string, ...Array<string | number | boolean>]) => Promise<T>
}

export interface Connections {
  /** Each tier's live state: the same objects for the life of the app. */
  readonly tiers: Readonly<Record<RedisTier, TierState>>
  /** The shared ioredis client (commands fail fast while disconnected), or null until tcp has been reached. */
  readonly tcp: SharedTcpClient | null
  /** The shared @upstash/redis client, or null until rest has been reached. */
  readonly rest: SharedRestClient | null
  /**
   * `tier`: a tier went down or came back (each change once, after boot). `change`: a feature
   * moved to another tier (after its rebind succeeded). `restarted`: a tier's Redis came back
   * without the data it held (a restart without persistence, a flush): each feature recovers what it
   * can. Returns a function that removes the listener.
   */
  on: ((event: 'tier', listener: (change: TierChange) => void) => () => void) & ((event: 'change', listener: (change: FeatureChange) => void) => () => void) & ((event: 'restarted', listener: (restart: RedisRestart) => void) => () => void)
  readonly commandTimeoutMs: number
  /** A setting by variable name (options override env), for feature plugins' own flags. */
  variable: (name: string) => string | undefined
  /**
   * The commands a feature store needs, on the shared client of a Redis tier, each with its own
   * deadline and metered as `feature`'s; null for memory (or a tier that is not reachable).
   */
  commands: (tier: Tier, timeoutMs: number, feature: string) => RedisCommands | null
  /** The shared client of a Redis tier, for a library that makes its own connections from it (BullMQ); null for memory or a tier not reached. */
  client: (tier: Tier) => unknown
  /** Commands each feature sent (Lua scripts' own commands included) and the daily budget. */
  readonly usage: Usage
  /** The one pub/sub bus of a tier; its subscriber connection is made on first subscribe. */
  bus: (tier: Tier) => Bus
  /**
   * Resolve a feature's requirement and record it in `fastify.features`. Later moves (promotion when a
   * better tier has been up for REDIS_HOLD_DOWN_MS, or memory on an outage with <FEATURE>_ON_OUTAGE=memory)
   * call `rebind(next, previous)` first; the move is recorded only once it resolves.
   */
  resolve: (requirement: FeatureRequirement, rebind?: Rebind) => FeatureState
  /** Add a feature's own figures (counters, sizes, queue counts) to its entry in /health. */
  describe: (feature: string, details: () => Record<string, unknown> | Promise<Record<string, unknown>>) => void
  /** PING the tiers in use now, each with the command deadline (and, while a tier is full, one INFO memory). */
  health: () => Promise<HealthReport>
  /** The overall state as last seen, without a PING: down when a tier in use is, degraded when any configured tier is down or refusing. */
  status: () => HealthReport['status']
  /** Make any error safe to log or return. */
  redact: (err: unknown) => Error
  /**
   * A failed Redis call as one safe sentence for an HTTP caller: while its tier is down, the tier's
   * diagnosis (the variable and the fix, without the address) rather than the client library's text;
   * else the redacted error.
   */
  explain: (tier: Tier | null, err: unknown) => string
}

export type Features = Record<string, FeatureState>

declare module 'fastify' {
  interface FastifyInstance {
    connections: Connections
    features: Features
  }
}

async function connections (fastify: FastifyInstance, opts: ConnectionsOptions): Promise<void> {
  const fix = 'register this app in its own encapsulated context (fastify.register without fastify-plugin) or remove the other plugin'
  assertDecoratorFree(fastify, 'connections', 'another connections plugin', fix)
  assertDecoratorFree(fastify, 'features', 'another feature registry', fix)
  const log = fastify.log.child({ plugin: 'connections' })
  const warn = rateLimitedWarn(log)

  const { connection: settings, env } = loadSettings(opts.processEnv === false ? {} : process.env, opts.env)
  const read = (name: string): string | undefined => env[name]
  const timeouts: TierTimeouts = { connectTimeoutMs: settings.REDIS_CONNECT_TIMEOUT_MS, commandTimeoutMs: settings.REDIS_COMMAND_TIMEOUT_MS }
  const reprobeMaxMs = parseIntegerVariable(read, 'REDIS_REPROBE_MAX_MS', 5000, 250, 3_600_000)
  const holdDownMs = parseIntegerVariable(read, 'REDIS_HOLD_DOWN_MS', 1000, 0, 600_000)
  const configured = configureTiers(read, timeouts, (secrets, text) => redactText(text, secrets))
  const { states: tiers, drivers, secrets } = configured
  const redact = (err: unknown): Error => redactError(err, secrets)
  const safe = (text: string): string => redactText(text, secrets)
  const usage = usageOf(read, log)

  const { probes, probeMs } = await probeTiers(drivers, timeouts.connectTimeoutMs)
  if (settings.REDIS_REQUIRED && !probes.some((p) => p.ok)) throw new RedisRequiredError(whyNoneAnswered(configured, probes, safe))

  const changes = new EventEmitter()
  /** Set by onReady: until then a refusal is the boot report's to tell. */
  let booted = false
  const live = new Map<RedisTier, LiveTier>()
  const refusals = refusalsOf({ tiers, live, read, usage, log, safe, commandTimeoutMs: timeouts.commandTimeoutMs, booted: () => booted, features: () => features, reresolve: (why) => bindings.reresolve(why) })
  openLive(live, { drivers, probes, tiers, refusals, timeouts, reprobeMaxMs, safe, usage, log, warn }, (name, up, state) => {
    changes.emit('tier', { tier: name, up, reason: up ? null : state.lastError, since: state.since ?? '' } satisfies TierChange)
    hold.settle(name, up)
    if (up) void restarts.up(name, clientOf(name))
  })
  // maxmemory and its policy, once: one command per reachable tier, and none on a tier that refuses them all.
  await Promise.all([...live.values()].filter((t) => t.client() !== null && t.state.refusing === null).map(async (t) => await refusals.measure(t.driver.tier)))
  const clientOf = (tier: Tier): unknown => tier === 'memory' ? null : live.get(tier)?.client() ?? null
  const commandsOn = (tier: Tier, timeoutMs: number, feature: string): RedisCommands | null => {
    const driver = tier === 'memory' ? undefined : live.get(tier)?.driver
    const client = clientOf(tier)
    return driver !== undefined && client !== null ? driver.commands(client, timeoutMs, usage.meter(feature, driver.tier), refusals.observer(driver.tier)) : null
  }

  const restarts = restartsOf({ live, clientOf, usage, log, warn, redact, commandTimeoutMs: timeouts.commandTimeoutMs, announce: (restart) => changes.emit('restarted', restart) })
  await Promise.all([...live.keys()].map(async (tier) => { const client = clientOf(tier); if (client !== null) await restarts.up(tier, client) }))

  const buses = tierBuses(live, clientOf, (tier, err) => warn(`bus-${tier}`, `${tier} pub/sub: ${redact(err).message}`, { tier }))
  const hold = holdDown(tiers, holdDownMs, (why) => bindings.reresolve(why))
  const bindings = featureBindings({
    read,
    // A feature's reason reaches 503 bodies and a host's /health: the diagnosis without the address.
    availability: () => byTier((tier) => ({ configured: tiers[tier].configured, reachable: hold.stable[tier], diagnosis: addressless(tiers[tier]), refusing: refusingQuota(tiers[tier]) })),
    isUp: (tier) => tiers[tier].reachable && tiers[tier].refusing?.cause !== 'quota',
    onChange (change, state) {
      const line = `feature ${change.feature}: ${change.from ?? 'skipped'} -> ${change.to ?? 'skipped'} (${change.reason})`
      log[state.tier === 'memory' ? 'warn' : 'info']({ feature: change.feature, from: change.from, to: change.to, transitions: state.transitions }, line)
      changes.emit('change', change)
    },
    onRebindError: (feature, err) => warn(`rebind-${feature}`, `feature ${feature} could not move, it stays where it is: ${redact(err).message}`, { feature })
  })
  const features: Features = bindings.states
  const details = new Map<string, FeatureDetails>()
  const reported = report({ tiers, live, refusals, features, details, usage })

  fastify.decorate('features', features)
  fastify.decorate('connections', {
    tiers,
    get tcp (): SharedTcpClient | null { return clientOf('tcp') as TcpClient | null },
    get rest (): SharedRestClient | null { return clientOf('rest') as UpstashRedis | null },
    on: listen(changes),
    commandTimeoutMs: timeouts.commandTimeoutMs,
    variable: read,
    commands: commandsOn,
    client: clientOf,
    usage,
    bus: buses.bus,
    resolve: (requirement: FeatureRequirement, rebind?: Rebind) => bindings.bind(requirement, rebind),
    describe (feature: string, fn: FeatureDetails) { details.set(feature, fn) },
    health: reported.health,
    status: reported.status,
    redact,
    explain: (tier, err) => explain(tier === null || tier === 'memory' ? null : tiers[tier], tier, err, redact, safe)
  } satisfies Connections)

  fastify.addHook('onReady', async () => {
    booted = true
    await reported.boot(log, { probeMs, reprobeMaxMs, safe })
  })

  fastify.addHook('onClose', async () => {
    bindings.close()
    restarts.close()
    hold.close()
    changes.removeAllListeners()
    await buses.close()
    await Promise.all([...live.values()].map(async (t) => await t.close()))
  })
}

/** What every Redis command is counted against: each feature's meters and the daily budget. */
function usageOf (read: (name: string) => string | undefined, log: FastifyBaseLogger): Usage {
  return createUsage({
    limit: read('REDIS_DAILY_COMMAND_BUDGET') === undefined ? null : parseIntegerVariable(read, 'REDIS_DAILY_COMMAND_BUDGET', 0, 1, Number.MAX_SAFE_INTEGER),
    guard: parseBooleanVariable(read, 'REDIS_BUDGET_GUARD', false),
    onThreshold: (percent, budget) => log.warn({ budget: { used: budget.used, limit: budget.limit, guard: budget.guard, resetsAt: budget.resetsAt } }, budgetWarning(percent, budget))
  })
}

/** fastify.connections.on: a listener per event, and the function that removes it. */
function listen (changes: EventEmitter): Connections['on'] {
  return (event: 'tier' | 'change' | 'restarted', listener: (change: never) => void) => {
    const handler = listener as (change: unknown) => void
    changes.on(event, handler)
    return () => { changes.off(event, handler) }
  }
}

/** A tier's diagnosis without its address: what HTTP callers and feature reasons may see. */
function addressless ({ lastError, endpoint, source }: TierState): string | undefined {
  return lastError === null ? undefined : concealEndpoint(lastError, endpoint, source)
}

function refusingQuota ({ refusing, endpoint, source }: TierState): string | undefined {
  return refusing?.cause === 'quota' ? concealEndpoint(refusing.reason, endpoint, source) : undefined
}

/**
 * A failed Redis call as one sentence for an HTTP caller: Redis's own refusal text ("OOM command not
 * allowed...") says neither why nor what to change, and a tier that is down is named with its fix,
 * not the address of the database.
 */
function explain (state: TierState | null, tier: Tier | null, err: unknown, redact: (err: unknown) => Error, safe: (text: string) => string): string {
  if (state === null) return redact(err).message
  const { refusing, endpoint, source } = state
  if (refusing !== null && refusalCause(err) !== null) {
    return `${tier ?? ''} refuses ${refusing.cause === 'full' ? 'writes' : 'commands'} (${concealEndpoint(redact(err).message, endpoint, source)}): ${concealEndpoint(safe(refusing.reason), endpoint, source)}`
  }
  if (state.reachable || state.lastError === null) return concealEndpoint(redact(err).message, endpoint, source)
  return `${tier ?? ''} is down: ${addressless(state) ?? ''}`
}

export default fp(connections, { name: 'connections', fastify: '5.x' })
