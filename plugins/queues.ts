import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type * as BullmqBackendModule from '../lib/queues/bullmq'
import type * as MemoryBackendModule from '../lib/queues/memory'
import type { AddOptions, JobContext, JobCounts, JobEvents, JobInfo, JobOptions, Processor, QueueBackend, QueueDefinition, Repeat, ScheduleInfo } from '../lib/queues/backend'
import { parseBooleanVariable, parseChoiceVariable, parseIntegerVariable } from '../lib/config'
import { FeatureUnavailableError, InvalidInputError, NotFoundError } from '../lib/errors'
import { claimFeatureDecorator } from '../lib/decorators'
import { resolvePrefix } from '../lib/prefix'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import { withTimeout } from '../lib/deadline'
import type { FeatureRequirement, Resolution, Tier } from '../lib/resolve-tier'
import { CHANNEL_PATTERN } from '../lib/channels'
import { isCluster, type TcpClient } from '../lib/tiers/tcp'
import { persistenceWarning } from '../lib/queues/persistence'
import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }

export const REST_PRODUCER_NOTE = 'producing only: workers need a TCP Redis; run `npm run worker` with REDIS_URL pointing at the same database'

/** Producers run on tcp or Upstash REST; workers only on tcp (they block on Redis and hold connections). */
export const queuesRequirement: FeatureRequirement = { feature: 'queues', tiers: ['tcp', 'rest'], fallback: 'skip', flag: 'QUEUES_ENABLED', notes: { rest: REST_PRODUCER_NOTE } }

export type ProgressChannel = (queue: string, job: JobContext) => string | null

export interface QueuesPluginOptions {
  /** Key namespace (BullMQ prefix `<prefix>:queues`); overrides QUEUES_PREFIX (default: the name in package.json). */
  prefix?: string
  /** The sse channel a job's progress, completion and failure go to (default `jobs:<queue>:<id>`); null: none. */
  progressChannel?: ProgressChannel
}

export interface DefineOptions extends JobOptions {
  /** Jobs this instance runs at once (default 1). */
  concurrency?: number
  progressChannel?: ProgressChannel
}

export interface QueuesStats { added: number, completed: number, failed: number, redisErrors: number }

export interface Queues {
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
  /** Whether this instance runs workers: QUEUES_WORKERS, and only on tcp (on rest it produces only). */
  readonly workers: boolean
  /** How long close() lets active jobs run before the workers are closed anyway (QUEUES_DRAIN_MS). */
  readonly drainMs: number
  /** Declare a queue and how its jobs run. Producers and workers both define it; only workers run it. */
  define: <Data = unknown, Result = unknown>(name: string, processor: Processor<Data, Result>, opts?: DefineOptions) => void
  add: <Data = unknown>(name: string, data: Data, opts?: AddOptions) => Promise<{ id: string }>
  addBulk: <Data = unknown>(name: string, jobs: ReadonlyArray<{ data: Data, opts?: AddOptions }>) => Promise<Array<{ id: string }>>
  getJob: <Data = unknown, Result = unknown>(name: string, id: string) => Promise<JobInfo<Data, Result> | null>
  /** Create or update the job scheduler `repeat.id` (default: the queue name): idempotent across restarts and instances. */
  schedule: (name: string, repeat: Repeat & { id?: string }, data?: unknown) => Promise<ScheduleInfo>
  unschedule: (name: string, id?: string) => Promise<boolean>
  schedules: (name: string) => Promise<ScheduleInfo[]>
  counts: (name: string) => Promise<JobCounts>
  /** Pause or resume the queue for every worker on every instance. */
  pause: (name: string) => Promise<void>
  resume: (name: string) => Promise<void>
  /** Names of the defined queues. */
  names: () => string[]
  stats: () => QueuesStats
}

declare module 'fastify' {
  interface FastifyInstance {
    queues: Queues
  }
}

const QUEUE_NAME = /^[A-Za-z0-9_.-]{1,64}$/
const JOB_ID = /^[A-Za-z0-9:_.-]{1,128}$/
const MAX_BULK = 10_000

const defaultProgressChannel: ProgressChannel = (queue, job) => `jobs:${queue}:${job.id}`

/** The reason a running job is reported failed with when its Redis came back empty. */
export const LOST_ON_RESTART = 'lost: Redis restarted without its data (no persistence) while this job ran; add it again'

async function queuesPlugin (fastify: FastifyInstance, opts: QueuesPluginOptions): Promise<void> {
  claimFeatureDecorator(fastify, 'queues')
  const { connections } = fastify
  const variable = connections.variable
  const runWorkers = parseBooleanVariable(variable, 'QUEUES_WORKERS', true)
  const drainMs = parseIntegerVariable(variable, 'QUEUES_DRAIN_MS', 5000, 0, 3_600_000)
  const lockMs = parseIntegerVariable(variable, 'QUEUES_LOCK_MS', 20_000, 1000, 3_600_000)
  const timeoutMs = parseIntegerVariable(variable, 'QUEUES_TIMEOUT_MS', connections.commandTimeoutMs, 1, 60_000)
  const fallback = parseChoiceVariable(variable, 'QUEUES_FALLBACK', ['memory', 'skip'] as const) ?? 'skip'
  const production = variable('NODE_ENV') === 'production'
  const prefix = resolvePrefix(opts.prefix, 'QUEUES_PREFIX', variable)
  const log = fastify.log.child({ plugin: 'queues' })
  const warn = rateLimitedWarn(log)

  // An in-process queue loses every job on restart: never let it stand in for Redis in production.
  const refused = fallback === 'memory' && production

  const counters: QueuesStats = { added: 0, completed: 0, failed: 0, redisErrors: 0 }
  const channels = new Map<string, ProgressChannel | null>()

  /** Job events go to the job's sse channel, when sse runs; a failed publish is logged, never thrown. */
  function announce (job: JobContext, event: string, data: Record<string, unknown>): void {
    const sse = fastify.hasDecorator('sse') ? fastify.sse : undefined
    if (sse?.available !== true) return
    let channel: string | null
    try {
      channel = (channels.get(job.queue) ?? opts.progressChannel ?? defaultProgressChannel)(job.queue, job)
    } catch (err) {
      warn('queues-channel', `progressChannel threw for queue ${job.queue}: ${connections.redact(err).message}`)
      return
    }
    if (channel === null) return
    if (!CHANNEL_PATTERN.test(channel)) {
      warn('queues-channel', `progressChannel gave an invalid sse channel for queue ${job.queue}; use 1-128 letters, digits or : _ . -`)
      return
    }
    sse.publish(channel, { id: job.id, queue: job.queue, ...data }, { event }).catch((err: Error) => {
      warn('queues-publish', `job ${event} not published to sse: ${connections.redact(err).message}`)
    })
  }

  const events: JobEvents = {
    progress: (job, progress) => announce(job, 'progress', { progress }),
    completed: (job, result) => {
      counters.completed++
      announce(job, 'completed', { result: result ?? null })
    },
    failed: (job, reason, final) => {
      if (final) counters.failed++
      announce(job, 'failed', { reason, attemptsMade: job.attemptsMade, final })
    }
  }

  /** Every define() call, to apply to a backend made later (the feature promoted when a TCP Redis appears). */
  const definitions = new Map<string, QueueDefinition>()
  let appReady = false

  // Each backend's module (bullmq alone costs a sixth of a cold start) is loaded only when queues run on it.
  async function backendFor (resolution: Resolution): Promise<QueueBackend | null> {
    if (resolution.status !== 'active') return null
    if (resolution.tier === 'memory') {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use; the import above is types only
      const { memoryBackend } = require('../lib/queues/memory') as typeof MemoryBackendModule
      return memoryBackend(events)
    }
    // The shared clients are the libraries' own; connections types them only structurally in public.
    const tcp = connections.tcp as TcpClient | null
    const rest = connections.rest as UpstashRedis | null
    const connection = resolution.tier === 'tcp' && tcp !== null
      ? { tier: 'tcp' as const, client: tcp }
      : resolution.tier === 'rest' && rest !== null ? { tier: 'rest' as const, client: rest } : null
    if (connection === null) return null
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use; the import above is types only
    const { bullmqBackend } = require('../lib/queues/bullmq') as typeof BullmqBackendModule
    return await bullmqBackend({
      connection,
      // On a Redis Cluster BullMQ needs every key of a queue in one slot: a hash-tagged prefix, as its docs say.
      prefix: connection.tier === 'tcp' && isCluster(connection.client) ? `{${prefix}:queues}` : `${prefix}:queues`,
      commandTimeoutMs: timeoutMs,
      lockMs,
      events,
      meter: connections.usage.meter('queues', connection.tier),
      onError: (err) => warn('queues-redis', `queues: ${connections.redact(err).message}`, { tier: 'tcp' })
    })
  }

  interface Binding { tier: Tier | null, reason: string, backend: QueueBackend | null }
  const resolution = connections.resolve({ ...queuesRequirement, fallback: fallback === 'memory' && !production ? 'memory' : 'skip' }, async (next) => {
    const backend = await backendFor(next)
    for (const definition of definitions.values()) backend?.define(definition, runWorkers)
    if (appReady && runWorkers) backend?.start()
    const old = binding
    binding = { tier: next.tier, reason: next.reason, backend }
    void checkPersistence()
    // A memory queue's jobs were never shared (QUEUES_FALLBACK=memory is for development): it stops here.
    if (old.tier === 'memory') log.warn('queues moved from memory to tcp: jobs still waiting in the in-memory queue (QUEUES_FALLBACK=memory) are dropped')
    await old.backend?.close(0)
  })
  if (refused && resolution.status === 'skipped') {
    resolution.reason += '; QUEUES_FALLBACK=memory is refused when NODE_ENV=production (an in-process queue loses jobs on restart): fix REDIS_URL'
  }
  if (resolution.tier === 'memory') log.warn('queues run in memory (QUEUES_FALLBACK=memory): jobs are lost on restart and not shared with other instances; for local development only')
  if (refused && resolution.tier === 'tcp') log.warn('QUEUES_FALLBACK=memory is ignored when NODE_ENV=production')
  let binding: Binding = { tier: resolution.tier, reason: resolution.reason, backend: await backendFor(resolution) }

  function unavailable (why: string): never {
    throw new FeatureUnavailableError('queues', why)
  }

  /** The backend for a defined queue, or a 503 with the reason the feature is off. */
  function use (name: string): QueueBackend {
    if (!channels.has(name)) throw new NotFoundError(`queue ${JSON.stringify(name)} is not defined; call fastify.queues.define(name, processor) at boot, on producers and workers alike`)
    if (binding.backend === null) return unavailable(binding.reason)
    return binding.backend
  }

  /**
   * Redis failures become 503s naming the cause (redacted); the job may or may not have been stored.
   * The caller gets the reason (and the routes log it, rate-limited): no second log line here.
   */
  async function call<T> (fn: () => Promise<T>): Promise<T> {
    try {
      return await withTimeout(fn(), timeoutMs)
    } catch (err) {
      if (binding.tier === 'memory') throw err
      counters.redisErrors++
      return unavailable(`Redis did not answer (${connections.explain(binding.tier, err)}); retry later`)
    }
  }

  function checkAddOptions (o: AddOptions): void {
    const bad = (text: string): never => { throw new InvalidInputError(text) }
    if (o.jobId !== undefined && (!JOB_ID.test(o.jobId) || /^\d+$/.test(o.jobId))) bad('invalid jobId: 1-128 letters, digits or : _ . -, not only digits (those are generated ids)')
    if (o.delay !== undefined && !(Number.isInteger(o.delay) && o.delay >= 0)) bad('invalid delay: an integer number of ms >= 0')
    if (o.priority !== undefined && !(Number.isInteger(o.priority) && o.priority >= 1 && o.priority <= 2_097_152)) bad('invalid priority: an integer from 1 to 2097152')
    checkJobOptions(o, bad)
  }

  const queues: Queues = {
    get available () { return binding.backend !== null },
    get tier () { return binding.tier },
    get reason () { return binding.reason },
    get workers () { return runWorkers && binding.tier !== 'rest' },
    drainMs,

    define (name, processor, options = {}) {
      if (!QUEUE_NAME.test(name)) throw new Error(`invalid queue name ${JSON.stringify(name)}: 1-64 letters, digits or _ . -`)
      if (channels.has(name)) throw new Error(`queue ${name} is already defined`)
      if (typeof processor !== 'function') throw new TypeError(`queue ${name}: the processor must be a function`)
      const { concurrency = 1, progressChannel, ...defaults } = options
      if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`queue ${name}: concurrency must be an integer >= 1`)
      checkJobOptions(defaults, (text) => { throw new Error(`queue ${name}: ${text}`) })
      channels.set(name, progressChannel ?? null)
      const definition: QueueDefinition = { name, processor: processor as Processor, concurrency, defaults }
      definitions.set(name, definition)
      binding.backend?.define(definition, runWorkers)
    },

    async add (name, data, options = {}) {
      const [added] = await queues.addBulk(name, [{ data, opts: options }])
      return added
    },

    async addBulk (name, jobs) {
      const b = use(name)
      const given: unknown = jobs // callers from JavaScript may pass anything
      if (!Array.isArray(given) || jobs.length === 0 || jobs.length > MAX_BULK) throw new InvalidInputError(`addBulk takes 1-${MAX_BULK} jobs`)
      for (const job of jobs) {
        if (job.data === undefined) throw new InvalidInputError('job data is required (use null for none)')
        checkAddOptions(job.opts ?? {})
      }
      const ids = await call(async () => await b.add(name, jobs.map((j) => ({ data: j.data, opts: j.opts ?? {} }))))
      counters.added += ids.length
      return ids.map((id) => ({ id }))
    },

    async getJob<Data, Result> (name: string, id: string) {
      const b = use(name)
      if (typeof id !== 'string' || !JOB_ID.test(id)) return null
      return await call(async () => await b.getJob(name, id)) as JobInfo<Data, Result> | null
    },

    async schedule (name, repeat, data = null) {
      const b = use(name)
      const { id = name, ...rest } = repeat
      const every = rest.every !== undefined
      if (every === (rest.cron !== undefined)) throw new InvalidInputError('a schedule takes either `every` (ms) or `cron`')
      if (every && !(Number.isInteger(rest.every) && (rest.every ?? 0) >= 1)) throw new InvalidInputError('invalid every: an integer number of ms >= 1')
      if (!JOB_ID.test(id)) throw new InvalidInputError('invalid schedule id: 1-128 letters, digits or : _ . -')
      return await call(async () => await b.schedule(name, id, rest, data))
    },

    async unschedule (name, id = name) {
      const b = use(name)
      return await call(async () => await b.unschedule(name, id))
    },

    async schedules (name) {
      const b = use(name)
      return await call(async () => await b.schedules(name))
    },

    async counts (name) {
      const b = use(name)
      return await call(async () => await b.counts(name))
    },

    async pause (name) {
      const b = use(name)
      await call(async () => await b.pause(name))
    },

    async resume (name) {
      const b = use(name)
      await call(async () => await b.resume(name))
    },

    names: () => [...channels.keys()],
    stats: () => ({ ...counters })
  }

  /** Set when the tcp Redis of the queues keeps no copy of its data: at boot, in /health. */
  let persistence: string | null = null
  async function checkPersistence (): Promise<void> {
    const tcp = connections.tcp
    if (binding.tier !== 'tcp' || tcp === null) return
    connections.usage.meter('queues', 'tcp')(2)
    persistence = await persistenceWarning(async (...args) => await tcp.call(...args), timeoutMs)
    if (persistence !== null) log.warn({ tier: 'tcp' }, `queues: ${persistence}`)
  }

  // Redis came back empty: the jobs running here are gone from it. Their watchers are told, once.
  const offRestarted = connections.on('restarted', ({ tier }) => {
    if (binding.tier !== tier) return
    const lost = binding.backend?.abandonRunning?.() ?? []
    for (const job of lost) events.failed(job, LOST_ON_RESTART, true)
    const which = lost.map((job) => `${job.queue}/${job.id}`)
    log.warn({ tier, jobs: which }, `queues: Redis on ${tier} came back empty: ${lost.length} job(s) running here reported failed${which.length > 0 ? ` (${which.join(', ')})` : ''}; jobs waiting, delayed or scheduled there are lost too`)
  })

  connections.describe('queues', async () => {
    const counts: Record<string, JobCounts | { error: string }> = {}
    await Promise.all(queues.names().map(async (name) => {
      try {
        counts[name] = await queues.counts(name)
      } catch (err) {
        counts[name] = { error: connections.explain(binding.tier, err) }
      }
    }))
    return { workers: queues.workers, stats: queues.stats(), counts, ...(persistence !== null ? { warning: persistence } : {}) }
  })
  fastify.decorate('queues', queues)
  // Workers start once the app is ready: every processor is defined and every plugin it may use is loaded.
  fastify.addHook('onReady', async () => {
    appReady = true
    if (runWorkers) binding.backend?.start()
    await checkPersistence()
  })
  fastify.addHook('onClose', async () => {
    offRestarted()
    await binding.backend?.close(drainMs)
  })
}

function checkJobOptions (o: JobOptions, bad: (text: string) => never): void {
  if (o.attempts !== undefined && !(Number.isInteger(o.attempts) && o.attempts >= 1)) bad('invalid attempts: an integer >= 1')
  const backoff = o.backoff
  if (backoff !== undefined) {
    const delay = typeof backoff === 'number' ? backoff : backoff.delay
    if (!(Number.isInteger(delay) && delay >= 0) || (typeof backoff === 'object' && !['fixed', 'exponential'].includes(backoff.type))) bad('invalid backoff: ms, or { type: fixed | exponential, delay: ms }')
  }
}

export default fp(queuesPlugin, { name: 'queues', fastify: '5.x', dependencies: ['connections'] })
