import Fastify from 'fastify'
import closeWithGrace from 'close-with-grace'
import envSchema from 'env-schema'
import app from './app'

// Standalone entry: JSON logs, listen on PORT/HOST, graceful close on
// SIGINT/SIGTERM. close-with-grace bounds the shutdown (a hung close must not
// keep a PaaS deploy waiting) and logs uncaught errors once.

interface ServerSettings { PORT: number, HOST: string, LOG_LEVEL: string, CLOSE_GRACE_MS: number }

export const LOG_REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-api-key"]',
  '*.password',
  '*.token',
  '*.REDIS_URL',
  '*.REDIS_PASSWORD',
  '*.UPSTASH_REDIS_REST_TOKEN',
  '*.KV_REST_API_TOKEN'
]

async function main (): Promise<void> {
  let settings: ServerSettings
  try {
    settings = envSchema<ServerSettings>({
      schema: {
        type: 'object',
        properties: {
          PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 3000 },
          HOST: { type: 'string', default: '0.0.0.0' },
          LOG_LEVEL: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
          CLOSE_GRACE_MS: { type: 'integer', minimum: 100, default: 10000 }
        }
      },
      data: Object.fromEntries(['PORT', 'HOST', 'LOG_LEVEL', 'CLOSE_GRACE_MS'].filter((k) => process.env[k] !== undefined && process.env[k] !== '').map((k) => [k, process.env[k]])),
      env: false
    })
  } catch (err) {
    process.stderr.write(`Invalid configuration: ${(err as Error).message.replace(/^env\//, '')}\n`)
    process.exit(1)
  }

  const fastify = Fastify({ logger: { level: settings.LOG_LEVEL, redact: { paths: LOG_REDACT_PATHS, censor: '***' } } })
  fastify.register(app)

  closeWithGrace({ delay: settings.CLOSE_GRACE_MS, logger: fastify.log }, async ({ err }) => {
    if (err !== undefined) fastify.log.error({ err }, 'closing after an uncaught error')
    await fastify.close()
  })

  try {
    await fastify.listen({ port: settings.PORT, host: settings.HOST })
  } catch (err) {
    fastify.log.fatal({ err: { message: (err as Error).message, code: (err as { code?: string }).code } }, 'boot failed')
    process.exit(1)
  }
}

void main()
