import app from './app'
import { bootFailed, demoRoutesWanted, processFastify, readProcessSettings } from './lib/process-entry'

// Standalone entry: JSON logs, listen on PORT/HOST, graceful close on
// SIGINT/SIGTERM within CLOSE_GRACE_MS, uncaught errors logged once. The demo
// routes are on unless NODE_ENV=production (then DEMO_ROUTES=true mounts them).

async function main (): Promise<void> {
  const settings = readProcessSettings()
  const fastify = processFastify(settings)
  fastify.register(app, { demoRoutes: demoRoutesWanted(settings) })
  try {
    await fastify.listen({ port: settings.PORT, host: settings.HOST })
  } catch (err) {
    bootFailed(fastify, err)
  }
}

void main()
