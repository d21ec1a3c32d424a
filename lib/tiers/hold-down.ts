import type { RedisTier } from '../resolve-tier'
import type { TierState } from './live'

// A tier counts as up for the resolver once it has stayed up for the
// hold-down, so that a flapping Redis does not make features flap; an outage
// counts at once.

export interface HoldDown {
  /** Whether each tier has been up for the hold-down (false at once when it goes down). */
  readonly stable: Readonly<Record<RedisTier, boolean>>
  /** A tier went up or down: re-resolve now (down) or once it stayed up (up). */
  settle: (tier: RedisTier, up: boolean) => void
  close: () => void
}

export function holdDown (tiers: Readonly<Record<RedisTier, TierState>>, holdDownMs: number, reresolve: (why: string) => void): HoldDown {
  const stable = Object.fromEntries(Object.entries(tiers).map(([tier, state]) => [tier, state.reachable])) as Record<RedisTier, boolean>
  const timers = new Map<RedisTier, NodeJS.Timeout>()
  return {
    stable,
    settle (tier, up) {
      clearTimeout(timers.get(tier))
      timers.delete(tier)
      if (!up) {
        stable[tier] = false
        reresolve(`${tier} is down`)
        return
      }
      const timer = setTimeout(() => {
        timers.delete(tier)
        stable[tier] = tiers[tier].reachable
        if (stable[tier]) reresolve(`${tier} is reachable again`)
      }, holdDownMs)
      timer.unref()
      timers.set(tier, timer)
    },
    close () {
      for (const timer of timers.values()) clearTimeout(timer)
      timers.clear()
    }
  }
}
