import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import type { ReadVariable } from '../config'
import type { Failure } from '../diagnose'
import { withTimeout } from '../deadline'
import type { LuaScript, Meter, RedisCommands } from '../redis-commands'
import { reduceRedisError } from '../redact'
import { restSettings, restTarget, type RestTarget } from './rest-target'
import type { CommandObserver, ProbeResult, TargetResult, TierDefinition, TierDriver, TierTimeouts } from './driver'
import { refusalCause } from '../refusal'
import { restTransport } from './rest-transport'

// @upstash/redis retries a failed fetch five times with exponential backoff
// and has no timeout of its own; a signal *function* gives every request its
// own deadline (a plain signal would be shared and, once aborted, turn every
// later answer into the string "Aborted").

type UpstashClass = typeof UpstashRedis

function createRestClient (Upstash: UpstashClass, target: RestTarget, commandTimeoutMs: number, retries = 1): UpstashRedis {
  return new Upstash({
    url: target.url,
    token: target.token,
    retry: retries === 0 ? false : { retries, backoff: () => 50 },
    signal: () => AbortSignal.timeout(commandTimeoutMs),
    automaticDeserialization: false, // values round-trip as the strings we stored
    enableTelemetry: false,
    readYourWrites: false,
    responseEncoding: 'base64'
  })
}

/** One PING, retries off, within the deadline. */
async function probeRest (target: RestTarget, commandTimeoutMs: number, deadlineMs: number): Promise<ProbeResult<UpstashRedis>> {
  // The Upstash client is loaded by the first probe: an app without a rest tier never pays for it.
  const { Redis: Upstash } = await import('@upstash/redis')
  const probe = new Upstash({
    url: target.url,
    token: target.token,
    retry: false,
    signal: () => AbortSignal.timeout(deadlineMs),
    automaticDeserialization: false,
    enableTelemetry: false
  })
  try {
    const started = performance.now()
    const reply = await probe.ping()
    const latencyMs = Math.round((performance.now() - started) * 100) / 100
    if (reply !== 'PONG') throw new Error(`unexpected PING reply: ${String(reply).slice(0, 40)}`)
    return { ok: true, client: createRestClient(Upstash, target, commandTimeoutMs), latencyMs }
  } catch (err) {
    // A spent quota answers with an error body: the endpoint is there and took the token.
    if (refusalCause(err) !== null) return { ok: true, client: createRestClient(Upstash, target, commandTimeoutMs), refused: reduceRedisError(err) }
    return { ok: false, error: err as Error }
  }
}

async function pingRest (client: UpstashRedis, ms: number): Promise<number> {
  const started = performance.now()
  const reply = await withTimeout(client.ping(), ms)
  if (reply !== 'PONG') throw new Error(`unexpected PING reply: ${String(reply).slice(0, 40)}`)
  return Math.round((performance.now() - started) * 100) / 100
}

function restCommands (client: UpstashRedis, timeoutMs: number, meter: Meter, observer?: CommandObserver): RedisCommands {
  let sent = 0
  const run = async <T>(fn: () => Promise<T>, billed: (reply: T | undefined) => number = () => 1, script?: LuaScript): Promise<T> => {
    sent++
    let reply: T | undefined
    try {
      reply = await withTimeout(fn(), timeoutMs)
      observer?.answered(script)
      return reply
    } catch (err) {
      const reduced = reduceRedisError(err) // @upstash/redis quotes the whole command, arguments and script included
      observer?.failed(reduced)
      throw reduced
    } finally {
      meter(billed(reply))
    }
  }
  return {
    tier: 'rest',
    get: async (key) => await run(async () => await client.get<string>(key)),
    eval: async (script, keys, args) => await run(async () => await client.eval(script.source, keys, args.map(String)), (reply) => script.cost(keys.length, reply), script),
    async scan (cursor, match, count) {
      const [next, keys] = await run(async () => await client.scan(cursor, { match, count }))
      return [String(next), keys]
    },
    unlink: async (keys) => await run(async () => await client.unlink(...keys)),
    publish: async (channel, message) => await run(async () => await client.publish(channel, message)),
    cluster: false,
    shardedPubSub: false,
    sent: () => sent
  }
}

/** The rest tier's driver, when UPSTASH_REDIS_REST_URL + _TOKEN (or Vercel's KV_REST_API_*) configure one. */
function configureRest (read: ReadVariable, timeouts: TierTimeouts): TargetResult<TierDriver<UpstashRedis>> {
  const result = restTarget(restSettings(read))
  if (result.status !== 'ok') return result
  const target = result.target
  return {
    status: 'ok',
    target: {
      tier: 'rest',
      context: { tier: 'rest', variable: target.urlVariable, secretVariable: target.tokenVariable, endpoint: target.display, tls: true, timeoutMs: timeouts.connectTimeoutMs },
      secrets: [target.token],
      probe: async (deadlineMs) => await probeRest(target, timeouts.commandTimeoutMs, deadlineMs),
      ping: pingRest,
      commands: restCommands,
      transport: (client, onError) => restTransport(client, target, timeouts.commandTimeoutMs, onError),
      watch () {}, // HTTP has no connection to watch: /health pings and the re-probe tell
      close: async () => {},
      info: async (client, section, ms) => String(await withTimeout(client.exec(['INFO', section]), ms).catch((err: unknown) => { throw reduceRedisError(err) }))
    }
  }
}

/** What only an HTTP endpoint answers: a refused token, a page that is not Upstash, a dropped request. */
function diagnoseRest ({ code, message, where, ctx }: Failure): string | null {
  if (/unauthori[sz]ed|WRONGPASS|NOAUTH|forbidden|NOPERM|invalid.*token|\b40[13]\b/i.test(message)) {
    return `${where} rejected the token (HTTP 401/403): ${ctx.secretVariable} is wrong or lacks permission; copy the REST token again from the Upstash console`
  }
  if (/Unable to parse response body|JSON/i.test(message)) {
    return `${where} did not answer like an Upstash REST endpoint: check that ${ctx.variable} is the REST URL (https://<name>.upstash.io), not a web page or proxy`
  }
  if (code === 'ECONNRESET' || /socket hang up|other side closed/i.test(message)) {
    return `${where} closed the connection: check ${ctx.variable}`
  }
  return null
}

/** Upstash REST (@upstash/redis over HTTP): no blocking commands, no long-lived connection. */
export const restTier: TierDefinition<UpstashRedis> = {
  tier: 'rest',
  label: 'Upstash REST (UPSTASH_REDIS_REST_URL + UPSTASH_REDIS_REST_TOKEN)',
  setUp: 'Set UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN to use Upstash REST.',
  secretVariables: ['UPSTASH_REDIS_REST_TOKEN', 'KV_REST_API_TOKEN'],
  configure: configureRest,
  diagnose: diagnoseRest
}
