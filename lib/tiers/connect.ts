import type { ReadVariable } from '../config'
import { diagnose } from '../diagnose'
import type { RedisTier } from '../resolve-tier'
import type { ProbeResult, TierDriver, TierTimeouts } from './driver'
import { emptyTierState, type TierState } from './live'
import type { TierRefusals } from './refusals'
import { byTier, registeredTiers } from './registry'

// From settings to probed drivers, for every registered tier the same way:
// configure each from its own variables (a misconfigured one is reported with
// its fix and never dialled), probe the configured ones in parallel under one
// deadline, and say why none answered when Redis is required.

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
