import { CronExpressionParser } from 'cron-parser'
import { backoffDelay, type AddOptions, type JobContext, type JobCounts, type JobEvents, type JobInfo, type JobOptions, type KeepJobs, type QueueBackend, type QueueDefinition, type Repeat, type ScheduleInfo } from './backend'

// QUEUES_FALLBACK=memory: the same API in one process, for local development
// without Redis. Jobs live in this process only: a restart loses every one of
// them, and other instances never see them. Semantics follow BullMQ where a
// caller could notice: ids are '1', '2', ... per queue, a known jobId returns
// the existing job, attempts/backoff/priority/delay and pause behave alike.

interface MemoryJob {
  id: string
  data: unknown
  opts: AddOptions
  state: JobInfo['state']
  progress: JobInfo['progress']
  result: unknown
  failedReason: string | null
  attemptsMade: number
  createdAt: number
  processedAt: number | null
  finishedAt: number | null
  timer?: NodeJS.Timeout
}

interface MemoryQueue {
  definition: QueueDefinition
  worker: boolean
  jobs: Map<string, MemoryJob>
  /** Ready to run, in order (prioritized jobs sorted in). */
  waiting: MemoryJob[]
  finished: { completed: MemoryJob[], failed: MemoryJob[] }
  nextId: number
  active: number
  paused: boolean
  schedules: Map<string, { repeat: Repeat, data: unknown, next: number, timer: NodeJS.Timeout }>
}

/** Data, results and progress go through JSON as they do in Redis: a caller mutating its object later changes nothing here. */
function json<T> (value: T): T {
  return value === undefined ? value : JSON.parse(JSON.stringify(value)) as T
}

function nextRun (repeat: Repeat, from: number): number {
  if (repeat.every !== undefined) return from + repeat.every
  return CronExpressionParser.parse(repeat.cron ?? '', { tz: repeat.tz, currentDate: new Date(from) }).next().getTime()
}

export function memoryBackend (events: JobEvents): QueueBackend {
  const queues = new Map<string, MemoryQueue>()
  let started = false
  let closing = false
  const idle = new Set<() => void>()

  function queueOf (name: string): MemoryQueue {
    const queue = queues.get(name)
    if (queue === undefined) throw new Error(`queue ${name} is not defined`)
    return queue
  }

  function context (q: MemoryQueue, job: MemoryJob): JobContext {
    return {
      id: job.id,
      name: q.definition.name,
      queue: q.definition.name,
      data: json(job.data),
      attemptsMade: job.attemptsMade,
      updateProgress: async (progress) => {
        job.progress = json(progress)
        events.progress(context(q, job), progress)
      }
    }
  }

  function enqueue (q: MemoryQueue, job: MemoryJob): void {
    job.state = job.opts.priority !== undefined ? 'prioritized' : 'waiting'
    if (job.opts.priority === undefined) {
      q.waiting.push(job)
    } else {
      // Unprioritised jobs first (as BullMQ), then by priority, FIFO within one.
      const at = q.waiting.findIndex((other) => other.opts.priority !== undefined && other.opts.priority > (job.opts.priority ?? 0))
      q.waiting.splice(at < 0 ? q.waiting.length : at, 0, job)
    }
    pump(q)
  }

  function later (q: MemoryQueue, job: MemoryJob, ms: number): void {
    job.state = 'delayed'
    job.timer = setTimeout(() => {
      job.timer = undefined
      enqueue(q, job)
    }, ms)
  }

  /** Files a finished job and drops the oldest ones beyond the removeOnComplete / removeOnFail rule. */
  function finish (list: MemoryJob[], job: MemoryJob, rule: KeepJobs | undefined, q: MemoryQueue): void {
    const now = Date.now()
    job.finishedAt = now
    list.push(job)
    if (rule === undefined || rule === false) return
    const count = rule === true ? 0 : typeof rule === 'number' ? rule : rule.count ?? Infinity
    const maxAgeMs = typeof rule === 'object' && 'age' in rule ? rule.age * 1000 : Infinity
    while (list.length > count || (list.length > 0 && now - (list[0].finishedAt ?? now) > maxAgeMs)) {
      const gone = list.shift()
      if (gone !== undefined) q.jobs.delete(gone.id)
    }
  }

  async function run (q: MemoryQueue, job: MemoryJob): Promise<void> {
    q.active++
    job.state = 'active'
    job.processedAt = Date.now()
    const opts: JobOptions = { ...q.definition.defaults, ...job.opts }
    try {
      const result = await q.definition.processor(context(q, job))
      job.attemptsMade++ // as BullMQ: the attempt that succeeded counts too
      job.state = 'completed'
      job.result = json(result) ?? null
      finish(q.finished.completed, job, opts.removeOnComplete, q)
      events.completed(context(q, job), result)
    } catch (err) {
      job.attemptsMade++
      const reason = err instanceof Error ? err.message : String(err)
      const final = job.attemptsMade >= (opts.attempts ?? 1)
      job.failedReason = reason
      if (final) {
        job.state = 'failed'
        finish(q.finished.failed, job, opts.removeOnFail, q)
      } else {
        later(q, job, backoffDelay(opts.backoff, job.attemptsMade))
      }
      events.failed(context(q, job), reason, final)
    } finally {
      q.active--
      for (const resolve of idle) resolve()
      pump(q)
    }
  }

  function pump (q: MemoryQueue): void {
    if (!started || closing || !q.worker || q.paused) return
    while (q.active < q.definition.concurrency && q.waiting.length > 0) {
      const job = q.waiting.shift()
      if (job !== undefined) void run(q, job)
    }
  }

  function addOne (q: MemoryQueue, data: unknown, opts: AddOptions): string {
    if (opts.jobId !== undefined && q.jobs.has(opts.jobId)) return opts.jobId
    const id = opts.jobId ?? String(q.nextId++)
    const job: MemoryJob = { id, data: json(data), opts, state: 'waiting', progress: 0, result: null, failedReason: null, attemptsMade: 0, createdAt: Date.now(), processedAt: null, finishedAt: null }
    q.jobs.set(id, job)
    if (opts.delay !== undefined && opts.delay > 0) later(q, job, opts.delay)
    else enqueue(q, job)
    return id
  }

  function arm (q: MemoryQueue, id: string, repeat: Repeat, data: unknown, next: number): void {
    const timer = setTimeout(() => {
      addOne(q, data, {})
      arm(q, id, repeat, data, nextRun(repeat, Date.now()))
    }, Math.max(0, next - Date.now()))
    q.schedules.set(id, { repeat, data, next, timer })
  }

  function unschedule (q: MemoryQueue, id: string): boolean {
    const existing = q.schedules.get(id)
    if (existing === undefined) return false
    clearTimeout(existing.timer)
    q.schedules.delete(id)
    return true
  }

  return {
    define (definition, worker) {
      queues.set(definition.name, {
        definition,
        worker,
        jobs: new Map(),
        waiting: [],
        finished: { completed: [], failed: [] },
        nextId: 1,
        active: 0,
        paused: false,
        schedules: new Map()
      })
    },

    async add (name, jobs) {
      const q = queueOf(name)
      return jobs.map((j) => addOne(q, j.data, j.opts))
    },

    async getJob (name, id) {
      const q = queueOf(name)
      const job = q.jobs.get(id)
      if (job === undefined) return null
      return {
        id: job.id,
        queue: name,
        name,
        state: job.state,
        data: json(job.data),
        progress: json(job.progress),
        result: json(job.result) ?? null,
        failedReason: job.failedReason,
        attemptsMade: job.attemptsMade,
        createdAt: job.createdAt,
        processedAt: job.processedAt,
        finishedAt: job.finishedAt
      }
    },

    async schedule (name, id, repeat, data) {
      const q = queueOf(name)
      unschedule(q, id) // upsert, as BullMQ's job schedulers
      const next = nextRun(repeat, Date.now())
      arm(q, id, repeat, data, next)
      return { id, ...repeat, next }
    },

    async unschedule (name, id) {
      return unschedule(queueOf(name), id)
    },

    async schedules (name) {
      return [...queueOf(name).schedules].map(([id, s]): ScheduleInfo => ({ id, ...s.repeat, next: s.next }))
    },

    async counts (name) {
      const q = queueOf(name)
      const counts: JobCounts = { waiting: 0, active: 0, delayed: 0, prioritized: 0, completed: 0, failed: 0 }
      for (const job of q.jobs.values()) if (job.state in counts) counts[job.state as keyof JobCounts]++
      return counts
    },

    async pause (name) {
      const q = queueOf(name)
      q.paused = true
    },

    async resume (name) {
      const q = queueOf(name)
      q.paused = false
      pump(q)
    },

    start () {
      started = true
      for (const q of queues.values()) pump(q)
    },

    async close (drainMs) {
      closing = true
      for (const q of queues.values()) {
        for (const id of [...q.schedules.keys()]) unschedule(q, id)
        for (const job of q.jobs.values()) clearTimeout(job.timer)
      }
      const busy = (): boolean => [...queues.values()].some((q) => q.active > 0)
      const deadline = Date.now() + drainMs
      while (busy() && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, deadline - Date.now())
          function done (): void { clearTimeout(timer); idle.delete(done); resolve() }
          idle.add(done)
        })
      }
      queues.clear()
    }
  }
}
