import type { FastifyInstance, FastifyRequest } from 'fastify'
import { demoUserId } from './events'
import type { JobContext } from '../lib/queues/backend'
import { NotFoundError, UnauthorizedError } from '../lib/errors'

// Demo: POST /jobs/report starts a report job that reports progress in steps
// and answers 202 { id, channel }; GET /jobs/report/:id returns its state,
// progress and result; its progress, completion and failure stream on
// `user:<userId>:jobs:report:<id>` through GET /events/:channel. The user is
// the DEMO-ONLY `x-user-id` header, as for /events.

export interface ReportData { userId: string, steps: number, stepMs: number }
export interface ReportResult { userId: string, rows: number, finishedAt: string }

export const REPORT_QUEUE = 'report'

export function reportChannel (userId: string, jobId: string): string {
  return `user:${userId}:jobs:report:${jobId}`
}

async function runReport (job: JobContext<ReportData>): Promise<ReportResult> {
  const { steps, stepMs } = job.data
  for (let step = 1; step <= steps; step++) {
    await new Promise((resolve) => setTimeout(resolve, stepMs)) // stands in for a slice of real work
    await job.updateProgress({ step, steps, percent: Math.round(step / steps * 100) })
  }
  return { userId: job.data.userId, rows: steps * 100, finishedAt: new Date().toISOString() }
}

export default async function jobRoutes (fastify: FastifyInstance): Promise<void> {
  fastify.queues.define<ReportData, ReportResult>(REPORT_QUEUE, runReport, {
    concurrency: 4,
    attempts: 3,
    backoff: { type: 'exponential', delay: 1000 },
    removeOnComplete: { age: 3600, count: 1000 },
    removeOnFail: { age: 86_400 },
    progressChannel: (_queue, job) => reportChannel((job.data as ReportData).userId, job.id)
  })

  function user (request: FastifyRequest): string {
    const id = demoUserId(request)
    if (id === undefined) throw new UnauthorizedError('send x-user-id (DEMO-ONLY identity: 1-64 letters, digits, _ or -)')
    return id
  }

  fastify.post<{ Body: { steps?: number, stepMs?: number } | null }>('/jobs/report', {
    schema: {
      body: {
        type: ['object', 'null'],
        properties: { steps: { type: 'integer', minimum: 1, maximum: 20 }, stepMs: { type: 'integer', minimum: 0, maximum: 5000 } },
        additionalProperties: false
      }
    }
  }, async (request, reply) => {
    const userId = user(request)
    const { id } = await fastify.queues.add<ReportData>(REPORT_QUEUE, { userId, steps: request.body?.steps ?? 5, stepMs: request.body?.stepMs ?? 500 })
    const channel = reportChannel(userId, id)
    return await reply.code(202).send({ id, channel, events: `/events/${channel}`, status: `/jobs/report/${id}` })
  })

  fastify.get<{ Params: { id: string } }>('/jobs/report/:id', {
    schema: { params: { type: 'object', properties: { id: { type: 'string', minLength: 1, maxLength: 128 } }, required: ['id'] } }
  }, async (request) => {
    const userId = user(request)
    const job = await fastify.queues.getJob<ReportData, ReportResult>(REPORT_QUEUE, request.params.id)
    // Someone else's job is answered like a missing one: ids are guessable.
    if (job === null || job.data.userId !== userId) throw new NotFoundError(`no report job ${request.params.id}`)
    const { id, state, progress, result, failedReason, attemptsMade, createdAt, finishedAt } = job
    return { id, state, progress, result, failedReason, attemptsMade, createdAt, finishedAt }
  })
}
