import type { FeatureStatus } from '../feature'
import type { AddOptions, JobContext, JobCounts, JobInfo, JobOptions, Processor, Repeat, ScheduleInfo } from './backend'

// fastify.queues as its callers see it (plugins/queues.ts implements it and
// exports these types).

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

export interface Queues extends FeatureStatus {
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
