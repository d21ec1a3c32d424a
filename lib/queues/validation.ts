import { DefineError, InvalidInputError } from '../errors'
import type { AddOptions, JobOptions, Processor, QueueDefinition, Repeat } from './backend'

// What fastify.queues accepts: queue names, job ids and options, checked
// before anything is sent, so a caller's mistake is our 400 (a definition's
// our boot error) and never a BullMQ TypeError.

export const JOB_ID = /^[A-Za-z0-9:_.-]{1,128}$/
const QUEUE_NAME = /^[A-Za-z0-9_.-]{1,64}$/
const MAX_BULK = 10_000

/** A queue definition, checked; throws DefineError saying what to change. */
export function checkDefinition (name: string, processor: unknown, concurrency: number, defaults: JobOptions): QueueDefinition {
  if (!QUEUE_NAME.test(name)) throw new DefineError(`invalid queue name ${JSON.stringify(name)}: 1-64 letters, digits or _ . -`)
  if (typeof processor !== 'function') throw new DefineError(`queue ${name}: the processor must be a function`)
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new DefineError(`queue ${name}: concurrency must be an integer >= 1`)
  checkJobOptions(defaults, (text) => { throw new DefineError(`queue ${name}: ${text}`) })
  return { name, processor: processor as Processor, concurrency, defaults }
}

/** The jobs of one addBulk call (from JavaScript, anything may come). */
export function checkJobs (jobs: unknown): void {
  if (!Array.isArray(jobs) || jobs.length === 0 || jobs.length > MAX_BULK) throw new InvalidInputError(`addBulk takes 1-${MAX_BULK} jobs`)
  for (const job of jobs as Array<{ data: unknown, opts?: AddOptions }>) {
    if (job.data === undefined) throw new InvalidInputError('job data is required (use null for none)')
    checkAddOptions(job.opts ?? {})
  }
}

function checkAddOptions (o: AddOptions): void {
  const bad = (text: string): never => { throw new InvalidInputError(text) }
  if (o.jobId !== undefined && (!JOB_ID.test(o.jobId) || /^\d+$/.test(o.jobId))) bad('invalid jobId: 1-128 letters, digits or : _ . -, not only digits (those are generated ids)')
  if (o.delay !== undefined && !(Number.isInteger(o.delay) && o.delay >= 0)) bad('invalid delay: an integer number of ms >= 0')
  if (o.priority !== undefined && !(Number.isInteger(o.priority) && o.priority >= 1 && o.priority <= 2_097_152)) bad('invalid priority: an integer from 1 to 2097152')
  checkJobOptions(o, bad)
}

export function checkRepeat (repeat: Repeat, id: string): void {
  const every = repeat.every !== undefined
  if (every === (repeat.cron !== undefined)) throw new InvalidInputError('a schedule takes either `every` (ms) or `cron`')
  if (every && !(Number.isInteger(repeat.every) && (repeat.every ?? 0) >= 1)) throw new InvalidInputError('invalid every: an integer number of ms >= 1')
  if (!JOB_ID.test(id)) throw new InvalidInputError('invalid schedule id: 1-128 letters, digits or : _ . -')
}

function checkJobOptions (o: JobOptions, bad: (text: string) => never): void {
  if (o.attempts !== undefined && !(Number.isInteger(o.attempts) && o.attempts >= 1)) bad('invalid attempts: an integer >= 1')
  const backoff = o.backoff
  if (backoff !== undefined) {
    const delay = typeof backoff === 'number' ? backoff : backoff.delay
    if (!(Number.isInteger(delay) && delay >= 0) || (typeof backoff === 'object' && !['fixed', 'exponential'].includes(backoff.type))) bad('invalid backoff: ms, or { type: fixed | exponential, delay: ms }')
  }
}
