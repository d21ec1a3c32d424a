import { once } from 'node:events'
import type { Cluster, ClusterNode, ClusterOptions, RedisOptions } from 'ioredis'
import calculateSlot from 'cluster-key-slot'
import type { ReadVariable } from '../config'
import type { DiagnosisContext, Failure } from '../diagnose'
import { clusterSeeds, tcpSettings, tcpTarget, type TcpTarget } from './tcp-target'
import { billedOnFailure, isNoScript, type LuaScript, type Meter, type RedisCommands } from '../redis-commands'
import type { CommandObserver, LiveSignals, ProbeResult, TargetResult, TierDefinition, TierDriver, TierTimeouts } from './driver'
import { tcpTransport } from './tcp-transport'
import { ProbeTimeout } from '../errors'
import { withTimeout } from '../deadline'
import { reduceRedisError } from '../redact'
import { holdWhileReconnecting } from './tcp-reconnect'
import { closeTcp, isCluster, isShardChannel, sha1, shardedPubSub, type TcpClient } from './tcp-client'

// ioredis defaults are the bug this project exists to fix: an offline queue
// that holds HTTP requests hostage, 20 retries per command, no command
// timeout. These options make commands fail fast while Redis is away and let
// the connection come back on its own.

export const MAX_RECONNECT_DELAY_MS = 5000

/**
 * The first attempt after a close is immediate: a connection the server or the network closed
 * (idle timeout, NAT, a frozen process) comes back in one round trip, and a Redis that is really
 * gone refuses it at once, so the tier is called down without waiting. Then capped backoff.
 */
export function reconnectDelay (times: number): number {
  return times <= 1 ? 0 : Math.min(100 * 2 ** Math.min(times, 6), MAX_RECONNECT_DELAY_MS)
}

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
    // ioredis would resend every command written before a close, a PUBLISH or an XADD that may
    // have run included; tcp-reconnect.ts resends only what cannot have run or cannot change anything.
    autoResendUnfulfilledCommands: false,
    retryStrategy: reconnectDelay,
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
async function probeTcp (target: TcpTarget, seeds: ClusterNode[], timeouts: TierTimeouts, deadlineMs: number): Promise<ProbeResult<TcpClient>> {
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
    if (/cluster_enabled:1/.test(await client.info('cluster'))) {
      // Asked of this node first: a Cluster client never becomes ready on a cluster that is down.
      const info = String(await client.cluster('INFO'))
      const state = /cluster_state:(\w+)/.exec(info)?.[1] ?? 'unknown'
      if (state !== 'ok') {
        throw new Error(`Redis Cluster state is ${state} (${/cluster_slots_ok:(\d+)/.exec(info)?.[1] ?? '?'} of 16384 slots served): it cannot serve every key; check it with redis-cli --cluster check <a node of ${target.source}>`)
      }
      client.disconnect()
      return await probeCluster(target, seeds, timeouts, deadline)
    }
    client.options.commandTimeout = timeouts.commandTimeoutMs // read per command by ioredis
    holdWhileReconnecting(client)
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

/**
 * REDIS_URL named one node of a Redis Cluster: connect with ioredis's Cluster
 * client, seeded from it (and REDIS_CLUSTER_NODES), with the same auth, TLS and
 * fail-fast options, and accept it only if the cluster says its state is ok.
 */
async function probeCluster (target: TcpTarget, seeds: ClusterNode[], timeouts: TierTimeouts, deadline: AbortSignal): Promise<ProbeResult<TcpClient>> {
  const { Cluster } = await loadIoredis()
  // Per-node options: the cluster client owns the addresses, connecting and retrying; a cluster has only db 0.
  const redisOptions = tcpOptions(target, timeouts)
  for (const owned of ['host', 'port', 'db', 'lazyConnect', 'retryStrategy'] as const) delete redisOptions[owned]
  const options: ClusterOptions = {
    redisOptions,
    lazyConnect: true,
    enableOfflineQueue: false,
    enableReadyCheck: true,
    clusterRetryStrategy: reconnectDelay,
    retryDelayOnFailover: 100,
    retryDelayOnClusterDown: 100,
    slotsRefreshTimeout: timeouts.connectTimeoutMs,
    // Managed clusters over TLS announce names their certificates are issued for: do not resolve them to IPs first.
    ...(target.tls ? { dnsLookup: (address: string, callback: (err: Error | null, address: string) => void) => callback(null, address) } : {})
  }
  const cluster = new Cluster([{ host: target.host, port: target.port }, ...seeds], options)
  cluster.on('error', () => {})
  holdWhileReconnecting(cluster) // before connecting: it guards each node as the cluster adds it
  try {
    cluster.connect().catch(() => {}) // the same failure arrives as the `error` event awaited below
    await once(cluster, 'ready', { signal: deadline })
    const version = Number(/redis_version:(\d+)/.exec(await cluster.info('server'))?.[1] ?? 0)
    if (version >= 7) shardedPubSub.add(cluster)
    const started = performance.now()
    await cluster.ping()
    return { ok: true, client: cluster, latencyMs: Math.round((performance.now() - started) * 100) / 100 }
  } catch (err) {
    cluster.disconnect()
    return { ok: false, error: deadline.aborted ? new ProbeTimeout('probe timed out') : (err as Error) }
  }
}

/** PING with its own deadline, independent of the client's command timeout. */
async function pingTcp (client: TcpClient, ms: number): Promise<number> {
  const started = performance.now()
  await withTimeout(client.ping(), ms, () => new ProbeTimeout(`no PING reply within ${ms} ms`))
  return Math.round((performance.now() - started) * 100) / 100
}

function tcpCommands (client: TcpClient, timeoutMs: number, meter: Meter, observer?: CommandObserver): RedisCommands {
  // There is a client, so a probe succeeded and loaded ioredis.
  const { Command } = ioredis as NonNullable<typeof ioredis>
  let sent = 0
  // A Command whose timer we start ourselves: ioredis then keeps ours instead of
  // adding its own (REDIS_COMMAND_TIMEOUT_MS), so each call costs one timer and no race.
  function send<T> (name: string, args: Array<string | number>): Promise<T> {
    sent++
    const command = new Command(name, args, { replyEncoding: 'utf8' })
    command.setTimeout(timeoutMs)
    // ioredis attaches the command with its arguments to a reply error: reduced as it is rejected, without a wrapper promise on the hot path.
    const reject = command.reject
    command.reject = (err) => {
      const reduced = reduceRedisError(err)
      observer?.failed(reduced)
      reject(reduced)
    }
    return client.sendCommand(command) as Promise<T>
  }
  /** A plain command: one round trip, one command billed. */
  function one<T> (name: string, args: Array<string | number>): Promise<T> {
    meter(1)
    return send<T>(name, args)
  }
  /** A script call, metered with the commands it ran once it answers (a NOSCRIPT answer ran none). */
  async function evaluate (command: 'evalsha' | 'eval', body: string, script: LuaScript, keys: string[], args: Array<string | number>): Promise<unknown> {
    let billed = 1
    try {
      const reply = await send(command, [body, keys.length, ...keys, ...args])
      observer?.answered(script)
      billed = script.cost(keys.length, reply)
      return reply
    } catch (err) {
      billed = billedOnFailure(err, script.cost(keys.length, undefined))
      throw err
    } finally {
      meter(billed)
    }
  }
  const shas = new Map<string, string>()
  return {
    tier: 'tcp',
    get: (key) => one<string | null>('get', [key]), // no async wrapper: this is the hot path of an L2 hit
    async eval (script, keys, args) {
      let sha = shas.get(script.source)
      if (sha === undefined) {
        sha = sha1(script.source)
        shas.set(script.source, sha)
      }
      try {
        return await evaluate('evalsha', sha, script, keys, args)
      } catch (err) {
        if (!isNoScript(err)) throw err
        return await evaluate('eval', script.source, script, keys, args)
      }
    },
    scan: isCluster(client) ? clusterScan(client, meter) : async (cursor, match, count) => await one<[string, string[]]>('scan', [cursor, 'MATCH', match, 'COUNT', count]),
    // A multi-key command must stay within one slot on a cluster: one UNLINK per slot, sent together.
    unlink: isCluster(client)
      ? async (keys) => (await Promise.all([...bySlot(keys).values()].map(async (group) => await one<number>('unlink', group)))).reduce((a, b) => a + b, 0)
      : async (keys) => await one<number>('unlink', [...keys]),
    publish: async (channel, message) => await one<number>(isShardChannel(client, channel) ? 'spublish' : 'publish', [channel, message]),
    cluster: isCluster(client),
    shardedPubSub: isCluster(client) && shardedPubSub.has(client),
    sent: () => sent
  }
}

function bySlot (keys: readonly string[]): Map<number, string[]> {
  const groups = new Map<number, string[]>()
  for (const key of keys) {
    const slot = calculateSlot(key)
    const group = groups.get(slot)
    if (group === undefined) groups.set(slot, [key])
    else group.push(key)
  }
  return groups
}

/**
 * SCAN over every master of a cluster, one after the other, behind one cursor:
 * `<master index>:<that master's cursor>`, and '0' when the last one is done.
 */
function clusterScan (cluster: Cluster, meter: Meter): RedisCommands['scan'] {
  return async (cursor, match, count) => {
    const masters = cluster.nodes('master')
    const [index, inner] = cursor === '0' ? [0, '0'] : cursor.split(':')
    const i = Number(index)
    const node = masters[i]
    if (node === undefined) return ['0', []]
    meter(1)
    const [next, keys] = await node.scan(inner, 'MATCH', match, 'COUNT', count).catch((err: unknown) => { throw reduceRedisError(err) })
    if (next !== '0') return [`${i}:${next}`, keys]
    return [i + 1 < masters.length ? `${i + 1}:0` : '0', keys]
  }
}

/**
 * After a good probe ioredis reconnects forever with capped backoff; its events say when Redis is
 * away and back. A ready connection that closes is not yet an outage: the server or the network may
 * have closed it (idle timeout, NAT, a frozen process). The first reconnect is immediate; the tier is
 * down only if it fails (an `error` before `ready`) or no `ready` comes within the connect timeout.
 */
function watchTcp (client: TcpClient, signals: LiveSignals, graceMs: number): void {
  let ready = client.status === 'ready' // adopted after the probe: its first `ready` has been emitted
  let grace: NodeJS.Timeout | undefined
  let closedAt = 0
  function down (err?: Error): void {
    clearTimeout(grace)
    grace = undefined
    signals.down(err)
  }
  client.on('error', (err: Error) => {
    if (client.status === 'ready') return // the socket failed while connected: its `close` follows
    // The reconnect after a close failed: the diagnosis is the lost connection, being re-established.
    down(grace !== undefined ? undefined : err)
  })
  client.on('close', () => {
    if (!ready) return down()
    ready = false
    closedAt = performance.now()
    grace = setTimeout(() => down(new Error(`Connection is closed. (no new connection within ${graceMs} ms)`)), graceMs)
    grace.unref()
  })
  client.on('ready', () => {
    ready = true
    if (grace !== undefined) {
      clearTimeout(grace)
      grace = undefined
      signals.reconnected?.(Math.round(performance.now() - closedAt))
    }
    signals.up()
  })
  client.on('end', () => down()) // no reconnect follows (closed by us, or a Cluster gave up)
}

/** The tcp tier's driver, when REDIS_URL or REDIS_HOST configure one. */
function configureTcp (read: ReadVariable, timeouts: TierTimeouts): TargetResult<TierDriver<TcpClient>> {
  const settings = tcpSettings(read)
  const result = tcpTarget(settings)
  if (result.status !== 'ok') return result
  const target = result.target
  const seeds = clusterSeeds(settings.REDIS_CLUSTER_NODES)
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
      probe: async (deadlineMs) => await probeTcp(target, seeds, timeouts, deadlineMs),
      ping: pingTcp,
      commands: tcpCommands,
      transport: (client, onError) => tcpTransport(client, timeouts.commandTimeoutMs, onError),
      watch: (client, signals) => watchTcp(client, signals, timeouts.connectTimeoutMs),
      close: async (client) => await closeTcp(client, timeouts.commandTimeoutMs),
      info: async (client, section, ms) => await withTimeout(client.info(section), ms).catch((err: unknown) => { throw reduceRedisError(err) }),
      async describe (client) {
        if (!isCluster(client)) return { mode: 'single' }
        // The cluster's own view (CLUSTER NODES): ioredis forgets a node once it left the slot map.
        const text = await withTimeout(client.cluster('NODES'), timeouts.commandTimeoutMs).then(String, () => '')
        const nodes = text.split('\n').filter((line) => line.trim() !== '').map((line) => {
          const [, address = '', flags = ''] = line.split(' ')
          return { address: address.replace(/@.*$/, ''), role: /master/.test(flags) ? 'master' : 'replica', status: /fail/.test(flags) ? 'down' : 'up' }
        })
        return { mode: 'cluster', shardedPubSub: shardedPubSub.has(client), masters: nodes.filter((n) => n.role === 'master' && n.status === 'up').length, nodes, down: nodes.filter((n) => n.status === 'down').map((n) => n.address) }
      }
    }
  }
}

function tlsHint (ctx: DiagnosisContext): string {
  return ctx.tls ? '' : `; if the server only accepts TLS, use rediss:// in ${ctx.variable === 'REDIS_HOST' ? 'REDIS_URL (or REDIS_TLS=true)' : ctx.variable}`
}

/** What only a Redis spoken to over TCP answers: its own auth errors, a connection lost while reconnecting, a server that is not Redis. */
function diagnoseTcp ({ code, message, where, ctx }: Failure): string | null {
  if (/Stream isn't writeable|Connection is closed\.?$/i.test(message) && !/handshake/.test(message)) {
    return `the connection to ${where} is down and is being re-established in the background; check that the server is running`
  }
  if (/WRONGPASS|invalid (username-)?password|invalid password/i.test(message)) {
    return `authentication failed (WRONGPASS) at ${where}: the user name or password in ${ctx.secretVariable} is wrong`
  }
  if (/NOAUTH|Authentication required/i.test(message)) {
    return `${where} requires a password (NOAUTH): put it in ${ctx.secretVariable === 'REDIS_URL' ? 'REDIS_URL as redis://:password@host:port' : ctx.secretVariable}`
  }
  if (/without any password configured|no password is set/i.test(message)) {
    return `a password was given but ${where} has none configured: remove it from ${ctx.secretVariable}`
  }
  if (code === 'ECONNRESET' || /Connection is closed|socket hang up/i.test(message)) {
    return `${where} closed the connection during the handshake${tlsHint(ctx)}`
  }
  if (/Unknown RESP type|Protocol error/i.test(message)) {
    return `${where} answered with something that is not Redis (an HTTP server or a proxy?): check the host and port in ${ctx.variable}`
  }
  return null
}

/** A TCP Redis (ioredis), a Redis Cluster included: the best tier, as it has everything. */
export const tcpTier: TierDefinition<TcpClient> = {
  tier: 'tcp',
  label: 'a TCP Redis (REDIS_URL)',
  setUp: 'Set REDIS_URL to use a TCP Redis.',
  secretVariables: ['REDIS_PASSWORD'],
  configure: configureTcp,
  diagnose: diagnoseTcp,
  // A server without TLS looks the same to rediss:// as one that does not answer.
  timeoutHint: (ctx) => `${tlsHint(ctx)}${ctx.tls ? '; a server without TLS looks the same to rediss://, so if it has no TLS use redis://' : ''}`
}
