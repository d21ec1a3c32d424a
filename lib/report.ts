import type { FastifyBaseLogger } from 'fastify'
import type { FeatureState } from './feature-bindings'
import type { RedisTier } from './resolve-tier'
import { describeMemory, evictionWarning } from './refusal'
import type { LiveTier, TierState } from './tiers/live'
import type { TierRefusals } from './tiers/refusals'
import { registeredTiers } from './tiers/registry'
import type { BudgetReport, Usage } from './usage'

// What connections tells about the tiers and features: GET /health's report
// (PINGs within the command deadline), the overall status without a PING, and
// the boot lines (one per tier, one per feature). Every registered tier is
// reported the same way; what only one tier has (a cluster's nodes) comes from
// its driver's describe().

export interface HealthReport {
  status: 'ok' | 'degraded' | 'down'
  tiers: Record<RedisTier, TierState>
  features: Record<string, FeatureState & Record<string, unknown>>
  /** Commands billed today (UTC) against REDIS_DAILY_COMMAND_BUDGET, by feature and tier. */
  budget: BudgetReport
}

export type FeatureDetails = () => Record<string, unknown> | Promise<Record<string, unknown>>

export interface ReportSources {
  /** Every registered tier's live state. */
  tiers: Record<RedisTier, TierState>
  /** The configured tiers, connected or not. */
  live: ReadonlyMap<RedisTier, LiveTier>
  refusals: TierRefusals
  features: Record<string, FeatureState>
  details: ReadonlyMap<string, FeatureDetails>
  usage: Usage
}

export interface Report {
  health: () => Promise<HealthReport>
  status: () => HealthReport['status']
  /** The boot lines: each tier (where, or why not; its memory limits), then each feature. */
  boot: (log: FastifyBaseLogger, boot: { probeMs: number, reprobeMaxMs: number, safe: (text: string) => string }) => Promise<void>
}

export function report (src: ReportSources): Report {
  const { tiers, live, refusals, features } = src
  const names = (): RedisTier[] => registeredTiers().map((d) => d.tier)

  async function health (): Promise<HealthReport> {
    // Features' own figures (queue counts read Redis too) are gathered while the tiers are PINGed: one deadline, not two.
    const reported: HealthReport['features'] = {}
    const described = Promise.all(Object.entries(features).map(async ([name, state]) => {
      reported[name] = { ...state, ...await src.details.get(name)?.() }
    }))
    await Promise.all([...[...live.values()].map(async (t) => await t.check()), described])
    const snapshot: HealthReport['tiers'] = structuredClone(tiers)
    for (const tier of names()) Object.assign(snapshot[tier], await describeTier(tier), memoryOf(tier))
    return { status: status(), tiers: snapshot, features: reported, budget: src.usage.budget() }
  }

  function status (): HealthReport['status'] {
    const inUse = new Set(Object.values(features).flatMap((f) => f.status === 'active' && f.tier !== 'memory' ? [f.tier] : []))
    if ([...inUse].some((t) => !tiers[t].reachable)) return 'down'
    return names().some((t) => tiers[t].configured && (!tiers[t].reachable || tiers[t].refusing !== null)) ? 'degraded' : 'ok'
  }

  /** What the boot measure (or the last check while full) found; nothing for a tier not measured. */
  function memoryOf (tier: RedisTier): { maxmemory?: number | null, maxmemoryPolicy?: string | null } {
    if (!live.has(tier)) return {}
    const { maxmemory, policy } = refusals.limits(tier)
    return { maxmemory, maxmemoryPolicy: policy }
  }

  /** The driver's own words on the connected client (a cluster: mode, masters, nodes and which are down). */
  async function describeTier (tier: RedisTier): Promise<Record<string, unknown>> {
    const t = live.get(tier)
    const client = t?.client() ?? null
    return t?.driver.describe !== undefined && client !== null ? await t.driver.describe(client).catch(() => ({})) : {}
  }

  /** One boot line per tier: where it is, or why not; its memory limits, or why it refuses. */
  async function bootTier (log: FastifyBaseLogger, tier: RedisTier, { probeMs, reprobeMaxMs, safe }: Parameters<Report['boot']>[1]): Promise<void> {
    const s = tiers[tier]
    const retried = live.has(tier) ? `; retrying in the background (at most every ${reprobeMaxMs} ms)` : ''
    const described = await describeTier(tier)
    const cluster = described.mode === 'cluster' ? `, a Redis Cluster of ${String(described.masters)} masters` : ''
    const limits = refusals.limits(tier)
    const reached = s.refusing !== null
      ? `reachable at ${s.endpoint ?? ''} (${s.source ?? ''}${cluster}) but refusing ${s.refusing.cause === 'full' ? 'writes' : 'commands'}: ${safe(s.refusing.reason)}`
      : `reachable at ${s.endpoint ?? ''} (${s.source ?? ''}${cluster}) in ${s.latencyMs ?? '?'} ms; ${describeMemory(limits)}`
    const text = !s.configured ? 'not configured' : s.reachable ? reached : `unavailable: ${s.lastError ?? ''}${retried}`
    const level = s.configured && (!s.reachable || s.refusing !== null) ? 'warn' : 'info'
    log[level]({ tier, configured: s.configured, reachable: s.reachable, source: s.source, latencyMs: s.latencyMs, probeMs, mode: described.mode, refusing: s.refusing?.cause ?? null, maxmemory: limits.maxmemory, maxmemoryPolicy: limits.policy }, `tier ${tier}: ${text}`)
    // BullMQ's keys have no TTL and must never be evicted: an evicting policy loses jobs and locks.
    const queued = features.queues?.status === 'active' && features.queues.tier === tier
    const eviction = queued ? evictionWarning(tier, limits) : null
    if (eviction !== null) log.warn({ tier, maxmemoryPolicy: limits.policy }, eviction)
  }

  function bootFeatures (log: FastifyBaseLogger): void {
    const registered = Object.keys(features)
    if (registered.length === 0) log.info('features: none registered')
    for (const name of registered) {
      const f = features[name]
      const line = f.status === 'active' ? `feature ${name}: active on ${f.tier} (${f.reason}; on outage: ${f.outage})` : `feature ${name}: skipped (${f.reason})`
      const level = f.status === 'skipped' || f.tier === 'memory' ? 'warn' : 'info'
      log[level]({ feature: name, status: f.status, tier: f.tier, reason: f.reason, outage: f.outage }, line)
    }
  }

  return {
    health,
    status,
    async boot (log, boot) {
      for (const tier of names()) await bootTier(log, tier, boot)
      bootFeatures(log)
    }
  }
}
