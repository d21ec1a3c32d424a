import type { FastifyInstance } from 'fastify'
import type { HealthReport } from '../plugins/connections'
import { concealEndpoint } from '../lib/redact'

// /health/live answers while the process runs, whatever Redis does: use it
// for liveness probes so a Redis outage never gets the app restarted.
// /health PINGs the tiers in use and answers 503 when one of them is down.
// Load balancers call /health without credentials, so a host's /health says
// states and reasons but not where the database is, unless asked to.

export interface HealthOptions {
  /**
   * Show each tier's redacted `endpoint` (host, port, user; never a password) and the addresses in
   * reasons and cluster nodes. Default: false when the app is mounted, true with the demo routes.
   */
  showEndpoints?: boolean
}

/** The report as an unauthenticated caller may see it: no endpoint, host, port or user anywhere in it. */
export function withoutEndpoints (report: HealthReport): unknown {
  const states = Object.values(report.tiers)
  const conceal = (text: string): string => states.reduce((out, s) => concealEndpoint(out, s.endpoint, s.source), text)
  const tiers = Object.fromEntries(Object.entries(report.tiers).map(([tier, state]) => {
    const shown: Record<string, unknown> = { ...state }
    delete shown.endpoint
    delete shown.down // a cluster's failed nodes by address; `nodes` keeps their role and state
    if (Array.isArray(shown.nodes)) shown.nodes = (shown.nodes as Array<Record<string, unknown>>).map(({ role, status }) => ({ role, status }))
    return [tier, shown]
  }))
  return JSON.parse(JSON.stringify({ ...report, tiers }), (_key, value: unknown) => typeof value === 'string' ? conceal(value) : value)
}

export default async function healthRoutes (fastify: FastifyInstance, opts: HealthOptions): Promise<void> {
  fastify.get('/health/live', async () => ({ status: 'ok' }))

  fastify.get('/health', async (_request, reply) => {
    const report = await fastify.connections.health()
    return await reply.code(report.status === 'down' ? 503 : 200).send(opts.showEndpoints === true ? report : withoutEndpoints(report))
  })
}
