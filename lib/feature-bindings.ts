import { ConfigError } from './errors'
import { parseChoiceVariable, type ReadVariable } from './config'
import { acceptedTiers, envPrefix, resolveTier, type FeatureRequirement, type RedisTier, type Resolution, type TierAvailability } from './resolve-tier'

// Features follow the tiers live. Each feature's resolution is re-made when a
// tier changes: promoted when one of its better tiers has been up for the
// hold-down (memory -> rest -> tcp, or skipped -> active), and, when its tier
// goes down, degraded as it declared: `fail-open` and `unavailable` stay
// bound (their calls fail open or answer 503 with the reason, and work again
// when the tier returns); `memory` (<FEATURE>_ON_OUTAGE=memory) moves to
// memory and is promoted back. Every move is applied by the feature's own
// rebind callback first, then recorded, logged once and announced.

/** What a feature does while its tier is down; local, open and closed are a feature's own per-call policy (`outagePolicy`). */
export type OutageBehaviour = 'fail-open' | 'unavailable' | 'memory' | 'local' | 'open' | 'closed'

/** A move whose rebind failed is tried again after this long. */
const RETRY_MS = 1000

/** What /health and fastify.features say about a feature: its resolution, and how it got there. */
export type FeatureState = Resolution & {
  /** What the feature does while its tier is down. */
  outage: OutageBehaviour
  /** When it was last (re)bound. */
  since: string
  /** Moves since boot. */
  transitions: number
}

export interface FeatureChange {
  feature: string
  from: Resolution['tier']
  to: Resolution['tier']
  reason: string
}

/** Moves the feature's store and bus to `next`; rejects if it could not (the feature stays where it was). */
export type Rebind = (next: Resolution, previous: Resolution) => Promise<void>

export interface BindingsOptions {
  read: ReadVariable
  /** Each Redis tier now, as the resolver sees it: reachable means up for at least the hold-down. */
  availability: () => Record<RedisTier, TierAvailability>
  /** Whether the tier is up right now (no hold-down): an outage is acted on at once. */
  isUp: (tier: RedisTier) => boolean
  onChange: (change: FeatureChange, state: FeatureState) => void
  onRebindError: (feature: string, err: unknown) => void
}

interface Binding {
  requirement: FeatureRequirement
  outage: OutageBehaviour
  state: FeatureState
  rebind?: Rebind
  /** Re-resolutions run one after the other, each on the state of its own time. */
  queue: Promise<void>
}

export interface FeatureBindings {
  readonly states: Record<string, FeatureState>
  /** Resolve a requirement at boot; `rebind` is called for every later move. */
  bind: (requirement: FeatureRequirement, rebind?: Rebind) => FeatureState
  /** A tier changed: re-resolve every feature. */
  reresolve: (why: string) => void
  close: () => void
}

function snapshot (state: FeatureState): Resolution {
  const { feature, status, tier, reason, shared } = state
  return { feature, status, tier, reason, shared } as Resolution
}

export function featureBindings (opts: BindingsOptions): FeatureBindings {
  const bindings = new Map<string, Binding>()
  const states: Record<string, FeatureState> = {}
  const retries = new Set<NodeJS.Timeout>()
  let closed = false

  /** Lower is better: the tier's place in the requirement, then memory, then skipped. */
  function rank (requirement: FeatureRequirement, resolution: Resolution): number {
    if (resolution.status === 'skipped') return Infinity
    const accepted = acceptedTiers(requirement)
    return resolution.tier === 'memory' ? accepted.length : accepted.indexOf(resolution.tier)
  }

  function next (binding: Binding, why: string): Resolution | null {
    const { requirement, state } = binding
    const feature = requirement.feature
    if (state.status === 'active' && state.tier !== 'memory' && !opts.isUp(state.tier)) {
      // An outage: the declared behaviour, the same on every tier.
      if (binding.outage !== 'memory') return null
      return { feature, status: 'active', tier: 'memory', shared: false, reason: `${state.tier} is down (${why}); ${envPrefix(feature)}_ON_OUTAGE=memory: running in memory, per instance, until it is back` }
    }
    const candidate = resolveTier(requirement, opts.availability(), opts.read)
    if (candidate.status !== 'active' || rank(requirement, candidate) >= rank(requirement, state)) return null
    // Reachable but refusing every command (a spent quota): no better than where the feature is.
    if (candidate.tier !== 'memory' && !opts.isUp(candidate.tier)) return null
    return { ...candidate, reason: candidate.reason === `${candidate.tier} is reachable` ? why : `${candidate.reason} (${why})` }
  }

  function reresolveOne (binding: Binding, why: string): void {
    binding.queue = binding.queue.then(async () => {
      if (closed) return
      const target = next(binding, why)
      if (target === null) return
      const previous = snapshot(binding.state)
      try {
        await binding.rebind?.(target, previous)
      } catch (err) {
        opts.onRebindError(binding.requirement.feature, err)
        // Tried again while nothing else changes: a move that failed once (a timeout) must not leave the feature behind.
        const timer = setTimeout(() => { retries.delete(timer); reresolveOne(binding, why) }, RETRY_MS)
        retries.add(timer)
        return
      }
      if (closed) return
      Object.assign(binding.state, target, { since: new Date().toISOString(), transitions: binding.state.transitions + 1 })
      opts.onChange({ feature: target.feature, from: previous.tier, to: target.tier, reason: target.reason }, binding.state)
    })
  }

  /** Bound at boot to a tier that is reachable but refuses every command: the outage behaviour from the start. */
  function outageAtBoot (requirement: FeatureRequirement, resolution: Resolution, outage: OutageBehaviour): Resolution {
    if (resolution.status !== 'active' || resolution.tier === 'memory' || opts.isUp(resolution.tier) || outage !== 'memory') return resolution
    const refusing = opts.availability()[resolution.tier].refusing ?? 'it refuses commands'
    return { feature: requirement.feature, status: 'active', tier: 'memory', shared: false, reason: `${resolution.tier} refuses commands (${refusing}); ${envPrefix(requirement.feature)}_ON_OUTAGE=memory: running in memory, per instance, until it accepts them again` }
  }

  return {
    states,
    bind (requirement, rebind) {
      const declared = requirement.outage ?? 'unavailable'
      const choice = requirement.outagePolicy ?? parseChoiceVariable(opts.read, `${envPrefix(requirement.feature)}_ON_OUTAGE`, ['memory', declared] as const)
      if (choice === 'memory' && (requirement.fallback !== 'memory' || requirement.memoryRefused !== undefined)) {
        throw new ConfigError(`Invalid configuration: ${envPrefix(requirement.feature)}_ON_OUTAGE=memory is not supported: the ${requirement.feature} feature cannot run in memory`)
      }
      const outage = choice ?? declared
      const resolution = outageAtBoot(requirement, resolveTier(requirement, opts.availability(), opts.read), outage)
      const state: FeatureState = { ...resolution, outage, since: new Date().toISOString(), transitions: 0 }
      bindings.set(requirement.feature, { requirement, outage: state.outage, state, rebind, queue: Promise.resolve() })
      states[requirement.feature] = state
      return state
    },
    reresolve (why) {
      for (const binding of bindings.values()) reresolveOne(binding, why)
    },
    close () {
      closed = true
      for (const timer of retries) clearTimeout(timer)
      retries.clear()
    }
  }
}
