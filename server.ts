import app from './app'
import { bootFailed, processFastify, readProcessSettings } from './lib/process-entry'

// Standalone entry: JSON logs, listen on PORT/HOST, graceful close on
// SIGINT/SIGTERM within CLOSE_GRACE_MS, uncaught errors logged once.

async function main (): Promise<void> {
  const settings = readProcessSettings()
  const fastify = processFastify(settings)
  fastify.register(app)
  try {
    await fastify.listen({ port: settings.PORT, host: settings.HOST })
  } catch (err) {
    bootFailed(fastify, err)
  }
}

void main()
