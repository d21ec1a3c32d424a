import type { JobInfo, QueueBackend, QueueDefinition } from '../lib/queues/backend'
import type { DefineOptions, ProgressChannel, Queues, QueuesPluginOptions, QueuesStats } from '../lib/queues/api'
import { parseBooleanVariable, parseChoiceVariable, parseIntegerVariable } from '../lib/config'
import { DefineError, NotFoundError } from '../lib/errors'
import { defineFeature, type FeatureApi } from '../lib/feature'
import type { FeatureRequirement } from '../lib/resolve-tier'
import { abandonRunning, closeQueues, countEach, jobEvents, LOST_ON_RESTART, openQueues, type QueuesBinding } from '../lib/queues/binding'
import { checkDefinition, checkJobs, checkRepeat, JOB_ID } from '../lib/queues/validation'

export const REST_PRODUCER_NOTE = 'producing only: workers need a TCP Redis; run `npm run worker` with REDIS_URL pointing at the same database'

/** Producers run on tcp or Upstash REST; workers only on tcp (they block on Redis and hold connections). */
export const queuesRequirement: FeatureRequirement = { feature: 'queues', tiers: ['tcp', 'rest'], fallback: 'skip', flag: 'QUEUES_ENABLED', notes: { rest: REST_PRODUCER_NOTE } }

export type { ProgressChannel, QueuesPluginOptions, DefineOptions, QueuesStats, Queues }

declare module 'fastify' {
  interface FastifyInstance {
    queues: Queues
  }
}

const defaultProgressChannel: ProgressChannel = (queue, job) => `jobs:${queue}:${job.id}`

export { LOST_ON_RESTART }

/** An in-process queue loses every job on restart: never let it stand in for Redis in production. */
function requirementFor (fallback: 'memory' | 'skip', production: boolean): FeatureRequirement {
  const refused = fallback === 'memory' && production ? { memoryRefused: 'QUEUES_FALLBACK=memory is refused when NODE_ENV=production (an in-process queue loses jobs on restart): fix REDIS_URL' } : {}
  return { ...queuesRequirement, fallback, ...refused }
}

export default defineFeature<QueuesPluginOptions, QueuesBinding>({
  name: 'queues',
  setup (feature, opts) {
    const { connections, log, variable } = feature
    const runWorkers = parseBooleanVariable(variable, 'QUEUES_WORKERS', true)
    const drainMs = parseIntegerVariable(variable, 'QUEUES_DRAIN_MS', 5000, 0, 3_600_000)
    const lockMs = parseIntegerVariable(variable, 'QUEUES_LOCK_MS', 20_000, 1000, 3_600_000)
    const timeoutMs = parseIntegerVariable(variable, 'QUEUES_TIMEOUT_MS', connections.commandTimeoutMs, 1, 60_000)
    const requirement = requirementFor(parseChoiceVariable(variable, 'QUEUES_FALLBACK', ['memory', 'skip'] as const) ?? 'skip', variable('NODE_ENV') === 'production')
    const prefix = feature.prefix(opts.prefix)
    const warn = (key: string, message: string, err?: unknown): void => feature.warn(key, err === undefined ? message : `${message}: ${connections.redact(err).message}`)

    const counters: QueuesStats = { added: 0, completed: 0, failed: 0, redisErrors: 0 }
    const channels = new Map<string, ProgressChannel | null>()
    const events = jobEvents({
      channelOf: (job) => (channels.get(job.queue) ?? opts.progressChannel ?? defaultProgressChannel)(job.queue, job),
      publish: () => feature.fastify.hasDecorator('sse') && feature.fastify.sse.available ? feature.fastify.sse.publish : null,
      warn,
      counters,
      background: feature.background
    })
    /** Every define() call, to apply to a backend made later. */
    const definitions = new Map<string, QueueDefinition>()
    let appReady = false

    /** A defined queue whose feature runs, else 404 or 503 with the reason. */
    function use (name: string): void {
      if (!channels.has(name)) throw new NotFoundError(`queue ${JSON.stringify(name)} is not defined; call fastify.queues.define(name, processor) at boot, on producers and workers alike`)
      feature.use()
    }
    /** Redis failures become 503s naming the cause (redacted); the job may or may not have been stored. */
    async function call<T> (name: string, fn: (b: QueueBackend) => Promise<T>): Promise<T> {
      use(name)
      return await feature.guard('answer', async ({ backend }) => await fn(backend), timeoutMs)
    }

    const api: FeatureApi<Queues> = {
      get workers () { return runWorkers && (feature.store?.workers ?? true) },
      drainMs,
      define (name, processor, options = {}) {
        const { concurrency = 1, progressChannel, ...defaults } = options
        if (channels.has(name)) throw new DefineError(`queue ${name} is already defined`)
        const definition = checkDefinition(name, processor, concurrency, defaults)
        channels.set(name, progressChannel ?? null)
        definitions.set(name, definition)
        feature.store?.backend.define(definition, runWorkers)
      },
      add: async (name, data, options = {}) => (await api.addBulk(name, [{ data, opts: options }]))[0],
      async addBulk (name, jobs) {
        use(name)
        checkJobs(jobs)
        const ids = await call(name, async (b) => await b.add(name, jobs.map((j) => ({ data: j.data, opts: j.opts ?? {} }))))
        counters.added += ids.length
        return ids.map((id) => ({ id }))
      },
      async getJob<Data, Result> (name: string, id: string) {
        use(name)
        if (typeof id !== 'string' || !JOB_ID.test(id)) return null
        return await call(name, async (b) => await b.getJob(name, id)) as JobInfo<Data, Result> | null
      },
      async schedule (name, repeat, data = null) {
        use(name)
        const { id = name, ...rest } = repeat
        checkRepeat(rest, id)
        return await call(name, async (b) => await b.schedule(name, id, rest, data))
      },
      unschedule: async (name, id = name) => await call(name, async (b) => await b.unschedule(name, id)),
      schedules: async (name) => await call(name, async (b) => await b.schedules(name)),
      counts: async (name) => await call(name, async (b) => await b.counts(name)),
      pause: async (name) => await call(name, async (b) => await b.pause(name)),
      resume: async (name) => await call(name, async (b) => await b.resume(name)),
      names: () => [...channels.keys()],
      stats: () => ({ ...counters })
    }

    feature.onRestarted((tier) => { if (feature.store !== null) abandonRunning(feature.store, tier, events, log) })
    // Workers start once the app is ready: every processor is defined and every plugin it may use is loaded.
    feature.fastify.addHook('onReady', async () => {
      appReady = true
      if (runWorkers) feature.store?.backend.start()
      await feature.store?.checkPersistence()
    })

    return {
      requirement,
      timeoutMs,
      // A backend made later (the feature promoted when a TCP Redis appears) gets every queue defined so far.
      open: async (binding) => await openQueues(binding, { prefix, timeoutMs, lockMs, events, log, memoryRefused: requirement.memoryRefused !== undefined, definitions: [...definitions.values()], workers: runWorkers, started: appReady, onError: (err) => warn('queues-redis', 'queues', err) }),
      async close (old, next) {
        if (next !== null) void next.checkPersistence()
        await closeQueues(old, next, drainMs, log)
      },
      onTierError: () => { counters.redisErrors++ },
      async describe () {
        const counts = await countEach(api.names(), api.counts, (err) => connections.explain(feature.tier, err))
        const warning = feature.store?.warning ?? null
        return { workers: api.workers, stats: api.stats(), counts, ...(warning !== null ? { warning } : {}) }
      },
      api
    }
  }
})
