import { once } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import type { TcpTarget } from './targets'
import { ProbeTimeout } from './diagnose'
import { withTimeout } from './deadline'

// ioredis defaults are the bug this project exists to fix: an offline queue
// that holds HTTP requests hostage, 20 retries per command, no command
// timeout. These options make commands fail fast while Redis is away and let
// the connection come back on its own.

export const MAX_RECONNECT_DELAY_MS = 5000

export interface TcpTimeouts {
  connectTimeoutMs: number
  commandTimeoutMs: number
}

export function tcpOptions (target: TcpTarget, timeouts: TcpTimeouts): RedisOptions {
  return {
    host: target.host,
    port: target.port,
    username: target.username,
    password: target.password,
    db: target.db,
    // Certificate verification stays on; servername makes SNI work for hosted Redis.
    tls: target.tls ? { servername: target.host } : undefined,
    family: 0, // dual-stack: Fly and Railway private networks are IPv6-only
    lazyConnect: true,
    connectTimeout: timeouts.connectTimeoutMs,
    commandTimeout: timeouts.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    autoResubscribe: false, // the bus resubscribes itself on every `ready`
    retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 6), MAX_RECONNECT_DELAY_MS),
    // Redis 6 sends READONLY after a failover; reconnecting reaches the new primary.
    reconnectOnError: (err: Error) => err.message.startsWith('READONLY'),
    connectionName: 'redis-tiers'
  }
}

export interface TcpProbeResult {
  ok: boolean
  client?: Redis
  latencyMs?: number
  error?: Error
}

/**
 * Connect and PING within one deadline. The first connection error ends the
 * probe (events.once rejects on `error`), so a refused port or a wrong
 * password answers at once instead of after the deadline. On success the
 * connected client is returned for runtime use (it keeps reconnecting with
 * capped backoff); on failure it is disconnected so that nothing keeps
 * trying in the background.
 */
export async function probeTcp (target: TcpTarget, timeouts: TcpTimeouts, deadlineMs: number): Promise<TcpProbeResult> {
  // During the probe the ready check (INFO) and PING get the whole deadline, then the runtime command timeout applies.
  const client = new Redis({ ...tcpOptions(target, timeouts), commandTimeout: deadlineMs })
  client.on('error', () => {}) // never an unhandled `error` event, even before the owner adds its listener
  const deadline = AbortSignal.timeout(deadlineMs)
  try {
    client.connect().catch(() => {}) // the same failure arrives as the `error` event awaited below
    await once(client, 'ready', { signal: deadline })
    const started = performance.now()
    await Promise.race([client.ping(), once(deadline, 'abort')])
    if (deadline.aborted) throw new ProbeTimeout('PING timed out')
    const latencyMs = Math.round((performance.now() - started) * 100) / 100
    client.options.commandTimeout = timeouts.commandTimeoutMs // read per command by ioredis
    return { ok: true, client, latencyMs }
  } catch (err) {
    client.disconnect()
    return { ok: false, error: deadline.aborted ? new ProbeTimeout('probe timed out') : (err as Error) }
  }
}

/** Ask the server to close, but never wait longer than `ms`. */
export async function closeTcp (client: Redis, ms: number): Promise<void> {
  if (client.status === 'end') return
  if (client.status !== 'ready') {
    client.disconnect()
    return
  }
  const timer = setTimeout(() => client.disconnect(), ms)
  try {
    await client.quit()
  } catch {
    client.disconnect()
  } finally {
    clearTimeout(timer)
  }
}

/** PING with its own deadline, independent of the client's command timeout. */
export async function pingTcp (client: Redis, ms: number): Promise<number> {
  const started = performance.now()
  await withTimeout(client.ping(), ms, () => new ProbeTimeout(`no PING reply within ${ms} ms`))
  return Math.round((performance.now() - started) * 100) / 100
}
