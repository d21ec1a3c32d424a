import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyPluginAsync, type FastifyServerOptions } from 'fastify'
import app, { type AppOptions } from '../../app'
import { ROUTER_OPTIONS } from '../../lib/process-entry'
import type { EnvInput } from '../../lib/config'
import type { Teardown } from '../../support/redis-server'

export interface LogLine { level: number, msg: string, [key: string]: unknown }

export interface Built {
  app: FastifyInstance
  /** Every log line the app wrote so far, parsed. */
  logs: () => LogLine[]
  /** All log output as text, for "no secret in here" assertions. */
  logText: () => string
}

export interface BuildOptions {
  /** Extra plugins registered after the app (e.g. a test-only feature). */
  plugins?: FastifyPluginAsync[]
  /** Fastify server options besides the logger (default: the servers' router options). */
  fastify?: FastifyServerOptions
  /** App options besides the env (e.g. statusPage). */
  app?: Omit<AppOptions, 'env' | 'processEnv'>
}

/**
 * The app with exactly `env` (process.env is ignored, so the machine's own
 * variables cannot leak into a test), ready, and closed in teardown.
 */
export async function build (t: Teardown, env: EnvInput = {}, opts: BuildOptions = {}): Promise<Built> {
  const raw: string[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) { raw.push(chunk.toString()); done() }
  })
  const fastify = Fastify({ routerOptions: ROUTER_OPTIONS, ...opts.fastify, logger: { level: 'info', stream } })
  t.teardown(async () => await fastify.close())
  await fastify.register(app, { ...opts.app, env, processEnv: false })
  for (const plugin of opts.plugins ?? []) await fastify.register(plugin)
  await fastify.ready()
  return {
    app: fastify,
    logs: () => raw.join('').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as LogLine),
    logText: () => raw.join('')
  }
}

export { eventually } from '../../support/eventually'
