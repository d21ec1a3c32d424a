import { parseBooleanVariable, parseChoiceVariable, type ReadVariable } from './config'
import { registeredTiers, tierDefinition } from './tiers/registry'

/**
 * The Redis tiers by name (the values mean nothing). A tier added in lib/tiers/ declares its name
 * here by declaration merging, so that `RedisTier` and `Tier` stay unions of names for hosts too.
 */
export interface RedisTiers {
  tcp: true
  rest: true
}

export type RedisTier = keyof RedisTiers
export type Tier = RedisTier | 'memory'

/** What a feature plugin declares: the tiers it accepts in order of preference, and what it does without them. */
export interface FeatureRequirement {
  feature: string
  /**
   * The Redis tiers it accepts, best first. Omitted: every registered tier in the registry's order,
   * for a feature that needs only commands (Lua included) and pub/sub, so that a new tier serves it.
   */
  tiers?: readonly RedisTier[]
  fallback: 'memory' | 'skip'
  /** The env flag that turns the feature off, e.g. CACHE_ENABLED. */
  flag: string
  /**
   * What it does while its tier is down (default `unavailable`: 503 with the reason); the same
   * on every tier. `<FEATURE>_ON_OUTAGE=memory` makes a memory-capable feature run in memory instead.
   */
  outage?: 'fail-open' | 'unavailable'
  /**
   * The feature decides each call by a policy of its own while its tier fails, read from
   * `<FEATURE>_ON_OUTAGE` by the feature itself (rate-limit's local, open, closed): the binding
   * stays on its tier, and the boot report and /health name the policy.
   */
  outagePolicy?: 'local' | 'open' | 'closed'
  /**
   * Why the memory fallback is refused here (an in-process queue in production loses jobs on
   * restart): the feature is skipped instead, with this added to the reason.
   */
  memoryRefused?: string
  /** What the feature does differently on a tier (e.g. queues on rest only produce): added to the reason. */
  notes?: Partial<Record<Tier, string>>
}

export type Resolution =
  | { feature: string, status: 'active', tier: Tier, reason: string, shared: boolean }
  | { feature: string, status: 'skipped', tier: null, reason: string, shared: false }

/** What the resolver needs to know of each Redis tier. */
export interface TierAvailability {
  configured: boolean
  reachable: boolean
  /** Why it is not reachable (already redacted). */
  diagnosis?: string
  /**
   * Reachable, but it refuses every command (a spent quota; already redacted). Features still bind
   * to it and follow their outage behaviour, rather than each instance quietly running in memory.
   */
  refusing?: string
}

const label = (tier: RedisTier): string => tierDefinition(tier)?.label ?? tier

/** The tiers a requirement accepts, best first. */
export function acceptedTiers (req: FeatureRequirement): readonly RedisTier[] {
  return req.tiers ?? registeredTiers().map((d) => d.tier)
}

/** CACHE for cache: the prefix of a feature's own variables (CACHE_TIER, CACHE_ENABLED). */
export function envPrefix (feature: string): string {
  return feature.toUpperCase().replace(/[^A-Z0-9]+/g, '_')
}

/**
 * Requirement + probe results + env flags -> one resolution. Pure: the
 * connections plugin records the result in `fastify.features`.
 * Throws ConfigError when a flag holds an invalid value.
 */
export function resolveTier (req: FeatureRequirement, tiers: Record<RedisTier, TierAvailability>, read: ReadVariable): Resolution {
  if (req.memoryRefused !== undefined) {
    const resolution = resolveTier({ ...req, fallback: 'skip', memoryRefused: undefined }, tiers, read)
    return resolution.status === 'skipped' ? { ...resolution, reason: `${resolution.reason}; ${req.memoryRefused}` } : resolution
  }
  const { feature } = req
  const accepted = acceptedTiers(req)
  const skipped = (reason: string): Resolution => ({ feature, status: 'skipped', tier: null, reason, shared: false })
  const active = (tier: Tier, reason: string): Resolution => {
    const note = req.notes?.[tier]
    const refusing = tier === 'memory' ? undefined : tiers[tier].refusing
    const why = refusing === undefined ? reason : `${reason} but refuses commands (${refusing})`
    return { feature, status: 'active', tier, reason: note === undefined ? why : `${why}; ${note}`, shared: tier !== 'memory' }
  }

  if (!parseBooleanVariable(read, req.flag, true)) return skipped(`disabled by ${req.flag}=${read(req.flag) ?? ''}`)

  const tierVariable = `${envPrefix(feature)}_TIER`
  const forced = parseChoiceVariable<Tier>(read, tierVariable, [...registeredTiers().map((d) => d.tier), 'memory'])
  if (forced === 'memory') {
    return req.fallback === 'memory'
      ? active('memory', `forced by ${tierVariable}=memory; state is per instance and lost on restart`)
      : skipped(`${tierVariable}=memory is not supported: the ${feature} feature needs ${accepted.map((t) => label(t)).join(' or ')}`)
  }
  if (forced !== undefined) {
    if (!accepted.includes(forced)) return skipped(`${tierVariable}=${forced} is not supported: the ${feature} feature runs on ${accepted.join(', ')}`)
    const state = tiers[forced]
    if (state.reachable) return active(forced, `forced by ${tierVariable}=${forced}`)
    return skipped(`${tierVariable}=${forced} but ${forced} is ${state.configured ? `not reachable: ${state.diagnosis ?? 'probe failed'}` : 'not configured'}`)
  }

  const chosen = accepted.find((tier) => tiers[tier].reachable)
  if (chosen !== undefined) {
    const preferred = accepted[0]
    return active(chosen, chosen === preferred ? `${chosen} is reachable` : `${preferred} is ${tiers[preferred].configured ? 'unreachable' : 'not configured'}; using ${chosen}`)
  }

  const why = whyNoTier(accepted, tiers)
  return req.fallback === 'memory'
    ? active('memory', `${why}; running in memory: per instance, lost on restart`)
    : skipped(`${feature} need${feature.endsWith('s') ? '' : 's'} ${accepted.map((t) => label(t)).join(' or ')}; ${why}`)
}

function whyNoTier (accepted: readonly RedisTier[], tiers: Record<RedisTier, TierAvailability>): string {
  const broken = accepted.filter((t) => tiers[t].configured)
  if (broken.length > 0) return broken.map((t) => `${t} unreachable: ${tiers[t].diagnosis ?? 'probe failed'}`).join('; ')
  const others = (Object.keys(tiers) as RedisTier[]).filter((t) => !accepted.includes(t) && tiers[t].configured)
  if (others.length > 0) return `only ${others.map((t) => label(t)).join(' and ')} is configured`
  return 'no Redis configured'
}
