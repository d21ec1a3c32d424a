import type { FastifyBaseLogger } from 'fastify'
import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import type * as BullmqBackendModule from './bullmq'
import type * as MemoryBackendModule from './memory'
import type { JobContext, JobCounts, JobEvents, QueueBackend, QueueDefinition } from './backend'
import type { TierBinding } from '../feature'
import type { TcpClient } from '../tiers/tcp-client'
import { CHANNEL_PATTERN, CHANNEL_RULE } from '../channels'
import { persistenceWarning } from './persistence'

// What queues run on for a binding: BullMQ on tcp (workers too) and on rest
// (producing only), the in-process queue on memory (QUEUES_FALLBACK=memory,
// for development). BullMQ gets what it needs through the binding: the
// tier's client, whose options are the base of every connection it makes, and
// whether the tier is a cluster (its prefix then needs a hash tag).

export interface QueuesBinding {
  tier: TierBinding['tier']
  backend: QueueBackend
  /** Whether workers can run here: they block on Redis and hold connections, which REST has not. */
  workers: boolean
  /** Set (and logged) when the tcp Redis of the queues keeps no copy of its data: at boot, in /health. */
  warning: string | null
  /** Reads it (tcp: two CONFIG GETs; nothing elsewhere). */
  checkPersistence: () => Promise<void>
}

export interface QueuesOpenOptions {
  prefix: string
  timeoutMs: number
  lockMs: number
  events: JobEvents
  log: FastifyBaseLogger
  /** QUEUES_FALLBACK=memory asked for in production: said when it does not matter (queues on tcp). */
  memoryRefused: boolean
  /** The queues defined so far, with their workers when `workers`, started at once when `started` (the app is ready). */
  definitions: QueueDefinition[]
  workers: boolean
  started: boolean
  onError: (err: Error) => void
}

export async function openQueues (binding: TierBinding, o: QueuesOpenOptions): Promise<QueuesBinding> {
  const opened = await backendFor(binding, o)
  for (const definition of o.definitions) opened.backend.define(definition, o.workers)
  if (o.started && o.workers) opened.backend.start()
  return opened
}

// Each backend's module (bullmq alone costs a sixth of a cold start) is loaded only when queues run on it.
async function backendFor (binding: TierBinding, o: QueuesOpenOptions): Promise<QueuesBinding> {
  const { tier, client } = binding
  if (tier === 'memory') {
    o.log.warn('queues run in memory (QUEUES_FALLBACK=memory): jobs are lost on restart and not shared with other instances; for local development only')
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use; the import above is types only
    const { memoryBackend } = require('./memory') as typeof MemoryBackendModule
    return { tier, backend: memoryBackend(o.events), workers: true, warning: null, checkPersistence: async () => {} }
  }
  if (client === null) throw new Error(`${tier} has no client: it is not reachable`)
  if (tier !== 'tcp' && tier !== 'rest') throw new Error(`queues cannot run on ${tier}: BullMQ needs a TCP Redis or Upstash REST`)
  if (o.memoryRefused && tier === 'tcp') o.log.warn('QUEUES_FALLBACK=memory is ignored when NODE_ENV=production')
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use; the import above is types only
  const { bullmqBackend } = require('./bullmq') as typeof BullmqBackendModule
  const backend = await bullmqBackend({
    connection: tier === 'tcp' ? { tier, client: client as TcpClient } : { tier, client: client as UpstashRedis },
    // On a Redis Cluster BullMQ needs every key of a queue in one slot: a hash-tagged prefix, as its docs say.
    prefix: binding.cluster ? `{${o.prefix}:queues}` : `${o.prefix}:queues`,
    commandTimeoutMs: o.timeoutMs,
    lockMs: o.lockMs,
    events: o.events,
    meter: binding.meter,
    onError: o.onError
  })
  const opened: QueuesBinding = {
    tier,
    backend,
    workers: tier === 'tcp',
    warning: null,
    async checkPersistence () {
      if (tier !== 'tcp') return
      binding.meter(2)
      opened.warning = await persistenceWarning(async (...args) => await (client as TcpClient).call(...args), o.timeoutMs)
      if (opened.warning !== null) o.log.warn({ tier }, `queues: ${opened.warning}`)
    }
  }
  return opened
}

/** The backend of a binding stops: at once on a move (`next`), letting active jobs finish for `drainMs` on close. */
export async function closeQueues (old: QueuesBinding, next: QueuesBinding | null, drainMs: number, log: FastifyBaseLogger): Promise<void> {
  if (next === null) return await old.backend.close(drainMs)
  // A memory queue's jobs were never shared (QUEUES_FALLBACK=memory is for development): it stops here.
  if (old.tier === 'memory') log.warn('queues moved from memory to tcp: jobs still waiting in the in-memory queue (QUEUES_FALLBACK=memory) are dropped')
  await old.backend.close(0)
}

/** The reason a running job is reported failed with when its Redis came back empty. */
export const LOST_ON_RESTART = 'lost: Redis restarted without its data (no persistence) while this job ran; add it again'

/** Redis came back empty: the jobs running here are gone from it. Their watchers are told, once. */
export function abandonRunning (queues: QueuesBinding, tier: string, events: JobEvents, log: FastifyBaseLogger): void {
  const lost = queues.backend.abandonRunning?.() ?? []
  for (const job of lost) events.failed(job, LOST_ON_RESTART, true)
  const which = lost.map((job) => `${job.queue}/${job.id}`)
  log.warn({ tier, jobs: which }, `queues: Redis on ${tier} came back empty: ${lost.length} job(s) running here reported failed${which.length > 0 ? ` (${which.join(', ')})` : ''}; jobs waiting, delayed or scheduled there are lost too`)
}

/** /health's job counts of each queue, or the reason they could not be read. */
export async function countEach (names: string[], count: (name: string) => Promise<JobCounts>, explain: (err: unknown) => string): Promise<Record<string, JobCounts | { error: string }>> {
  const counts: Record<string, JobCounts | { error: string }> = {}
  await Promise.all(names.map(async (name) => {
    try {
      counts[name] = await count(name)
    } catch (err) {
      counts[name] = { error: explain(err) }
    }
  }))
  return counts
}

export interface AnnounceOptions {
  /** The sse channel of a job's events (null: none); may throw (a host's function). */
  channelOf: (job: JobContext) => string | null
  /** sse's publish, when sse runs. */
  publish: () => ((channel: string, data: unknown, opts: { event: string }) => Promise<string>) | null
  warn: (key: string, message: string, err?: unknown) => void
  counters: { completed: number, failed: number }
  /** The publish outlives the job event that caused it. */
  background: (work: Promise<unknown>) => void
}

/** Job events go to the job's sse channel, when sse runs; a failed publish is logged, never thrown. */
export function jobEvents (o: AnnounceOptions): JobEvents {
  function announce (job: JobContext, event: string, data: Record<string, unknown>): void {
    const publish = o.publish()
    if (publish === null) return
    let channel: string | null
    try {
      channel = o.channelOf(job)
    } catch (err) {
      o.warn('queues-channel', `progressChannel threw for queue ${job.queue}`, err)
      return
    }
    if (channel === null) return
    if (!CHANNEL_PATTERN.test(channel)) {
      o.warn('queues-channel', `progressChannel gave an invalid sse channel for queue ${job.queue}; use ${CHANNEL_RULE}`)
      return
    }
    o.background(publish(channel, { id: job.id, queue: job.queue, ...data }, { event }).catch((err: Error) => o.warn('queues-publish', `job ${event} not published to sse`, err)))
  }
  return {
    progress: (job, progress) => announce(job, 'progress', { progress }),
    completed: (job, result) => {
      o.counters.completed++
      announce(job, 'completed', { result: result ?? null })
    },
    failed: (job, reason, final) => {
      if (final) o.counters.failed++
      announce(job, 'failed', { reason, attemptsMade: job.attemptsMade, final })
    }
  }
}
