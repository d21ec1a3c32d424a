import Fastify, { type FastifyInstance } from 'fastify'
import closeWithGrace from 'close-with-grace'
import { parseBooleanVariable, parseChoiceVariable, parseIntegerVariable, type ReadVariable } from './config'

// What server.ts and worker.ts share as standalone processes: their own
// settings, JSON logs with credentials redacted, and a bounded graceful close
// on SIGINT/SIGTERM (a hung close must not keep a PaaS deploy waiting).

export interface ProcessSettings {
  PORT: number
  HOST: string
  LOG_LEVEL: string
  CLOSE_GRACE_MS: number
  NODE_ENV?: string
  DEMO_ROUTES?: boolean
}

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

/** PORT, HOST, LOG_LEVEL, CLOSE_GRACE_MS, NODE_ENV, DEMO_ROUTES from the environment; an invalid value ends the process with a message naming it. */
export function readProcessSettings (): ProcessSettings {
  const read: ReadVariable = (name) => (process.env[name] === '' ? undefined : process.env[name])
  try {
    return {
      PORT: parseIntegerVariable(read, 'PORT', 3000, 0, 65535),
      HOST: read('HOST') ?? '0.0.0.0',
      LOG_LEVEL: parseChoiceVariable(read, 'LOG_LEVEL', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) ?? 'info',
      CLOSE_GRACE_MS: parseIntegerVariable(read, 'CLOSE_GRACE_MS', 10_000, 100, 3_600_000),
      NODE_ENV: read('NODE_ENV'),
      DEMO_ROUTES: read('DEMO_ROUTES') === undefined ? undefined : parseBooleanVariable(read, 'DEMO_ROUTES', false)
    }
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`)
    process.exit(1)
  }
}

/**
 * Channels, job ids and user ids are up to 128 characters, which Fastify's
 * default `maxParamLength` (100) would answer with 414 before our own 400.
 */
export const ROUTER_OPTIONS = { maxParamLength: 256 }

/** The demo server mounts the demo (and its header identity) unless NODE_ENV=production; DEMO_ROUTES decides either way. */
export function demoRoutesWanted (settings: ProcessSettings): boolean {
  return settings.DEMO_ROUTES ?? settings.NODE_ENV !== 'production'
}

/** A Fastify instance with JSON logs and a graceful close on signals and uncaught errors. */
export function processFastify (settings: ProcessSettings): FastifyInstance {
  const fastify = Fastify({ routerOptions: ROUTER_OPTIONS, logger: { level: settings.LOG_LEVEL, redact: { paths: LOG_REDACT_PATHS, censor: '***' } } })
  closeWithGrace({ delay: settings.CLOSE_GRACE_MS, logger: fastify.log }, async ({ err }) => {
    if (err !== undefined) fastify.log.error({ err }, 'closing after an uncaught error')
    await fastify.close()
  })
  // close-with-grace kills the process when the close outlasts CLOSE_GRACE_MS: with workers
  // draining for QUEUES_DRAIN_MS that is an exit 1 on every deploy. Say so at boot.
  fastify.addHook('onReady', async () => {
    if (!fastify.hasDecorator('queues') || !fastify.queues.workers || settings.CLOSE_GRACE_MS > fastify.queues.drainMs) return
    fastify.log.warn({ CLOSE_GRACE_MS: settings.CLOSE_GRACE_MS, QUEUES_DRAIN_MS: fastify.queues.drainMs },
      `CLOSE_GRACE_MS (${settings.CLOSE_GRACE_MS}) is not larger than QUEUES_DRAIN_MS (${fastify.queues.drainMs}): on SIGTERM the process would be killed while jobs drain; set CLOSE_GRACE_MS a few seconds above QUEUES_DRAIN_MS`)
  })
  return fastify
}

/** Log why boot failed (message and code only: no config object) and exit 1. */
export function bootFailed (fastify: FastifyInstance, err: unknown): never {
  fastify.log.fatal({ err: { message: (err as Error).message, code: (err as { code?: string }).code } }, 'boot failed')
  process.exit(1)
}
