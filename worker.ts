import app from './app'
import { bootFailed, demoRoutesWanted, processFastify, readProcessSettings } from './lib/process-entry'

// `npm run worker`: the queue workers without the HTTP server. The app is
// booted as server.ts boots it (same env, same queue definitions) but never
// listens; QUEUES_WORKERS is forced on. On SIGTERM active jobs get
// QUEUES_DRAIN_MS to finish (keep it below CLOSE_GRACE_MS). A worker whose
// queues are skipped, that only has Upstash REST (producing only), or that defines none, has nothing to do:
// it says why and exits 1.

async function main (): Promise<void> {
  const settings = readProcessSettings()
  const fastify = processFastify(settings)
  fastify.register(app, { demoRoutes: demoRoutesWanted(settings), env: { QUEUES_WORKERS: true } })
  try {
    await fastify.ready()
  } catch (err) {
    bootFailed(fastify, err)
  }
  if (!fastify.queues.available || !fastify.queues.workers) {
    const why = fastify.queues.available ? `queues run on ${fastify.queues.tier ?? '?'}, where they only produce (${fastify.queues.reason})` : fastify.queues.reason
    fastify.log.fatal({ reason: fastify.queues.reason }, `queues are not available, this worker has nothing to do: ${why}`)
    await fastify.close()
    process.exit(1)
  }
  if (fastify.queues.names().length === 0) {
    fastify.log.fatal('no queue is defined, this worker has nothing to do: the demo `report` queue is defined with the demo routes (DEMO_ROUTES=true)')
    await fastify.close()
    process.exit(1)
  }
  fastify.log.info({ queues: fastify.queues.names() }, `worker running: ${fastify.queues.names().join(', ')} on ${fastify.queues.tier ?? '?'}`)
}

void main()
