import { once } from 'node:events'
import { createHash } from 'node:crypto'
import type { Redis, RedisOptions } from 'ioredis'
import type { ConnectionSettings } from '../config'
import { tcpTarget, type TargetResult, type TcpTarget } from '../targets'
import type { RedisCommands } from '../redis-commands'
import type { ProbeResult, TierDriver, TierTimeouts } from './driver'
import { tcpTransport } from './tcp-transport'
import { ProbeTimeout } from '../diagnose'
import { withTimeout } from '../deadline'

// ioredis defaults are the bug this project exists to fix: an offline queue
// that holds HTTP requests hostage, 20 retries per command, no command
// timeout. These options make commands fail fast while Redis is away and let
// the connection come back on its own.

export const MAX_RECONNECT_DELAY_MS = 5000

function tcpOptions (target: TcpTarget, timeouts: TierTimeouts): RedisOptions {
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

/**
 * Connect and PING within one deadline. The first connection error ends the
 * probe (events.once rejects on `error`), so a refused port or a wrong
 * password answers at once instead of after the deadline. On success the
 * connected client is returned for runtime use (it keeps reconnecting with
 * capped backoff); on failure it is disconnected so that nothing keeps
 * trying in the background.
 */
async function probeTcp (target: TcpTarget, timeouts: TierTimeouts, deadlineMs: number): Promise<ProbeResult<Redis>> {
  const { Redis } = await loadIoredis()
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

// ioredis is loaded by the first probe: an app without a tcp tier never pays for it.
const importIoredis = async () => await import('ioredis')
let ioredis: Awaited<ReturnType<typeof importIoredis>> | undefined

async function loadIoredis (): Promise<NonNullable<typeof ioredis>> {
  ioredis ??= await importIoredis()
  return ioredis
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
async function pingTcp (client: Redis, ms: number): Promise<number> {
  const started = performance.now()
  await withTimeout(client.ping(), ms, () => new ProbeTimeout(`no PING reply within ${ms} ms`))
  return Math.round((performance.now() - started) * 100) / 100
}

function sha1 (text: string): string {
  return createHash('sha1').update(text).digest('hex')
}

function tcpCommands (client: Redis, timeoutMs: number): RedisCommands {
  // There is a client, so a probe succeeded and loaded ioredis.
  const { Command } = ioredis as NonNullable<typeof ioredis>
  let sent = 0
  // A Command whose timer we start ourselves: ioredis then keeps ours instead of
  // adding its own (REDIS_COMMAND_TIMEOUT_MS), so each call costs one timer and no race.
  function send<T> (name: string, args: Array<string | number>): Promise<T> {
    sent++
    const command = new Command(name, args, { replyEncoding: 'utf8' })
    command.setTimeout(timeoutMs)
    return client.sendCommand(command) as Promise<T>
  }
  const shas = new Map<string, string>()
  return {
    tier: 'tcp',
    get: (key) => send<string | null>('get', [key]), // no async wrapper: this is the hot path of an L2 hit
    async eval (script, keys, args) {
      let sha = shas.get(script)
      if (sha === undefined) {
        sha = sha1(script)
        shas.set(script, sha)
      }
      try {
        return await send('evalsha', [sha, keys.length, ...keys, ...args])
      } catch (err) {
        if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
        return await send('eval', [script, keys.length, ...keys, ...args])
      }
    },
    scan: async (cursor, match, count) => await send<[string, string[]]>('scan', [cursor, 'MATCH', match, 'COUNT', count]),
    unlink: async (keys) => await send<number>('unlink', [...keys]),
    publish: async (channel, message) => await send<number>('publish', [channel, message]),
    sent: () => sent
  }
}

/** The tcp tier, when REDIS_URL or REDIS_HOST configure one. */
export function tcpTier (settings: ConnectionSettings, timeouts: TierTimeouts): TargetResult<TierDriver<Redis>> {
  const result = tcpTarget(settings)
  if (result.status !== 'ok') return result
  const target = result.target
  return {
    status: 'ok',
    target: {
      tier: 'tcp',
      context: {
        tier: 'tcp',
        variable: target.source,
        secretVariable: target.source === 'REDIS_URL' ? 'REDIS_URL' : 'REDIS_PASSWORD',
        endpoint: target.display,
        tls: target.tls,
        timeoutMs: timeouts.connectTimeoutMs
      },
      secrets: target.password !== undefined ? [target.password] : [],
      probe: async (deadlineMs) => await probeTcp(target, timeouts, deadlineMs),
      ping: pingTcp,
      commands: tcpCommands,
      transport: (client, onError) => tcpTransport(client, timeouts.commandTimeoutMs, onError),
      watch (client, signals) {
        // After a good probe ioredis reconnects forever with capped backoff; these events say when it is away and back.
        client.on('error', (err: Error) => signals.down(err))
        client.on('close', () => signals.down())
        client.on('ready', () => signals.up())
      },
      close: async (client) => await closeTcp(client, timeouts.commandTimeoutMs)
    }
  }
}
