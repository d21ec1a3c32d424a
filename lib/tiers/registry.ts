import type { RedisTier } from '../resolve-tier'
import type { TierDefinition } from './driver'
import { tcpTier } from './tcp'
import { restTier } from './rest'

// The Redis tiers this process knows, best first: connections configures and
// probes each, the resolver prefers them in this order, and /health, /metrics
// and the status page list them. Memory is not one of them: it needs no
// driver and is every feature's own fallback.

const registered: TierDefinition[] = []

/**
 * Add a tier after those already registered (so below them in preference). Its name must be
 * declared too, for the types: `declare module '<path>/lib/resolve-tier' { interface RedisTiers { name: true } }`.
 * Returns a function that removes it again (for tests).
 */
export function registerTier<Client> (definition: TierDefinition<Client>): () => void {
  if ((definition.tier as string) === 'memory' || registered.some((d) => d.tier === definition.tier)) throw new Error(`a tier named ${definition.tier} is already registered`)
  const entry = definition as unknown as TierDefinition
  registered.push(entry)
  return () => {
    const i = registered.indexOf(entry)
    if (i >= 0) registered.splice(i, 1)
  }
}

/** Every registered Redis tier, best first. */
export function registeredTiers (): readonly TierDefinition[] {
  return registered
}

/** One value per registered tier, best first: the records /health, the resolver and the status page read. */
export function byTier<T> (value: (tier: RedisTier) => T): Record<RedisTier, T> {
  return Object.fromEntries(registered.map((d) => [d.tier, value(d.tier)])) as Record<RedisTier, T>
}

export function tierDefinition (tier: string): TierDefinition | undefined {
  return registered.find((d) => d.tier === tier)
}

registerTier(tcpTier)
registerTier(restTier)
