import { diagnoseQuota, type DiagnosisContext } from '../diagnose'
import type { ReadVariable } from '../config'
import type { RedisTier } from '../resolve-tier'
import type { LuaScript } from '../redis-commands'
import { addsData, fullReason, parseMemoryInfo, refusalCause, UNKNOWN_MEMORY, type MemoryLimits, type Refusal } from '../refusal'
import type { CommandObserver } from './driver'
import type { TierState } from './live'

// Whether each reachable tier refuses commands, told by the answers that pass
// anyway: a command refused with OOM marks it full until a script that adds
// data is answered (or a check while full says there is room); a spent quota marks it refusing until any
// command is answered. Nothing here sends a command while a tier is healthy:
// maxmemory is measured once at boot, and again only while a tier is full.

export interface TierRefusalsOptions {
  /** Every tier's live state (read at each call: the record's entries are replaced once at boot). */
  states: Record<RedisTier, TierState>
  context: (tier: RedisTier) => DiagnosisContext | undefined
  /** The features active on the tier now, for what the full sentence says this app keeps there. */
  featuresOn: (tier: RedisTier) => string[]
  read: ReadVariable
  /** One INFO memory on the tier, metered and within the command deadline; rejects when it cannot. */
  memoryInfo: (tier: RedisTier) => Promise<string>
  /** The tier began (refusing) or stopped (null) refusing: once per transition. */
  onChange: (tier: RedisTier, refusing: Refusal | null, previous: Refusal) => void
}

export interface TierRefusals {
  observer: (tier: RedisTier) => CommandObserver
  /** An error a command or PING got: true (and noted) when it says the tier refuses. */
  refused: (tier: RedisTier, err: unknown) => boolean
  /** A command was answered (`script`: the script it ran). */
  answered: (tier: RedisTier, script?: LuaScript) => void
  /** maxmemory and its policy, once (boot); unknown when the server will not say. */
  measure: (tier: RedisTier) => Promise<void>
  /** While full: is there room again? One INFO memory, for /health's check. */
  recheck: (tier: RedisTier) => Promise<void>
  limits: (tier: RedisTier) => MemoryLimits
}

export function tierRefusals (opts: TierRefusalsOptions): TierRefusals {
  const measured = new Map<RedisTier, MemoryLimits>()
  /** The refusal each tier's listeners were told of: a full state is told once its limits are read. */
  const announced = new Map<RedisTier, Refusal>()
  const limits = (tier: RedisTier): MemoryLimits => measured.get(tier) ?? UNKNOWN_MEMORY

  function announce (tier: RedisTier): void {
    const refusing = opts.states[tier].refusing
    const previous = announced.get(tier)
    if (refusing === null) {
      announced.delete(tier)
      if (previous !== undefined) opts.onChange(tier, null, previous)
    } else if (previous?.cause !== refusing.cause) {
      announced.set(tier, refusing)
      opts.onChange(tier, refusing, previous ?? refusing)
    }
  }

  function fullRefusal (tier: RedisTier, since: string): Refusal {
    // Full with no maxmemory: what was measured is out of date (or the limit is the provider's own), so it is not quoted.
    const known = limits(tier).maxmemory === 0 ? { ...limits(tier), maxmemory: null } : limits(tier)
    return { cause: 'full', reason: fullReason(known, opts.featuresOn(tier), opts.read), since }
  }

  /** INFO memory; false when it could not be read. */
  async function read (tier: RedisTier): Promise<boolean> {
    try {
      measured.set(tier, parseMemoryInfo(await opts.memoryInfo(tier)))
      return true
    } catch {
      return false
    }
  }

  async function recheck (tier: RedisTier): Promise<void> {
    const state = opts.states[tier]
    if (state.refusing?.cause !== 'full' || !await read(tier)) return
    const { maxmemory, usedMemory } = limits(tier)
    const room = maxmemory === 0 || (maxmemory !== null && usedMemory !== null && usedMemory < maxmemory)
    if (state.refusing?.cause !== 'full') return
    state.refusing = room ? null : fullRefusal(tier, state.refusing.since)
    announce(tier)
  }

  function refused (tier: RedisTier, err: unknown): boolean {
    const cause = refusalCause(err)
    if (cause === null) return false
    const state = opts.states[tier]
    // A spent quota refuses reads too: it outranks a full Redis, and neither is re-noted.
    if (state.refusing?.cause === 'quota' || state.refusing?.cause === cause) return true
    const since = new Date().toISOString()
    if (cause === 'quota') {
      const ctx = opts.context(tier)
      const message = err instanceof Error ? err.message : String(err)
      const reason = ctx === undefined ? null : diagnoseQuota(message, ctx)
      state.refusing = { cause, reason: reason ?? message, since }
      announce(tier)
      return true
    }
    state.refusing = fullRefusal(tier, since)
    // The limits may have changed since boot (CONFIG SET, a plan change): read them once for this transition, then tell.
    void read(tier).then(() => {
      if (state.refusing?.cause !== 'full') return
      state.refusing = fullRefusal(tier, state.refusing.since)
      announce(tier)
    })
    return true
  }

  function answered (tier: RedisTier, script?: LuaScript): void {
    const state = opts.states[tier]
    if (state.refusing === null || (state.refusing.cause === 'full' && (script === undefined || !addsData(script)))) return
    state.refusing = null
    announce(tier)
  }

  return {
    observer: (tier) => ({ failed: (err) => { refused(tier, err) }, answered: (script) => { answered(tier, script) } }),
    refused,
    answered,
    measure: async (tier) => { await read(tier) },
    recheck,
    limits
  }
}
