import { EventEmitter } from 'node:events'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { TcpClient } from '../lib/tiers/tcp'
import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import { loadSettings, parseBooleanVariable, parseIntegerVariable, type EnvInput, type ConnectionSettings } from '../lib/config'
import type { TargetResult } from '../lib/targets'
import { diagnose } from '../lib/diagnose'
import { concealEndpoint, redactError, redactText } from '../lib/redact'
import { createBus, type Bus } from '../lib/bus'
import type { FeatureRequirement, RedisTier, Tier } from '../lib/resolve-tier'
import { featureBindings, type FeatureChange, type FeatureState, type Rebind } from '../lib/feature-bindings'
import { RedisRequiredError } from '../lib/errors'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import type { RedisCommands } from '../lib/redis-commands'
import { assertDecoratorFree } from '../lib/decorators'
import type { TierDriver, TierTimeouts } from '../lib/tiers/driver'
import { liveTier, emptyTierState, type LiveTier, type TierState } from '../lib/tiers/live'
import { tcpTier } from '../lib/tiers/tcp'
import { restTier } from '../lib/tiers/rest'
import { memoryTransport } from '../lib/tiers/memory'
import { budgetWarning, createUsage, type BudgetReport, type Usage } from '../lib/usage'
import { restartWatch, type RedisRestart } from '../lib/restart-watch'
import { tierRefusals } from '../lib/tiers/refusals'
import { describeMemory, evictionWarning, refusalCause, type Refusal } from '../lib/refusal'

type ConfigureTier = (settings: ConnectionSettings, timeouts: TierTimeouts) => TargetResult<TierDriver<unknown>>

/** Every Redis tier, best first: adding one is adding its driver here. */
const TIER_DRIVERS: ReadonlyArray<{ tier: RedisTier, configure: ConfigureTier }> = [
  { tier: 'tcp', configure: tcpTier as ConfigureTier },
  { tier: 'rest', configure: restTier as ConfigureTier }
]

export interface ConnectionsOptions {
  /** Settings by env variable name; they override `process.env`. */
  env?: EnvInput
  /** Read `process.env` as the base (default true). Tests turn it off to stay hermetic. */
  processEnv?: boolean
}

export type { TierState }

export interface HealthReport {
  status: 'ok' | 'degraded' | 'down'
  tiers: Record<RedisTier, TierState>
  features: Record<string, FeatureState & Record<string, unknown>>
  /** Commands billed today (UTC) against REDIS_DAILY_COMMAND_BUDGET, by feature and tier. */
  budget: BudgetReport
}

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
  const secrets = [settings.REDIS_PASSWORD, settings.UPSTASH_REDIS_REST_TOKEN, settings.KV_REST_API_TOKEN].filter((s): s is string => s !== undefined)
  const redact = (err: unknown): Error => redactError(err, secrets)
  const safe = (text: string): string => redactText(text, secrets)
  const usage = createUsage({
    limit: read('REDIS_DAILY_COMMAND_BUDGET') === undefined ? null : parseIntegerVariable(read, 'REDIS_DAILY_COMMAND_BUDGET', 0, 1, Number.MAX_SAFE_INTEGER),
    guard: parseBooleanVariable(read, 'REDIS_BUDGET_GUARD', false),
    onThreshold: (percent, budget) => log.warn({ budget: { used: budget.used, limit: budget.limit, guard: budget.guard, resetsAt: budget.resetsAt } }, budgetWarning(percent, budget))
  })

  const tiers: Record<RedisTier, TierState> = { tcp: emptyTierState(), rest: emptyTierState() }
  const drivers: Array<TierDriver<unknown>> = []
  for (const { tier, configure } of TIER_DRIVERS) {
    const result = configure(settings, timeouts)
    if (result.status === 'ok') {
      drivers.push(result.target)
      secrets.push(...result.target.secrets)
    } else if (result.status === 'invalid') {
      // Misconfigured: reported with the fix, never dialled.
      Object.assign(tiers[tier], { configured: true, source: result.variable, lastError: safe(result.diagnosis), checkedAt: new Date().toISOString() })
    }
  }

  // Probe once, in parallel, under one deadline.
  const started = performance.now()
  const probes = await Promise.all(drivers.map(async (d) => await d.probe(timeouts.connectTimeoutMs)))
  const probeMs = Math.round(performance.now() - started)

  if (settings.REDIS_REQUIRED && !probes.some((p) => p.ok)) {
    const why = (['tcp', 'rest'] as const).map((t) => {
      const i = drivers.findIndex((d) => d.tier === t)
      return `${t}: ${i >= 0 ? safe(diagnose(probes[i].error, drivers[i].context)) : (tiers[t].lastError ?? 'not configured')}`
    }).join('; ')
    throw new RedisRequiredError(why)
  }

  const changes = new EventEmitter()
  const live = new Map<RedisTier, LiveTier>()
  /** Set by onReady: until then a refusal is the boot report's to tell. */
  let booted = false
  const refusals = tierRefusals({
    states: tiers,
    context: (tier) => live.get(tier)?.driver.context,
    featuresOn: (tier) => Object.entries(features).flatMap(([name, f]) => f.status === 'active' && f.tier === tier ? [name] : []),
    read,
    async memoryInfo (tier) {
      const t = live.get(tier)
      const client = t?.client() ?? null
      if (t?.driver.info === undefined || client === null) throw new Error(`${tier} has no client to ask`)
      usage.meter('connections', tier)(1)
      return await t.driver.info(client, 'memory', timeouts.commandTimeoutMs)
    },
    onChange (tier, refusing, previous) {
      if (!booted) return
      if (refusing !== null) log.warn({ tier, cause: refusing.cause }, `tier ${tier}: refusing ${refusing.cause === 'full' ? 'writes' : 'commands'}: ${safe(refusing.reason)}`)
      else log.info({ tier, cause: previous.cause }, `tier ${tier}: accepts ${previous.cause === 'full' ? 'writes' : 'commands'} again`)
      // A spent quota is an outage for the features (reads are refused too); a full Redis still serves them.
      if (refusing?.cause === 'quota' || previous.cause === 'quota') bindings.reresolve(refusing === null ? `${tier} accepts commands again` : `${tier} refuses commands`)
    }
  })
  /** The driver with its PING told to the refusals: a refused PING is an answer (reachable), a PING while full also checks for room. */
  function observed (driver: TierDriver<unknown>): TierDriver<unknown> {
    const name = driver.tier
    return {
      ...driver,
      async ping (client, ms) {
        const started = performance.now()
        try {
          const latencyMs = await driver.ping(client, ms)
          refusals.answered(name)
          if (tiers[name].refusing?.cause === 'full') await refusals.recheck(name)
          return latencyMs
        } catch (err) {
          if (refusals.refused(name, err)) return Math.round((performance.now() - started) * 100) / 100
          throw err
        }
      }
    }
  }
  drivers.forEach((driver, i) => {
    const tier = liveTier(observed(driver), probes[i], {
      ...timeouts,
      reprobeMaxMs,
      diagnose: (err, ctx) => safe(diagnose(err, ctx)),
      meter: usage.meter('connections', driver.tier),
      onChange (name, up, state) {
        if (up) log.info({ tier: name, latencyMs: state.latencyMs }, `tier ${name}: reachable again at ${state.endpoint ?? ''}`)
        else log.warn({ tier: name }, `tier ${name}: down: ${state.lastError ?? ''}`)
        changes.emit('tier', { tier: name, up, reason: up ? null : state.lastError, since: state.since ?? '' } satisfies TierChange)
        settle(name, up)
        if (up) void restarts.up(name, clientOf(name))
      },
      onError: (name, diagnosis) => warn(`${name}-down`, `tier ${name} still down: ${diagnosis}`, { tier: name }),
      onNotice: (name, message) => log.info({ tier: name }, message)
    })
    live.set(driver.tier, tier)
    tiers[driver.tier] = tier.state
    if (probes[i].refused !== undefined) refusals.refused(driver.tier, probes[i].refused)
  })
  // maxmemory and its policy, once: one command per reachable tier, and none on a tier that refuses them all.
  await Promise.all([...live.values()].filter((t) => t.client() !== null && t.state.refusing === null).map(async (t) => await refusals.measure(t.driver.tier)))
  const clientOf = (tier: Tier): unknown => tier === 'memory' ? null : live.get(tier)?.client() ?? null

  // Noticed on a reconnect (tcp) or when a tier is back after being down; learnt at boot, within the command deadline.
  const restarts = restartWatch({
    commandTimeoutMs: timeouts.commandTimeoutMs,
    commands (tier) {
      const t = live.get(tier)
      const client = clientOf(tier)
      return t === undefined || client === null ? null : t.driver.commands(client, timeouts.commandTimeoutMs, usage.meter('connections', tier))
    },
    meter: (tier) => usage.meter('connections', tier),
    onRestart (restart) {
      log.warn({ tier: restart.tier }, `tier ${restart.tier}: ${restart.reason}; jobs, presence and event histories held there are gone, the features recover what they can`)
      changes.emit('restarted', restart)
    },
    onError (tier, err) {
      // A Redis that refuses (full, a spent quota) has its own line saying so.
      if (refusalCause(err) === null) warn(`restart-check-${tier}`, `tier ${tier}: could not check whether Redis kept its data: ${redact(err).message}`, { tier })
    }
  })
  await Promise.all([...live.keys()].map(async (tier) => { const client = clientOf(tier); if (client !== null) await restarts.up(tier, client) }))

  const buses = new Map<Tier, Bus>()
  const onBusError = (tier: Tier) => (err: Error) => warn(`bus-${tier}`, `${tier} pub/sub: ${redact(err).message}`, { tier })
  function bus (tier: Tier): Bus {
    const existing = buses.get(tier)
    if (existing !== undefined) return existing
    const driver = tier === 'memory' ? undefined : live.get(tier)?.driver
    const client = clientOf(tier)
    if (tier !== 'memory' && (driver === undefined || client === null)) throw new Error(`${tier} is not reachable; resolve a requirement before asking for its bus`)
    const created = createBus(tier, driver !== undefined ? driver.transport(client, onBusError(tier)) : memoryTransport, onBusError(tier))
    buses.set(tier, created)
    return created
  }

  // A tier counts as up for the resolver once it has stayed up for the hold-down, so that a
  // flapping Redis does not make features flap; an outage counts at once.
  const stable: Record<RedisTier, boolean> = { tcp: tiers.tcp.reachable, rest: tiers.rest.reachable }
  const holdDown = new Map<RedisTier, NodeJS.Timeout>()
  function settle (tier: RedisTier, up: boolean): void {
    clearTimeout(holdDown.get(tier))
    holdDown.delete(tier)
    if (!up) {
      stable[tier] = false
      bindings.reresolve(`${tier} is down`)
      return
    }
    const timer = setTimeout(() => {
      holdDown.delete(tier)
      stable[tier] = tiers[tier].reachable
      if (stable[tier]) bindings.reresolve(`${tier} is reachable again`)
    }, holdDownMs)
    timer.unref()
    holdDown.set(tier, timer)
  }
  function addressless (tier: RedisTier): string | undefined {
    const { lastError, endpoint, source } = tiers[tier]
    return lastError === null ? undefined : concealEndpoint(lastError, endpoint, source)
  }
  function refusingQuota (tier: RedisTier): string | undefined {
    const { refusing, endpoint, source } = tiers[tier]
    return refusing?.cause === 'quota' ? concealEndpoint(refusing.reason, endpoint, source) : undefined
  }
  const bindings = featureBindings({
    read,
    // A feature's reason reaches 503 bodies and a host's /health: the diagnosis without the address.
    availability: () => ({
      tcp: { configured: tiers.tcp.configured, reachable: stable.tcp, diagnosis: addressless('tcp'), refusing: refusingQuota('tcp') },
      rest: { configured: tiers.rest.configured, reachable: stable.rest, diagnosis: addressless('rest'), refusing: refusingQuota('rest') }
    }),
    isUp: (tier) => tiers[tier].reachable && tiers[tier].refusing?.cause !== 'quota',
    onChange (change, state) {
      const line = `feature ${change.feature}: ${change.from ?? 'skipped'} -> ${change.to ?? 'skipped'} (${change.reason})`
      log[state.tier === 'memory' ? 'warn' : 'info']({ feature: change.feature, from: change.from, to: change.to, transitions: state.transitions }, line)
      changes.emit('change', change)
    },
    onRebindError: (feature, err) => warn(`rebind-${feature}`, `feature ${feature} could not move, it stays where it is: ${redact(err).message}`, { feature })
  })
  const features: Features = bindings.states
  const details = new Map<string, () => Record<string, unknown> | Promise<Record<string, unknown>>>()

  async function health (): Promise<HealthReport> {
    // Features' own figures (queue counts read Redis too) are gathered while the tiers are PINGed: one deadline, not two.
    const reported: HealthReport['features'] = {}
    const described = Promise.all(Object.entries(features).map(async ([name, state]) => {
      reported[name] = { ...state, ...await details.get(name)?.() }
    }))
    await Promise.all([...[...live.values()].map(async (t) => await t.check()), described])
    const report: HealthReport['tiers'] = structuredClone(tiers)
    for (const tier of ['tcp', 'rest'] as const) Object.assign(report[tier], await describeTier(tier), memoryOf(tier))
    return { status: status(), tiers: report, features: reported, budget: usage.budget() }
  }

  function status (): HealthReport['status'] {
    const inUse = new Set(Object.values(features).flatMap((f) => f.status === 'active' && f.tier !== 'memory' ? [f.tier] : []))
    if ([...inUse].some((t) => !tiers[t].reachable)) return 'down'
    return (['tcp', 'rest'] as const).some((t) => tiers[t].configured && (!tiers[t].reachable || tiers[t].refusing !== null)) ? 'degraded' : 'ok'
  }

  /** What the boot measure (or the last check while full) found; nothing for a tier not measured. */
  function memoryOf (tier: RedisTier): { maxmemory?: number | null, maxmemoryPolicy?: string | null } {
    if (!live.has(tier)) return {}
    const { maxmemory, policy } = refusals.limits(tier)
    return { maxmemory, maxmemoryPolicy: policy }
  }

  /** The driver's own words on the connected client (a cluster: mode, masters, nodes and which are down). */
  async function describeTier (tier: RedisTier): Promise<Record<string, unknown>> {
    const t = live.get(tier)
    const client = t?.client() ?? null
    return t?.driver.describe !== undefined && client !== null ? await t.driver.describe(client).catch(() => ({})) : {}
  }

  fastify.decorate('features', features)
  fastify.decorate('connections', {
    tiers,
    get tcp (): SharedTcpClient | null { return clientOf('tcp') as TcpClient | null },
    get rest (): SharedRestClient | null { return clientOf('rest') as UpstashRedis | null },
    on (event: 'tier' | 'change' | 'restarted', listener: (change: never) => void) {
      const handler = listener as (change: unknown) => void
      changes.on(event, handler)
      return () => { changes.off(event, handler) }
    },
    commandTimeoutMs: timeouts.commandTimeoutMs,
    variable: read,
    commands (tier: Tier, timeoutMs: number, feature: string): RedisCommands | null {
      const driver = tier === 'memory' ? undefined : live.get(tier)?.driver
      const client = clientOf(tier)
      return driver !== undefined && client !== null ? driver.commands(client, timeoutMs, usage.meter(feature, driver.tier), refusals.observer(driver.tier)) : null
    },
    client: clientOf,
    usage,
    bus,
    resolve: (requirement: FeatureRequirement, rebind?: Rebind) => bindings.bind(requirement, rebind),
    describe (feature: string, fn: () => Record<string, unknown> | Promise<Record<string, unknown>>) { details.set(feature, fn) },
    health,
    status,
    redact,
    explain (tier, err) {
      if (tier === null || tier === 'memory') return redact(err).message
      const { refusing } = tiers[tier]
      // Redis's own text ("OOM command not allowed...") says neither why nor what to change.
      if (refusing !== null && refusalCause(err) !== null) {
        const { endpoint, source } = tiers[tier]
        return `${tier} refuses ${refusing.cause === 'full' ? 'writes' : 'commands'} (${concealEndpoint(redact(err).message, endpoint, source)}): ${concealEndpoint(safe(refusing.reason), endpoint, source)}`
      }
      if (tiers[tier].reachable || tiers[tier].lastError === null) return concealEndpoint(redact(err).message, tiers[tier].endpoint, tiers[tier].source)
      // Said to HTTP callers: the variable and the fix, not the address of the database.
      return `${tier} is down: ${addressless(tier) ?? ''}`
    }
  } satisfies Connections)

  /** One boot line per tier: where it is, or why not; its memory limits, or why it refuses. */
  async function reportTier (tier: RedisTier): Promise<void> {
    const s = tiers[tier]
    const retried = live.has(tier) ? `; retrying in the background (at most every ${reprobeMaxMs} ms)` : ''
    const described = await describeTier(tier)
    const cluster = described.mode === 'cluster' ? `, a Redis Cluster of ${String(described.masters)} masters` : ''
    const limits = refusals.limits(tier)
    const reached = s.refusing !== null
      ? `reachable at ${s.endpoint ?? ''} (${s.source ?? ''}${cluster}) but refusing ${s.refusing.cause === 'full' ? 'writes' : 'commands'}: ${safe(s.refusing.reason)}`
      : `reachable at ${s.endpoint ?? ''} (${s.source ?? ''}${cluster}) in ${s.latencyMs ?? '?'} ms; ${describeMemory(limits)}`
    const text = !s.configured ? 'not configured' : s.reachable ? reached : `unavailable: ${s.lastError ?? ''}${retried}`
    const level = s.configured && (!s.reachable || s.refusing !== null) ? 'warn' : 'info'
    log[level]({ tier, configured: s.configured, reachable: s.reachable, source: s.source, latencyMs: s.latencyMs, probeMs, mode: described.mode, refusing: s.refusing?.cause ?? null, maxmemory: limits.maxmemory, maxmemoryPolicy: limits.policy }, `tier ${tier}: ${text}`)
    // BullMQ's keys have no TTL and must never be evicted: an evicting policy loses jobs and locks.
    const queued = features.queues?.status === 'active' && features.queues.tier === tier
    const eviction = queued ? evictionWarning(tier, limits) : null
    if (eviction !== null) log.warn({ tier, maxmemoryPolicy: limits.policy }, eviction)
  }

  fastify.addHook('onReady', async () => {
    booted = true
    for (const tier of ['tcp', 'rest'] as const) await reportTier(tier)
    const names = Object.keys(features)
    if (names.length === 0) log.info('features: none registered')
    for (const name of names) {
      const f = features[name]
      const line = f.status === 'active' ? `feature ${name}: active on ${f.tier} (${f.reason}; on outage: ${f.outage})` : `feature ${name}: skipped (${f.reason})`
      const level = f.status === 'skipped' || f.tier === 'memory' ? 'warn' : 'info'
      log[level]({ feature: name, status: f.status, tier: f.tier, reason: f.reason, outage: f.outage }, line)
    }
  })

  fastify.addHook('onClose', async () => {
    bindings.close()
    restarts.close()
    for (const timer of holdDown.values()) clearTimeout(timer)
    holdDown.clear()
    changes.removeAllListeners()
    await Promise.all([...buses.values()].map(async (b) => await b.close()))
    buses.clear()
    await Promise.all([...live.values()].map(async (t) => await t.close()))
  })
}

export default fp(connections, { name: 'connections', fastify: '5.x' })
