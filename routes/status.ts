import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { ServerResponse } from 'node:http'
import { FeatureUnavailableError, ForbiddenError } from '../lib/errors'
import type { BudgetReport } from '../lib/usage'
import { tierDefinition } from '../lib/tiers/registry'
import type { RedisTier } from '../lib/resolve-tier'
import { statusPage } from './status-page'

// GET /status: one page that shows every tier and feature and what they cost,
// updated live over an event stream of this instance (GET /status/stream; the
// page polls GET /status.json where EventSource is missing or refused). The
// page is one self-contained document: no build step, no external asset.
// Figures that cost Redis commands to read (presence online, queue counts)
// are read only while someone is looking, at most every SLOW_FIGURES_MS.

export interface StatusPageOptions {
  /** The host's own access check, run for the page, its stream and its JSON: false answers 403. */
  authorize?: (request: FastifyRequest) => boolean | Promise<boolean>
  /** How often the charts' history takes a sample (default 10 s; 90 are kept). */
  historySampleMs?: number
}

export interface StatusSample {
  /** Epoch ms. */
  t: number
  /** Commands billed since boot, by feature. */
  commands: Record<string, number>
  cacheHits: number
  cacheMisses: number
  ssePublished: number
}

export interface StatusSnapshot {
  at: string
  status: 'ok' | 'degraded' | 'down'
  tiers: Array<{ tier: string, configured: boolean, reachable: boolean, latencyMs: number | null, endpoint: string | null, source: string | null, lastError: string | null, since: string | null, refusing: { cause: 'full' | 'quota', reason: string, since: string } | null, setUp: string }>
  features: Array<{ feature: string, status: string, tier: string | null, reason: string, outage: string, transitions: number, since: string }>
  figures: {
    cache: { hits: number, misses: number, hitRatio: number | null, l1Entries: number, l1Bytes: number, l2WritesShed: number }
    sse: { clients: number, published: number, delivered: number, eventsPerSecond: number }
    presence: { online: number | null }
    queues: Record<string, Record<string, number>>
    rateLimit: { decisions: number, refusedInMemory: number, byPolicy: number, instances: number }
  }
  commands: Array<{ feature: string, tier: string, requests: number, commands: number, today: number }>
  budget: BudgetReport
  /** Present when it changed since the last message of a stream (and always in /status.json). */
  history?: StatusSample[]
}

const PUSH_MS = 2000
/** Live viewers per instance; past it a viewer gets 503 and its page polls /status.json instead. */
const MAX_VIEWERS = 100
const SLOW_FIGURES_MS = 10_000
const HISTORY_LENGTH = 90
const STREAM_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-store',
  connection: 'keep-alive',
  'x-accel-buffering': 'no'
}

export default async function statusRoutes (fastify: FastifyInstance, opts: StatusPageOptions): Promise<void> {
  const { connections, cache, sse, presence, queues } = fastify
  const sampleMs = opts.historySampleMs ?? 10_000

  const history: StatusSample[] = []
  let historyChanged = true
  function sample (): StatusSample {
    const commands: Record<string, number> = {}
    for (const e of connections.usage.entries()) commands[e.feature] = (commands[e.feature] ?? 0) + e.commands
    const c = cache.stats()
    return { t: Date.now(), commands, cacheHits: c.hits, cacheMisses: c.misses, ssePublished: sse.stats().published }
  }
  const sampler = setInterval(() => {
    history.push(sample())
    if (history.length > HISTORY_LENGTH) history.shift()
    historyChanged = true
  }, sampleMs)
  sampler.unref()
  history.push(sample())

  /** Redis-read figures, refreshed at most every SLOW_FIGURES_MS and only when asked for. */
  let slow: { at: number, online: number | null, queues: StatusSnapshot['figures']['queues'] } = { at: 0, online: null, queues: {} }
  let refreshing: Promise<void> | null = null
  async function refreshSlow (): Promise<void> {
    if (Date.now() - slow.at < SLOW_FIGURES_MS) return
    refreshing ??= (async () => {
      const online = presence.available ? await presence.count().catch(() => null) : null
      const counts: StatusSnapshot['figures']['queues'] = {}
      if (queues.available) {
        await Promise.all(queues.names().map(async (name) => {
          const found = await queues.counts(name).catch(() => null)
          if (found !== null) counts[name] = { ...found }
        }))
      }
      slow = { at: Date.now(), online, queues: counts }
    })().finally(() => { refreshing = null })
    await refreshing
  }

  function snapshot (withHistory: boolean): StatusSnapshot {
    const c = cache.stats()
    const s = sse.stats()
    const r = fastify.rateLimiter.stats()
    const last = history[history.length - 1]
    const seconds = (Date.now() - last.t) / 1000
    return {
      at: new Date().toISOString(),
      status: connections.status(),
      // The tiers this app configured at boot (a tier registered later is not in them).
      tiers: (Object.keys(connections.tiers) as RedisTier[]).map((tier) => {
        const setUp = tierDefinition(tier)?.setUp ?? ''
        const { configured, reachable, latencyMs, endpoint, source, lastError, since, refusing } = connections.tiers[tier]
        return { tier, configured, reachable, latencyMs, endpoint, source, lastError, since, refusing, setUp }
      }),
      features: Object.entries(fastify.features).map(([feature, f]) => ({ feature, status: f.status, tier: f.tier, reason: f.reason, outage: f.outage, transitions: f.transitions, since: f.since })),
      figures: {
        cache: { hits: c.hits, misses: c.misses, hitRatio: c.hits + c.misses === 0 ? null : c.hits / (c.hits + c.misses), l1Entries: c.l1Entries, l1Bytes: c.l1Bytes, l2WritesShed: c.l2WritesShed },
        sse: { clients: s.clients, published: s.published, delivered: s.delivered, eventsPerSecond: seconds > 0.5 ? Math.max(0, s.published - last.ssePublished) / seconds : 0 },
        presence: { online: slow.online },
        queues: slow.queues,
        rateLimit: { decisions: r.decisions, refusedInMemory: r.by.blocked, byPolicy: r.byPolicy, instances: r.instances }
      },
      commands: connections.usage.entries(),
      budget: connections.usage.budget(),
      ...(withHistory ? { history } : {})
    }
  }

  // Live viewers: one write per push to each, nothing kept per viewer but its response.
  const viewers = new Set<ServerResponse>()
  let pusher: NodeJS.Timeout | undefined
  let pushSoon: NodeJS.Immediate | undefined
  async function push (): Promise<void> {
    if (viewers.size === 0) return
    await refreshSlow()
    const frame = `data: ${JSON.stringify(snapshot(historyChanged))}\n\n`
    historyChanged = false
    for (const res of viewers) res.write(frame)
  }
  function startPushing (): void {
    if (pusher !== undefined) return
    pusher = setInterval(() => { void push() }, PUSH_MS)
    pusher.unref()
  }
  function stopPushing (): void {
    if (viewers.size > 0) return
    clearInterval(pusher)
    pusher = undefined
  }
  // A tier or feature change is on the page at once, not at the next tick.
  const soon = (): void => {
    if (viewers.size === 0 || pushSoon !== undefined) return
    pushSoon = setImmediate(() => { pushSoon = undefined; void push() })
  }
  const offTier = connections.on('tier', soon)
  const offChange = connections.on('change', soon)

  async function allowed (request: FastifyRequest): Promise<void> {
    if (opts.authorize !== undefined && !(await opts.authorize(request))) throw new ForbiddenError('not allowed to see the status page')
  }

  const page = statusPage()
  fastify.get('/status', async (request, reply) => {
    await allowed(request)
    return await reply.headers({ 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-security-policy': page.contentSecurityPolicy, 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' }).send(page.html)
  })

  fastify.get('/status.json', async (request, reply) => {
    await allowed(request)
    await refreshSlow()
    return await reply.header('cache-control', 'no-store').send(snapshot(true))
  })

  fastify.get('/status/stream', async (request, reply) => {
    await allowed(request)
    if (viewers.size >= MAX_VIEWERS) throw new FeatureUnavailableError('status', `${MAX_VIEWERS} status page streams are open on this instance; the page polls /status.json instead`)
    await refreshSlow()
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, STREAM_HEADERS)
    res.write(`retry: 3000\n\ndata: ${JSON.stringify(snapshot(true))}\n\n`)
    viewers.add(res)
    startPushing()
    res.on('close', () => {
      viewers.delete(res)
      stopPushing()
    })
  })

  fastify.addHook('preClose', async () => {
    for (const res of viewers) res.end()
    viewers.clear()
    stopPushing()
  })
  fastify.addHook('onClose', async () => {
    clearInterval(sampler)
    clearInterval(pusher)
    clearImmediate(pushSoon)
    offTier()
    offChange()
  })
}
