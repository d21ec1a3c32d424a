import { Queue, Worker, type Job } from 'bullmq'
import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import { closeTcp, duplicateTcp, meterTcp, type TcpClient } from '../tiers/tcp-client'
import { isReconnecting } from '../tiers/tcp-reconnect'
import { bullmqScriptCost } from './costs'
import { RestBullmqClient } from './rest-client'
import type { Meter } from '../redis-commands'
import { settledWithin, withTimeout } from '../deadline'
import type { JobContext, JobCounts, JobInfo, QueueBackend, QueueDefinition, JobEvents, ScheduleInfo } from './backend'

// BullMQ on the tcp tier, with the connections BullMQ requires and none that
// it would make up: producers share one connection that fails fast (offline
// queue off, bounded retries, command timeout), so `add` during an outage
// rejects instead of hanging; workers get connections with
// `maxRetriesPerRequest: null` and no command timeout, since their blocking
// fetch must be allowed to wait and must never be given up on. Over Upstash
// REST the same queues only produce (and read): BullMQ's client contract is
// implemented over HTTP by rest-client.ts, and workers run on a TCP Redis.

export interface BullmqSettings {
  /**
   * tcp: the app's shared tcp client, whose options (host, auth, TLS, backoff) are the base of
   * every queue connection; rest: the REST client, for producing only (no workers).
   */
  connection: { tier: 'tcp', client: TcpClient } | { tier: 'rest', client: UpstashRedis }
  /** Told of every request BullMQ sends, with the commands it is billed (its scripts' own included). */
  meter: Meter
  /** Key prefix; BullMQ's own default is `bull`. */
  prefix: string
  commandTimeoutMs: number
  /**
   * A job's lock (QUEUES_LOCK_MS), renewed every half of it while the job runs. A job whose
   * worker died or was cut off at shutdown is found by the stalled check, which runs every
   * half lock: it is back in the queue at most 1.5 locks after its worker stopped.
   */
  lockMs: number
  events: JobEvents
  onError: (err: Error) => void
}

const COUNTED = ['waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed'] as const

function context (queue: string, job: Job): JobContext {
  return {
    id: job.id ?? '',
    name: job.name,
    queue,
    data: job.data as unknown,
    attemptsMade: job.attemptsMade,
    updateProgress: async (progress) => await job.updateProgress(progress)
  }
}

/** Resolves once the producer connection is up (or has failed within the command timeout: it keeps reconnecting). */
export async function bullmqBackend (settings: BullmqSettings): Promise<QueueBackend> {
  const { producer, workerConnection } = settings.connection.tier === 'tcp'
    ? await tcpConnections(settings.connection.client, settings)
    : { producer: new RestBullmqClient(settings.connection.client, settings.meter), workerConnection: null }
  const queues = new Map<string, Queue>()
  const workers = new Map<string, Worker>()
  let started = false
  // The jobs the workers here are running, by the Job object BullMQ hands to the processor and to
  // every event of that run: ids start again at 1 on an empty Redis, objects do not repeat.
  const running = new Map<Job, JobContext>()
  const abandoned = new WeakSet<Job>()

  /** The queue, if its commands can be sent now: one sent while disconnected would fail anyway, so fail here with the reason and send nothing. */
  function ready (name: string): Queue {
    const queue = queues.get(name)
    if (queue === undefined) throw new Error(`queue ${name} is not defined`)
    // A connection the server closed while idle is reconnecting: its commands wait for it (tcp-reconnect.ts).
    if (producer.status !== 'ready' && !isReconnecting(producer)) throw new Error(`the ${settings.connection.tier} Redis connection is ${producer.status === 'wait' || producer.status === 'connecting' ? 'not connected yet' : 'down'}`)
    return queue
  }

  const defaults = new Map<string, QueueDefinition['defaults']>()
  function openQueue (name: string): Queue {
    const queue = new Queue(name, { connection: producer, prefix: settings.prefix, defaultJobOptions: defaults.get(name) })
    queue.on('error', settings.onError)
    queues.set(name, queue)
    return queue
  }

  /**
   * The queue, set up again when its set-up failed: BullMQ checks the server's version once, when
   * the queue is made, and keeps a failure of that check for every later call (a Redis that did
   * not answer it in time, as when the process was frozen while it booted, would refuse every
   * add until a restart).
   */
  const settingUp = new Map<string, Promise<Queue>>()
  async function usable (name: string): Promise<Queue> {
    const queue = ready(name)
    try {
      await queue.waitUntilReady()
      return queue
    } catch {
      // Concurrent calls share one new set-up: one version check, one Queue kept.
      let fresh = settingUp.get(name)
      if (fresh === undefined) {
        if (queues.get(name) === queue) {
          void queue.close().catch(() => {}) // its connection is the shared producer, which stays open
          openQueue(name)
        }
        const opened = ready(name)
        fresh = opened.waitUntilReady().then(() => opened).finally(() => settingUp.delete(name))
        settingUp.set(name, fresh)
      }
      return await fresh
    }
  }

  /** Whether the job's end is to be reported: not when it was abandoned. */
  function finished (job: Job): boolean {
    running.delete(job)
    return !abandoned.has(job)
  }

  function startWorker (worker: Worker): void {
    worker.run().catch(settings.onError)
  }

  async function info (queue: Queue, id: string): Promise<JobInfo | null> {
    // State first, then the job: the data read second is at least as new as the state, so a
    // 'completed' job always comes with its result.
    const state = await queue.getJobState(id)
    const job = await queue.getJob(id)
    if (job === undefined) return null
    return {
      id: job.id ?? '',
      queue: queue.name,
      name: job.name,
      state,
      data: job.data as unknown,
      progress: job.progress as JobInfo['progress'],
      result: job.returnvalue ?? null,
      failedReason: job.failedReason ?? null,
      attemptsMade: job.attemptsMade,
      createdAt: job.timestamp,
      processedAt: job.processedOn ?? null,
      finishedAt: job.finishedOn ?? null
    }
  }

  return {
    define ({ name, processor, concurrency, defaults: jobDefaults }, worker) {
      defaults.set(name, jobDefaults)
      openQueue(name)
      if (!worker || workerConnection === null) return
      const w = new Worker(name, async (job: Job) => await processor(context(name, job)), {
        connection: workerConnection,
        prefix: settings.prefix,
        concurrency,
        autorun: false,
        lockDuration: settings.lockMs,
        stalledInterval: Math.round(settings.lockMs / 2),
        // After a lost connection the worker loop waits this long before it fetches again (BullMQ default 15 s).
        runRetryDelay: 1000
      })
      w.on('error', settings.onError)
      w.on('active', (job) => { running.set(job, context(name, job)) })
      w.on('progress', (job, progress) => {
        if (!abandoned.has(job)) settings.events.progress(context(name, job), progress as JobInfo['progress'])
      })
      w.on('completed', (job, result) => {
        if (finished(job)) settings.events.completed(context(name, job), result)
      })
      w.on('failed', (job, err) => {
        if (job === undefined || !finished(job)) return
        const attempts = job.opts.attempts ?? 1
        settings.events.failed(context(name, job), err.message, job.attemptsMade >= attempts)
      })
      workers.set(name, w)
      if (started) startWorker(w)
    },

    async add (name, jobs) {
      const queue = await usable(name)
      if (jobs.length === 1) {
        const job = await queue.add(name, jobs[0].data, jobs[0].opts)
        return [job.id ?? '']
      }
      const added = await queue.addBulk(jobs.map((j) => ({ name, data: j.data, opts: j.opts })))
      return added.map((job) => job.id ?? '')
    },

    async getJob (name, id) {
      const queue = await usable(name)
      return await info(queue, id)
    },

    async schedule (name, id, repeat, data) {
      const queue = await usable(name)
      const job = await queue.upsertJobScheduler(id, { every: repeat.every, pattern: repeat.cron, tz: repeat.tz }, { name, data })
      return { id, ...repeat, next: job !== undefined ? job.timestamp + (job.delay ?? 0) : null }
    },

    async unschedule (name, id) {
      const queue = await usable(name)
      return await queue.removeJobScheduler(id)
    },

    async schedules (name) {
      const queue = await usable(name)
      const list = await queue.getJobSchedulers()
      return list.map((s): ScheduleInfo => ({
        id: s.id ?? s.key,
        ...(s.every !== undefined ? { every: Number(s.every) } : {}),
        ...(s.pattern !== undefined && s.pattern !== null ? { cron: s.pattern } : {}),
        ...(s.tz !== undefined && s.tz !== null ? { tz: s.tz } : {}),
        next: s.next !== undefined ? Number(s.next) : null
      }))
    },

    async counts (name) {
      const queue = await usable(name)
      const counts = await queue.getJobCounts(...COUNTED)
      return Object.fromEntries(COUNTED.map((k) => [k, counts[k] ?? 0])) as unknown as JobCounts
    },

    async pause (name) {
      const queue = await usable(name)
      await queue.pause()
    },

    async resume (name) {
      const queue = await usable(name)
      await queue.resume()
    },

    abandonRunning () {
      const jobs = [...running.values()]
      for (const job of running.keys()) abandoned.add(job)
      running.clear()
      return jobs
    },

    start () {
      if (started) return
      started = true
      for (const worker of workers.values()) startWorker(worker)
    },

    async close (drainMs) {
      // pause() stops fetching and waits for the active jobs; they get drainMs. Then close(true):
      // it does not wait for jobs (a close() without force would, and a later close(true) only
      // joins it). A job cut off returns to the queue when its lock expires and runs again.
      const all = [...workers.values()]
      const pausing = all.map(async (w) => { await w.pause().catch(() => {}) })
      await settledWithin(Promise.all(pausing), drainMs)
      await Promise.all(all.map(async (w) => await forceClose(w, settings.commandTimeoutMs)))
      // A pause() that outlived the drain reconnects its worker's blocking connection once the
      // last job ends, after close(true) has closed it, with no listener left: close it again then.
      // An idle worker's pause ends within a round trip: wait for that, not for cut-off jobs.
      const reclose = all.map(async (w, i) => { await pausing[i]; await w.disconnect().catch(() => {}) })
      await settledWithin(Promise.all(reclose), settings.commandTimeoutMs)
      await Promise.all([...queues.values()].map(async (q) => await q.close().catch(() => {})))
      if (producer instanceof RestBullmqClient) producer.disconnect()
      else await closeTcp(producer, settings.commandTimeoutMs)
      if (workerConnection !== null) await closeTcp(workerConnection, settings.commandTimeoutMs)
      workers.clear()
      queues.clear()
    }
  }
}

/**
 * The producers' shared connection (fails fast) and the template of the workers' own (blocking,
 * patient), which BullMQ duplicates for each worker; every one of them is metered.
 */
async function tcpConnections (tcp: TcpClient, settings: BullmqSettings): Promise<{ producer: TcpClient, workerConnection: TcpClient }> {
  const producer = meterTcp(duplicateTcp(tcp, 'redis-tiers-queues'), settings.meter, bullmqScriptCost)
  producer.on('error', settings.onError)
  await withTimeout(producer.connect(), settings.commandTimeoutMs).catch(() => {}) // reported through `error`
  // Never connected itself (lazy): BullMQ duplicates it for each worker's connections, metered too.
  // BullMQ's workers rely on ioredis resending their blocking fetch after a reconnect.
  const patient = { maxRetriesPerRequest: null, enableOfflineQueue: true, commandTimeout: undefined, autoResendUnfulfilledCommands: true }
  const workerConnection = meterTcp(duplicateTcp(tcp, 'redis-tiers-worker', patient), settings.meter, bullmqScriptCost)
  workerConnection.on('error', settings.onError)
  return { producer, workerConnection }
}

/** close(true) gives up on active jobs; if even that waits on a Redis that is away, cut the sockets. */
async function forceClose (worker: Worker, ms: number): Promise<void> {
  if (!await settledWithin(worker.close(true), ms)) await worker.disconnect().catch(() => {})
}
