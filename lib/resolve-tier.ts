import { parseBooleanVariable, parseChoiceVariable, type ReadVariable } from './config'

export type Tier = 'tcp' | 'rest' | 'memory'
export type RedisTier = Exclude<Tier, 'memory'>
export const TIERS: readonly Tier[] = ['tcp', 'rest', 'memory']

/** What a feature plugin declares: the tiers it accepts in order of preference, and what it does without them. */
export interface FeatureRequirement {
  feature: string
  tiers: readonly RedisTier[]
  fallback: 'memory' | 'skip'
  /** The env flag that turns the feature off, e.g. CACHE_ENABLED. */
  flag: string
  /**
   * What it does while its tier is down (default `unavailable`: 503 with the reason); the same
   * on every tier. `<FEATURE>_ON_OUTAGE=memory` makes a memory-capable feature run in memory instead.
   */
  outage?: 'fail-open' | 'unavailable'
  /** false: the feature reads `<FEATURE>_ON_OUTAGE` itself, with choices of its own (rate-limit's local, open, closed). */
  outageVariable?: false
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

const TIER_LABEL: Record<RedisTier, string> = {
  tcp: 'a TCP Redis (REDIS_URL)',
  rest: 'Upstash REST (UPSTASH_REDIS_REST_URL + UPSTASH_REDIS_REST_TOKEN)'
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
  const skipped = (reason: string): Resolution => ({ feature, status: 'skipped', tier: null, reason, shared: false })
  const active = (tier: Tier, reason: string): Resolution => {
    const note = req.notes?.[tier]
    const refusing = tier === 'memory' ? undefined : tiers[tier].refusing
    const why = refusing === undefined ? reason : `${reason} but refuses commands (${refusing})`
    return { feature, status: 'active', tier, reason: note === undefined ? why : `${why}; ${note}`, shared: tier !== 'memory' }
  }

  if (!parseBooleanVariable(read, req.flag, true)) return skipped(`disabled by ${req.flag}=${read(req.flag) ?? ''}`)

  const tierVariable = `${envPrefix(feature)}_TIER`
  const forced = parseChoiceVariable(read, tierVariable, TIERS)
  if (forced === 'memory') {
    return req.fallback === 'memory'
      ? active('memory', `forced by ${tierVariable}=memory; state is per instance and lost on restart`)
      : skipped(`${tierVariable}=memory is not supported: the ${feature} feature needs ${req.tiers.map((t) => TIER_LABEL[t]).join(' or ')}`)
  }
  if (forced !== undefined) {
    if (!req.tiers.includes(forced)) return skipped(`${tierVariable}=${forced} is not supported: the ${feature} feature runs on ${req.tiers.join(', ')}`)
    const state = tiers[forced]
    if (state.reachable) return active(forced, `forced by ${tierVariable}=${forced}`)
    return skipped(`${tierVariable}=${forced} but ${forced} is ${state.configured ? `not reachable: ${state.diagnosis ?? 'probe failed'}` : 'not configured'}`)
  }

  const chosen = req.tiers.find((tier) => tiers[tier].reachable)
  if (chosen !== undefined) {
    const preferred = req.tiers[0]
    return active(chosen, chosen === preferred ? `${chosen} is reachable` : `${preferred} is ${tiers[preferred].configured ? 'unreachable' : 'not configured'}; using ${chosen}`)
  }

  const why = whyNoTier(req, tiers)
  return req.fallback === 'memory'
    ? active('memory', `${why}; running in memory: per instance, lost on restart`)
    : skipped(`${feature} need${feature.endsWith('s') ? '' : 's'} ${req.tiers.map((t) => TIER_LABEL[t]).join(' or ')}; ${why}`)
}

function whyNoTier (req: FeatureRequirement, tiers: Record<RedisTier, TierAvailability>): string {
  const broken = req.tiers.filter((t) => tiers[t].configured)
  if (broken.length > 0) return broken.map((t) => `${t} unreachable: ${tiers[t].diagnosis ?? 'probe failed'}`).join('; ')
  const others = (Object.keys(tiers) as RedisTier[]).filter((t) => !req.tiers.includes(t) && tiers[t].configured)
  if (others.length > 0) return `only ${others.map((t) => TIER_LABEL[t]).join(' and ')} is configured`
  return 'no Redis configured'
}
