// The contract behind fastify.queues: BullMQ on tcp (lib/queues/bullmq.ts), an
// in-process queue for local development (lib/queues/memory.ts). The plugin
// validates input, turns failures into 503s and publishes job events to sse;
// a backend only stores and runs jobs.

export type JobProgress = number | Record<string, unknown>

/** What a processor sees of a job, on every backend. */
export interface JobContext<Data = unknown> {
  readonly id: string
  readonly name: string
  readonly queue: string
  readonly data: Data
  /** Attempts finished so far: while a processor runs, the ones that failed before it; in events, this one included. */
  readonly attemptsMade: number
  updateProgress: (progress: JobProgress) => Promise<void>
}

export type Processor<Data = unknown, Result = unknown> = (job: JobContext<Data>) => Promise<Result>

/** true removes a finished job at once, false keeps all, a number keeps that many; `age` is in seconds. */
export type KeepJobs = boolean | number | { count: number } | { age: number, count?: number }

export type Backoff = number | { type: 'fixed' | 'exponential', delay: number }

export interface JobOptions {
  /** Tries in all, first one included (default 1). */
  attempts?: number
  /** Wait before a retry: ms, or fixed / exponential from `delay` ms. */
  backoff?: Backoff
  removeOnComplete?: KeepJobs
  removeOnFail?: KeepJobs
}

export interface AddOptions extends JobOptions {
  /** Your own id: adding a job whose id exists returns the existing job instead of a second one. */
  jobId?: string
  /** Run no earlier than this many ms from now. */
  delay?: number
  /** 1 (highest) .. 2 097 152; jobs without a priority run first. */
  priority?: number
}

export type JobState = 'waiting' | 'waiting-children' | 'active' | 'delayed' | 'prioritized' | 'completed' | 'failed' | 'unknown'

export interface JobInfo<Data = unknown, Result = unknown> {
  id: string
  queue: string
  name: string
  state: JobState
  data: Data
  progress: JobProgress
  result: Result | null
  failedReason: string | null
  attemptsMade: number
  createdAt: number
  processedAt: number | null
  finishedAt: number | null
}

export interface JobCounts {
  waiting: number
  active: number
  delayed: number
  prioritized: number
  completed: number
  failed: number
}

/** Either `every` ms or a `cron` pattern (with an optional IANA time zone). */
export interface Repeat {
  every?: number
  cron?: string
  tz?: string
}

export interface ScheduleInfo extends Repeat {
  id: string
  /** When the next job is due (ms since epoch), if known. */
  next: number | null
}

/** Worker-side events, reported by the backend that runs the job. */
export interface JobEvents {
  progress: (job: JobContext, progress: JobProgress) => void
  completed: (job: JobContext, result: unknown) => void
  /** `final`: no attempt is left; otherwise the job will be retried. */
  failed: (job: JobContext, reason: string, final: boolean) => void
}

export interface QueueDefinition {
  name: string
  processor: Processor
  concurrency: number
  defaults: JobOptions
}

export interface QueueBackend {
  /** Create the queue (and, when `worker`, its worker; it starts on start()). */
  define: (definition: QueueDefinition, worker: boolean) => void
  add: (queue: string, jobs: ReadonlyArray<{ data: unknown, opts: AddOptions }>) => Promise<string[]>
  getJob: (queue: string, id: string) => Promise<JobInfo | null>
  schedule: (queue: string, id: string, repeat: Repeat, data: unknown) => Promise<ScheduleInfo>
  unschedule: (queue: string, id: string) => Promise<boolean>
  schedules: (queue: string) => Promise<ScheduleInfo[]>
  counts: (queue: string) => Promise<JobCounts>
  pause: (queue: string) => Promise<void>
  resume: (queue: string) => Promise<void>
  /**
   * The jobs this instance's workers are running, given up: the Redis that held them came back
   * empty. Nothing more is reported of them (their processors may still run, against keys that are gone).
   */
  abandonRunning?: () => JobContext[]
  /** Start the workers (the app is ready). */
  start: () => void
  /** Let active jobs finish for up to `drainMs`, then stop everything. */
  close: (drainMs: number) => Promise<void>
}

/** Retry delay before attempt `attemptsMade + 1`, as BullMQ computes it. */
export function backoffDelay (backoff: Backoff | undefined, attemptsMade: number): number {
  if (backoff === undefined) return 0
  if (typeof backoff === 'number') return backoff
  return backoff.type === 'fixed' ? backoff.delay : Math.round(2 ** (attemptsMade - 1) * backoff.delay)
}
