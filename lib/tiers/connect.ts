import type { FastifyBaseLogger } from 'fastify'
import type { ReadVariable } from '../config'
import { diagnose } from '../diagnose'
import { createBus, type Bus } from '../bus'
import type { FeatureState } from '../feature-bindings'
import type { RedisTier, Tier } from '../resolve-tier'
import type { rateLimitedWarn } from '../rate-limited-log'
import { refusalCause } from '../refusal'
import { restartWatch, type RedisRestart, type RestartWatch } from '../restart-watch'
import type { Usage } from '../usage'
import type { ProbeResult, TierDriver, TierTimeouts } from './driver'
import { emptyTierState, liveTier, type LiveTier, type TierState } from './live'
import { memoryTransport } from './memory'
import { tierRefusals, type TierRefusals } from './refusals'
import { byTier, registeredTiers } from './registry'

// From settings to live tiers, for every registered tier the same way:
// configure each from its own variables (a misconfigured one is reported with
// its fix and never dialled), probe the configured ones in parallel under one
// deadline, say why none answered when Redis is required, then keep each live
// (its refusals, its restarts, its pub/sub bus). plugins/connections.ts wires
// these together; nothing here names a tier.

export interface ConfiguredTiers {
  /** Every registered tier's state, best first; a misconfigured one already holds its diagnosis. */
  states: Record<RedisTier, TierState>
  drivers: Array<TierDriver<unknown>>
  /** Every secret the settings hold, for redaction. */
  secrets: string[]
}

export function configureTiers (read: ReadVariable, timeouts: TierTimeouts, safe: (secrets: readonly string[], text: string) => string): ConfiguredTiers {
  const definitions = registeredTiers()
  const secrets = definitions.flatMap((d) => d.secretVariables.flatMap((v) => read(v) ?? []))
  const states = byTier(emptyTierState)
  const drivers: Array<TierDriver<unknown>> = []
  const invalid: Array<{ tier: RedisTier, variable: string, diagnosis: string }> = []
  for (const definition of definitions) {
    const result = definition.configure(read, timeouts)
    if (result.status === 'ok') {
      drivers.push(result.target)
      secrets.push(...result.target.secrets)
    } else if (result.status === 'invalid') {
      invalid.push({ tier: definition.tier, ...result })
    }
  }
  for (const { tier, variable, diagnosis } of invalid) {
    Object.assign(states[tier], { configured: true, source: variable, lastError: safe(secrets, diagnosis), checkedAt: new Date().toISOString() })
  }
  return { states, drivers, secrets }
}

/** Probe once, in parallel, under one deadline. */
export async function probeTiers (drivers: ReadonlyArray<TierDriver<unknown>>, deadlineMs: number): Promise<{ probes: Array<ProbeResult<unknown>>, probeMs: number }> {
  const started = performance.now()
  const probes = await Promise.all(drivers.map(async (d) => await d.probe(deadlineMs)))
  return { probes, probeMs: Math.round(performance.now() - started) }
}

/** Why no tier answered, one clause per registered tier: the text of REDIS_REQUIRED's error. */
export function whyNoneAnswered (configured: ConfiguredTiers, probes: ReadonlyArray<ProbeResult<unknown>>, safe: (text: string) => string): string {
  const { states, drivers } = configured
  return registeredTiers().map(({ tier }) => {
    const i = drivers.findIndex((d) => d.tier === tier)
    return `${tier}: ${i >= 0 ? safe(diagnose(probes[i].error, drivers[i].context)) : (states[tier].lastError ?? 'not configured')}`
  }).join('; ')
}

/** The driver with its PING told to the refusals: a refused PING is an answer (reachable), a PING while full also checks for room. */
export function observedPing (driver: TierDriver<unknown>, refusals: TierRefusals, states: Record<RedisTier, TierState>): TierDriver<unknown> {
  const name = driver.tier
  return {
    ...driver,
    async ping (client, ms) {
      const started = performance.now()
      try {
        const latencyMs = await driver.ping(client, ms)
        refusals.answered(name)
        if (states[name].refusing?.cause === 'full') await refusals.recheck(name)
        return latencyMs
      } catch (err) {
        if (refusals.refused(name, err)) return Math.round((performance.now() - started) * 100) / 100
        throw err
      }
    }
  }
}

interface LiveDeps {
  drivers: ReadonlyArray<TierDriver<unknown>>
  probes: ReadonlyArray<ProbeResult<unknown>>
  /** Every tier's state: a configured tier's entry is replaced by its live state. */
  tiers: Record<RedisTier, TierState>
  refusals: TierRefusals
  timeouts: TierTimeouts
  reprobeMaxMs: number
  safe: (text: string) => string
  usage: Usage
  log: FastifyBaseLogger
  warn: ReturnType<typeof rateLimitedWarn>
}

/** Each configured tier kept live from its probe on, added to `live`: its changes logged once and handed to `changed`. */
export function openLive (live: Map<RedisTier, LiveTier>, { drivers, probes, tiers, refusals, timeouts, reprobeMaxMs, safe, usage, log, warn }: LiveDeps, changed: (tier: RedisTier, up: boolean, state: TierState) => void): void {
  drivers.forEach((driver, i) => {
    const tier = liveTier(observedPing(driver, refusals, tiers), probes[i], {
      ...timeouts,
      reprobeMaxMs,
      diagnose: (err, ctx) => safe(diagnose(err, ctx)),
      meter: usage.meter('connections', driver.tier),
      onChange (name, up, state) {
        if (up) log.info({ tier: name, latencyMs: state.latencyMs }, `tier ${name}: reachable again at ${state.endpoint ?? ''}`)
        else log.warn({ tier: name }, `tier ${name}: down: ${state.lastError ?? ''}`)
        changed(name, up, state)
      },
      onError: (name, diagnosis) => warn(`${name}-down`, `tier ${name} still down: ${diagnosis}`, { tier: name }),
      onNotice: (name, message) => log.info({ tier: name }, message)
    })
    live.set(driver.tier, tier)
    tiers[driver.tier] = tier.state
    if (probes[i].refused !== undefined) refusals.refused(driver.tier, probes[i].refused)
  })
}

interface RefusalsDeps {
  tiers: Record<RedisTier, TierState>
  live: ReadonlyMap<RedisTier, LiveTier>
  read: (name: string) => string | undefined
  usage: Usage
  log: FastifyBaseLogger
  safe: (text: string) => string
  commandTimeoutMs: number
  /** Until boot is over, a refusal is the boot report's to tell. */
  booted: () => boolean
  features: () => Record<string, FeatureState>
  reresolve: (why: string) => void
}

/** A tier that answers but refuses (full: writes; a spent quota: everything): told once per change, and a quota moves the features. */
export function refusalsOf ({ tiers, live, read, usage, log, safe, commandTimeoutMs, booted, features, reresolve }: RefusalsDeps): TierRefusals {
  return tierRefusals({
    states: tiers,
    context: (tier) => live.get(tier)?.driver.context,
    featuresOn: (tier) => Object.entries(features()).flatMap(([name, f]) => f.status === 'active' && f.tier === tier ? [name] : []),
    read,
    async memoryInfo (tier) {
      const t = live.get(tier)
      const client = t?.client() ?? null
      if (t?.driver.info === undefined || client === null) throw new Error(`${tier} has no client to ask`)
      usage.meter('connections', tier)(1)
      return await t.driver.info(client, 'memory', commandTimeoutMs)
    },
    onChange (tier, refusing, previous) {
      if (!booted()) return
      if (refusing !== null) log.warn({ tier, cause: refusing.cause }, `tier ${tier}: refusing ${refusing.cause === 'full' ? 'writes' : 'commands'}: ${safe(refusing.reason)}`)
      else log.info({ tier, cause: previous.cause }, `tier ${tier}: accepts ${previous.cause === 'full' ? 'writes' : 'commands'} again`)
      // A spent quota is an outage for the features (reads are refused too); a full Redis still serves them.
      if (refusing?.cause === 'quota' || previous.cause === 'quota') reresolve(refusing === null ? `${tier} accepts commands again` : `${tier} refuses commands`)
    }
  })
}

interface RestartsDeps {
  live: ReadonlyMap<RedisTier, LiveTier>
  clientOf: (tier: Tier) => unknown
  usage: Usage
  log: FastifyBaseLogger
  warn: ReturnType<typeof rateLimitedWarn>
  redact: (err: unknown) => Error
  commandTimeoutMs: number
  announce: (restart: RedisRestart) => void
}

/** Noticed on a reconnect (tcp) or when a tier is back after being down; learnt at boot, within the command deadline. */
export function restartsOf ({ live, clientOf, usage, log, warn, redact, commandTimeoutMs, announce }: RestartsDeps): RestartWatch {
  return restartWatch({
    commandTimeoutMs,
    commands (tier) {
      const t = live.get(tier)
      const client = clientOf(tier)
      return t === undefined || client === null ? null : t.driver.commands(client, commandTimeoutMs, usage.meter('connections', tier))
    },
    meter: (tier) => usage.meter('connections', tier),
    onRestart (restart) {
      log.warn({ tier: restart.tier }, `tier ${restart.tier}: ${restart.reason}; jobs, presence and event histories held there are gone, the features recover what they can`)
      announce(restart)
    },
    onError (tier, err) {
      // A Redis that refuses (full, a spent quota) has its own line saying so.
      if (refusalCause(err) === null) warn(`restart-check-${tier}`, `tier ${tier}: could not check whether Redis kept its data: ${redact(err).message}`, { tier })
    }
  })
}

/** The one pub/sub bus of each tier, made on first use: a Redis tier's over its driver's transport, memory's in process. */
export function tierBuses (live: ReadonlyMap<RedisTier, LiveTier>, clientOf: (tier: Tier) => unknown, onError: (tier: Tier, err: Error) => void): { bus: (tier: Tier) => Bus, close: () => Promise<void> } {
  const buses = new Map<Tier, Bus>()
  return {
    bus (tier) {
      const existing = buses.get(tier)
      if (existing !== undefined) return existing
      const driver = tier === 'memory' ? undefined : live.get(tier)?.driver
      const client = clientOf(tier)
      if (tier !== 'memory' && (driver === undefined || client === null)) throw new Error(`${tier} is not reachable; resolve a requirement before asking for its bus`)
      const failed = (err: Error): void => onError(tier, err)
      const created = createBus(tier, driver !== undefined ? driver.transport(client, failed) : memoryTransport, failed)
      buses.set(tier, created)
      return created
    },
    async close () {
      await Promise.all([...buses.values()].map(async (b) => await b.close()))
      buses.clear()
    }
  }
}
