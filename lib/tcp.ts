import { once } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import type { TcpTarget } from './targets'
import { ProbeTimeout } from './diagnose'

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

/** Errors after which retrying within the probe window is pointless. */
function isFinal (err: Error): boolean {
  const code = (err as { code?: string }).code
  return code === 'ENOTFOUND' || code === 'EAI_NONAME' || /WRONGPASS|NOAUTH|invalid password|without any password|certificate|CERT|wrong version number/i.test(`${code ?? ''} ${err.message}`)
}

export interface TcpProbeResult {
  ok: boolean
  client?: Redis
  latencyMs?: number
  error?: Error
}

/**
 * Connect and PING within one deadline. On success the connected client is
 * returned for runtime use (it keeps reconnecting with capped backoff); on
 * failure it is disconnected so that nothing keeps trying in the background.
 */
export async function probeTcp (target: TcpTarget, timeouts: TcpTimeouts, deadlineMs: number): Promise<TcpProbeResult> {
  const client = new Redis(tcpOptions(target, timeouts))
  let lastError: Error | undefined
  let finalError: ((err: Error) => void) | undefined
  const onError = (err: Error): void => {
    lastError = err
    if (isFinal(err)) finalError?.(err)
  }
  client.on('error', onError)
  const abort = new AbortController()
  const timer = setTimeout(() => abort.abort(), deadlineMs)
  try {
    const fatal = new Promise<never>((_resolve, reject) => { finalError = reject })
    fatal.catch(() => {})
    client.connect().catch(() => {}) // failures arrive as `error` events, which we keep
    await Promise.race([once(client, 'ready', { signal: abort.signal }), fatal])
    const started = performance.now()
    await Promise.race([client.ping(), fatal, once(abort.signal, 'abort').then(() => { throw new ProbeTimeout('probe timed out') })])
    const latencyMs = Math.round((performance.now() - started) * 100) / 100
    client.off('error', onError)
    return { ok: true, client, latencyMs }
  } catch (err) {
    client.disconnect()
    // A timeout that saw a connection error is better explained by that error.
    return { ok: false, error: abort.signal.aborted ? (lastError ?? new ProbeTimeout('probe timed out')) : (err as Error) }
  } finally {
    clearTimeout(timer)
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
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      client.ping(),
      new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new ProbeTimeout(`no PING reply within ${ms} ms`)), ms) })
    ])
  } finally {
    clearTimeout(timer)
  }
  return Math.round((performance.now() - started) * 100) / 100
}
