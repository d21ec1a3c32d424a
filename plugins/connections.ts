import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import type { Redis as UpstashRedis } from '@upstash/redis'
import { loadSettings, type EnvInput } from '../lib/config'
import { tcpTarget, restTarget, type TargetResult } from '../lib/targets'
import { probeTcp, closeTcp, pingTcp } from '../lib/tcp'
import { probeRest, pingRest } from '../lib/rest'
import { diagnose, type DiagnosisContext } from '../lib/diagnose'
import { redactError, redactText } from '../lib/redact'
import { createBus, memoryTransport, type Bus } from '../lib/bus'
import { tcpTransport } from '../lib/bus-tcp'
import { restTransport } from '../lib/bus-rest'
import { resolveTier, type FeatureRequirement, type RedisTier, type Resolution, type Tier } from '../lib/resolve-tier'
import { RedisRequiredError } from '../lib/errors'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import { tcpCommands, restCommands, type RedisCommands } from '../lib/redis-commands'
import { assertDecoratorFree } from '../lib/decorators'

export interface ConnectionsOptions {
  /** Settings by env variable name; they override `process.env`. */
  env?: EnvInput
  /** Read `process.env` as the base (default true). Tests turn it off to stay hermetic. */
  processEnv?: boolean
}

/** What /health and the boot report say about one Redis tier. No secret in here. */
export interface TierState {
  configured: boolean
  reachable: boolean
  /** The variable it came from, e.g. REDIS_URL. */
  source: string | null
  /** Redacted address. */
  endpoint: string | null
  latencyMs: number | null
  /** One sentence naming the variable and the fix. */
  lastError: string | null
  checkedAt: string | null
}

export interface HealthReport {
  status: 'ok' | 'degraded' | 'down'
  tiers: Record<RedisTier, TierState>
  features: Record<string, Resolution & Record<string, unknown>>
}

export interface Connections {
  readonly tiers: Readonly<Record<RedisTier, TierState>>
  /** The shared ioredis client (commands fail fast while disconnected), or null when tcp is not reachable. */
  readonly tcp: Redis | null
  /** The shared @upstash/redis client, or null when rest is not reachable. */
  readonly rest: UpstashRedis | null
  readonly commandTimeoutMs: number
  /** A setting by variable name (options override env), for feature plugins' own flags. */
  variable: (name: string) => string | undefined
  /**
   * The commands a feature store needs, on the shared client of a Redis tier, each
   * with its own deadline and counted; null for memory (or a tier that is not reachable).
   */
  commands: (tier: Tier, timeoutMs: number) => RedisCommands | null
  /** The one pub/sub bus of a tier; its subscriber connection is made on first subscribe. */
  bus: (tier: Tier) => Bus
  /** Resolve a feature's requirement and record it in `fastify.features`. */
  resolve: (requirement: FeatureRequirement) => Resolution
  /** Add a feature's own figures (counters, sizes, queue counts) to its entry in /health. */
  describe: (feature: string, details: () => Record<string, unknown> | Promise<Record<string, unknown>>) => void
  /** PING the tiers in use now, each with the command deadline. */
  health: () => Promise<HealthReport>
  /** Make any error safe to log or return. */
  redact: (err: unknown) => Error
}

export type Features = Record<string, Resolution>

declare module 'fastify' {
  interface FastifyInstance {
    connections: Connections
    features: Features
  }
}

function emptyState (): TierState {
  return { configured: false, reachable: false, source: null, endpoint: null, latencyMs: null, lastError: null, checkedAt: null }
}

async function connections (fastify: FastifyInstance, opts: ConnectionsOptions): Promise<void> {
  const fix = 'register this app in its own encapsulated context (fastify.register without fastify-plugin) or remove the other plugin'
  assertDecoratorFree(fastify, 'connections', 'another connections plugin', fix)
  assertDecoratorFree(fastify, 'features', 'another feature registry', fix)
  const log = fastify.log.child({ plugin: 'connections' })
  const warn = rateLimitedWarn(log)

  const { connection: settings, env } = loadSettings(opts.processEnv === false ? {} : process.env, opts.env)
  const secrets = [settings.REDIS_PASSWORD, settings.UPSTASH_REDIS_REST_TOKEN, settings.KV_REST_API_TOKEN]
    .filter((s): s is string => s !== undefined)
  const tcpCfg = tcpTarget(settings)
  const restCfg = restTarget(settings)
  if (tcpCfg.status === 'ok' && tcpCfg.target.password !== undefined) secrets.push(tcpCfg.target.password)
  const redact = (err: unknown): Error => redactError(err, secrets)
  const safe = (text: string): string => redactText(text, secrets)
  const timeouts = { connectTimeoutMs: settings.REDIS_CONNECT_TIMEOUT_MS, commandTimeoutMs: settings.REDIS_COMMAND_TIMEOUT_MS }

  const tiers: Record<RedisTier, TierState> = { tcp: emptyState(), rest: emptyState() }
  function misconfigured (tier: RedisTier, result: TargetResult<unknown>): void {
    if (result.status !== 'invalid') return
    Object.assign(tiers[tier], { configured: true, source: result.variable, lastError: safe(result.diagnosis), checkedAt: new Date().toISOString() })
  }
  misconfigured('tcp', tcpCfg)
  misconfigured('rest', restCfg)

  const tcpContext: DiagnosisContext | undefined = tcpCfg.status === 'ok'
    ? {
        tier: 'tcp',
        variable: tcpCfg.target.source,
        secretVariable: tcpCfg.target.source === 'REDIS_URL' ? 'REDIS_URL' : 'REDIS_PASSWORD',
        endpoint: tcpCfg.target.display,
        tls: tcpCfg.target.tls,
        timeoutMs: timeouts.connectTimeoutMs
      }
    : undefined
  const restContext: DiagnosisContext | undefined = restCfg.status === 'ok'
    ? { tier: 'rest', variable: restCfg.target.urlVariable, secretVariable: restCfg.target.tokenVariable, endpoint: restCfg.target.display, tls: true, timeoutMs: timeouts.connectTimeoutMs }
    : undefined

  // Probe once, in parallel, under one deadline.
  const started = performance.now()
  const [tcpProbe, restProbe] = await Promise.all([
    tcpCfg.status === 'ok' ? probeTcp(tcpCfg.target, timeouts, timeouts.connectTimeoutMs) : undefined,
    restCfg.status === 'ok' ? probeRest(restCfg.target, timeouts.commandTimeoutMs, timeouts.connectTimeoutMs) : undefined
  ])
  const probeMs = Math.round(performance.now() - started)
  const checkedAt = new Date().toISOString()

  function recordProbe (tier: RedisTier, probe: { ok: boolean, latencyMs?: number, error?: Error } | undefined, ctx: DiagnosisContext | undefined): void {
    if (probe === undefined || ctx === undefined) return
    Object.assign(tiers[tier], {
      configured: true,
      source: ctx.variable,
      endpoint: ctx.endpoint,
      reachable: probe.ok,
      latencyMs: probe.latencyMs ?? null,
      lastError: probe.ok ? null : safe(diagnose(probe.error, ctx)),
      checkedAt
    })
  }
  recordProbe('tcp', tcpProbe, tcpContext)
  recordProbe('rest', restProbe, restContext)
  const tcp = tcpProbe?.client ?? null
  const rest = restProbe?.client ?? null

  if (settings.REDIS_REQUIRED && tcp === null && rest === null) {
    const why = (['tcp', 'rest'] as const).map((t) => `${t}: ${tiers[t].lastError ?? 'not configured'}`).join('; ')
    throw new RedisRequiredError(why)
  }

  if (tcp !== null) {
    tcp.on('error', (err: Error) => {
      tiers.tcp.lastError = safe(tcpContext !== undefined ? diagnose(err, tcpContext) : redact(err).message)
      warn('tcp-error', `tcp Redis error: ${tiers.tcp.lastError}`, { tier: 'tcp' })
    })
    tcp.on('close', () => { tiers.tcp.reachable = false })
    tcp.on('ready', () => {
      if (!tiers.tcp.reachable) log.info({ tier: 'tcp' }, 'tcp Redis connection is back')
      tiers.tcp.reachable = true
    })
  }

  const buses = new Map<Tier, Bus>()
  const onBusError = (tier: Tier) => (err: Error) => warn(`bus-${tier}`, `${tier} pub/sub: ${redact(err).message}`, { tier })
  function bus (tier: Tier): Bus {
    const existing = buses.get(tier)
    if (existing !== undefined) return existing
    let created: Bus
    if (tier === 'tcp') {
      if (tcp === null) throw new Error('tcp is not reachable; resolve a requirement before asking for its bus')
      created = createBus('tcp', tcpTransport(tcp, timeouts.commandTimeoutMs, onBusError('tcp')), onBusError('tcp'))
    } else if (tier === 'rest') {
      if (rest === null || restCfg.status !== 'ok') throw new Error('rest is not reachable; resolve a requirement before asking for its bus')
      created = createBus('rest', restTransport(rest, restCfg.target, timeouts.commandTimeoutMs, onBusError('rest')), onBusError('rest'))
    } else {
      created = createBus('memory', memoryTransport, onBusError('memory'))
    }
    buses.set(tier, created)
    return created
  }

  const features: Features = {}
  const details = new Map<string, () => Record<string, unknown> | Promise<Record<string, unknown>>>()
  const availability = { tcp: { configured: tiers.tcp.configured, reachable: tcp !== null, diagnosis: tiers.tcp.lastError ?? undefined }, rest: { configured: tiers.rest.configured, reachable: rest !== null, diagnosis: tiers.rest.lastError ?? undefined } }

  async function health (): Promise<HealthReport> {
    const check = async (tier: RedisTier, ping: () => Promise<number>, ctx: DiagnosisContext | undefined): Promise<void> => {
      try {
        tiers[tier].latencyMs = await ping()
        tiers[tier].reachable = true
        tiers[tier].lastError = null
      } catch (err) {
        tiers[tier].reachable = false
        tiers[tier].latencyMs = null
        tiers[tier].lastError = safe(ctx !== undefined ? diagnose(err, { ...ctx, timeoutMs: timeouts.commandTimeoutMs, timeoutVariable: 'REDIS_COMMAND_TIMEOUT_MS' }) : String(err))
      }
      tiers[tier].checkedAt = new Date().toISOString()
    }
    // Features' own figures (queue counts read Redis too) are gathered while the tiers are PINGed: one deadline, not two.
    const reported: HealthReport['features'] = {}
    const described = Promise.all(Object.entries(features).map(async ([name, resolution]) => {
      reported[name] = { ...resolution, ...await details.get(name)?.() }
    }))
    // Only tiers that were reachable at boot hold connections the app relies on.
    await Promise.all([
      tcp !== null ? check('tcp', async () => await pingTcp(tcp, timeouts.commandTimeoutMs), tcpContext) : undefined,
      rest !== null ? check('rest', async () => await pingRest(rest), restContext) : undefined,
      described
    ])
    const inUse = [tcp !== null ? 'tcp' : null, rest !== null ? 'rest' : null].filter((t): t is RedisTier => t !== null)
    const down = inUse.filter((t) => !tiers[t].reachable)
    const bootFailures = (['tcp', 'rest'] as const).filter((t) => tiers[t].configured && !inUse.includes(t))
    const status = down.length > 0 ? 'down' : bootFailures.length > 0 ? 'degraded' : 'ok'
    return { status, tiers: structuredClone(tiers), features: reported }
  }

  fastify.decorate('features', features)
  fastify.decorate('connections', {
    tiers,
    tcp,
    rest,
    commandTimeoutMs: timeouts.commandTimeoutMs,
    variable: (name: string) => env[name],
    commands (tier: Tier, timeoutMs: number): RedisCommands | null {
      if (tier === 'tcp' && tcp !== null) return tcpCommands(tcp, timeoutMs)
      if (tier === 'rest' && rest !== null) return restCommands(rest, timeoutMs)
      return null
    },
    bus,
    resolve (requirement: FeatureRequirement): Resolution {
      const resolution = resolveTier(requirement, availability, (name) => env[name])
      features[requirement.feature] = resolution
      return resolution
    },
    describe (feature: string, fn: () => Record<string, unknown> | Promise<Record<string, unknown>>) { details.set(feature, fn) },
    health,
    redact
  } satisfies Connections)

  fastify.addHook('onReady', async () => {
    for (const tier of ['tcp', 'rest'] as const) {
      const s = tiers[tier]
      const text = !s.configured ? 'not configured' : s.reachable ? `reachable at ${s.endpoint ?? ''} (${s.source ?? ''}) in ${s.latencyMs ?? '?'} ms` : `unavailable: ${s.lastError ?? ''}`
      const level = s.configured && !s.reachable ? 'warn' : 'info'
      log[level]({ tier, configured: s.configured, reachable: s.reachable, source: s.source, latencyMs: s.latencyMs, probeMs }, `tier ${tier}: ${text}`)
    }
    const names = Object.keys(features)
    if (names.length === 0) log.info('features: none registered')
    for (const name of names) {
      const f = features[name]
      const line = f.status === 'active' ? `feature ${name}: active on ${f.tier} (${f.reason})` : `feature ${name}: skipped (${f.reason})`
      const level = f.status === 'skipped' || f.tier === 'memory' ? 'warn' : 'info'
      log[level]({ feature: name, status: f.status, tier: f.tier, reason: f.reason }, line)
    }
  })

  fastify.addHook('onClose', async () => {
    await Promise.all([...buses.values()].map(async (b) => await b.close()))
    buses.clear()
    if (tcp !== null) await closeTcp(tcp, timeouts.commandTimeoutMs)
  })
}

export default fp(connections, { name: 'connections', fastify: '5.x' })
