import { Redis as UpstashRedis } from '@upstash/redis'
import type { RestTarget } from './targets'

// @upstash/redis retries a failed fetch five times with exponential backoff
// and has no timeout of its own; a signal *function* gives every request its
// own deadline (a plain signal would be shared and, once aborted, turn every
// later answer into the string "Aborted").

export function createRestClient (target: RestTarget, commandTimeoutMs: number, retries = 1): UpstashRedis {
  return new UpstashRedis({
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

export interface RestProbeResult {
  ok: boolean
  client?: UpstashRedis
  latencyMs?: number
  error?: Error
}

/** One PING, retries off, within the deadline. */
export async function probeRest (target: RestTarget, commandTimeoutMs: number, deadlineMs: number): Promise<RestProbeResult> {
  const probe = new UpstashRedis({
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
    return { ok: true, client: createRestClient(target, commandTimeoutMs), latencyMs }
  } catch (err) {
    return { ok: false, error: err as Error }
  }
}

export async function pingRest (client: UpstashRedis): Promise<number> {
  const started = performance.now()
  const reply = await client.ping()
  if (reply !== 'PONG') throw new Error(`unexpected PING reply: ${String(reply).slice(0, 40)}`)
  return Math.round((performance.now() - started) * 100) / 100
}
