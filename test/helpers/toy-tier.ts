import type { TierDefinition } from '../../lib/tiers/driver'
import { tcpTier } from '../../lib/tiers/tcp'
import type { TcpClient } from '../../lib/tiers/tcp-client'

// A new tier, written as one would be: this file, and one `registerTier(toyTier)`
// line (lib/tiers/registry.ts for a built-in one; test/new-tier.test.ts here).
// Its own variable (TOY_REDIS_URL), label, set-up line and driver; the driver
// here borrows the tcp driver's probe, commands and transport, as a tier for
// another Redis-speaking service would. Nothing else names it.

declare module '../../lib/resolve-tier' {
  interface RedisTiers {
    toy: true
  }
}

export const toyTier: TierDefinition<TcpClient> = {
  tier: 'toy',
  label: 'a toy Redis (TOY_REDIS_URL)',
  setUp: 'Set TOY_REDIS_URL to use the toy tier.',
  secretVariables: [],
  configure (read, timeouts) {
    const url = read('TOY_REDIS_URL')
    if (url === undefined) return { status: 'none' }
    const result = tcpTier.configure((name) => name === 'REDIS_URL' ? url : undefined, timeouts)
    if (result.status === 'none') return result
    if (result.status === 'invalid') return { ...result, variable: 'TOY_REDIS_URL', diagnosis: result.diagnosis.replaceAll('REDIS_URL', 'TOY_REDIS_URL') }
    const driver = result.target
    return { status: 'ok', target: { ...driver, tier: 'toy', context: { ...driver.context, tier: 'toy', variable: 'TOY_REDIS_URL', secretVariable: 'TOY_REDIS_URL' } } }
  },
  diagnose: ({ message, where }) => /WRONGPASS/.test(message) ? `${where} refused the toy password` : null
}
