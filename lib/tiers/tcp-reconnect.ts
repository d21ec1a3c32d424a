import type { Cluster, Redis } from 'ioredis'
import type { TcpClient } from './tcp-client'

// A connection that died while Redis stayed up (the server's idle timeout, a
// NAT gateway, a process frozen longer than either) is not an outage. ioredis
// on its own fails a command sent while it reconnects ("Stream isn't
// writeable", no offline queue: we want fail-fast while Redis is away), and
// resends on reconnect every command written before the close, including a
// PUBLISH or an XADD that may have run. Here, on each fail-fast connection:
// - a command issued while a connection that was ready reconnects (before the
//   reconnect has failed) waits for `ready` within its own deadline: it was
//   never written, so sending it then cannot run it twice;
// - a command written when the connection closed under it is sent again once
//   only if it cannot change anything (IDEMPOTENT); any other fails with a
//   sentence saying it may have run (ioredis's own resend is off);
// - after the process was paused, the first commands yield to the event loop
//   once, so a FIN that arrived during the pause is read before anything is
//   written on the dead socket. Free of Redis commands: they are billed.

/** What this module uses of an ioredis Command. */
interface HeldCommand {
  name: string
  inTransaction?: boolean
  isSettled: boolean
  promise: Promise<unknown>
  reject: (err: Error) => void
  setTimeout: (ms: number) => void
}
/** Read from the command itself, so that this module does not load ioredis for an app without tcp. */
interface CommandClass { checkFlag: (flag: 'HANDSHAKE_COMMANDS', name: string) => boolean }
type Send = (command: HeldCommand, stream?: unknown, ...rest: unknown[]) => unknown

/**
 * Commands that cannot change anything, sent again after a connection closed before their reply.
 * UNLINK counts too: deleting again leaves the same keys; only its count can be lower.
 * Scripts (EVALSHA/EVAL), PUBLISH and BullMQ's commands are never resent once written.
 */
export const IDEMPOTENT: ReadonlySet<string> = new Set([
  'get', 'mget', 'exists', 'ttl', 'pttl', 'type', 'strlen', 'scan', 'hget', 'hmget', 'hgetall', 'hlen',
  'smembers', 'scard', 'sismember', 'zscore', 'zcard', 'zcount', 'zrange', 'zrangebyscore', 'zrevrange',
  'llen', 'lrange', 'xlen', 'xrange', 'xrevrange', 'ping', 'echo', 'info', 'time', 'dbsize', 'unlink'
])

export class ConnectionLostError extends Error {
  code = 'ECONNRESET'
}

// Redis's idle timeout is whole seconds: a process stalled for less than 1 s cannot have outlived it.
const TICK_MS = 250
const PAUSE_MS = 1000
let lastTick = Date.now()
let clock: NodeJS.Timeout | undefined
let watched = 0

/** The event loop stood still for longer than Redis's shortest idle timeout, and has not ticked since. */
export function pausedRecently (): boolean {
  return clock !== undefined && Date.now() - lastTick > PAUSE_MS
}

function watchClock (): () => void {
  watched++
  if (clock === undefined) lastTick = Date.now()
  clock ??= setInterval(() => { lastTick = Date.now() }, TICK_MS).unref()
  let released = false
  return () => {
    if (released) return
    released = true
    if (--watched === 0) {
      clearInterval(clock)
      clock = undefined
    }
  }
}

const recovering = new WeakMap<object, () => boolean>()

/** True while `client`, after being ready, is reconnecting and that reconnect has not failed yet. */
export function isReconnecting (client: object): boolean {
  return recovering.get(client)?.() ?? false
}

/**
 * Install the behaviour above on one fail-fast connection. On a Cluster the hold is the cluster's
 * (it reconnects as a whole once every node connection closed); what was written is known only per
 * node (nodeGuard): handing a command to the Cluster client is not writing it, as the client may
 * park it (its failover retry) or refuse it (a node still connecting) without any write.
 */
export function holdWhileReconnecting (client: TcpClient): void {
  if (recovering.has(client)) return
  const cluster = (client as { isCluster?: boolean }).isCluster === true
  if (cluster) client.on('+node', (node: Redis) => nodeGuard(node))
  const raw = client as unknown as { sendCommand: Send }
  const send = raw.sendCommand.bind(client)
  const written = new Set<HeldCommand>()
  const waiting = new Set<HeldCommand>()
  const resent = new WeakSet<HeldCommand>()
  let wasReady = client.status === 'ready'
  let reconnecting = false
  const release = watchClock()
  recovering.set(client, () => awaitingReconnect())

  const writable = (): boolean => client.status === 'ready' && (cluster || (client as Redis).stream?.writable === true)

  function write (command: HeldCommand): unknown {
    if (cluster) return send(holdIfRefused(command))
    if (written.size >= 256) for (const c of written) if (c.isSettled) written.delete(c)
    written.add(command)
    return send(command)
  }

  /** Since the last `ready`, the connection closed or is closing and no reconnect has failed yet. */
  const awaitingReconnect = (): boolean => reconnecting || (wasReady && client.status !== 'ready' && client.status !== 'end')

  /**
   * A Cluster fails a command that no node wrote (nodeGuard has made a written one that may have
   * run fail otherwise) with "Connection is closed." or "Cluster isn't ready" when its retry comes
   * while the cluster reconnects: that command waits for `ready` instead, within its deadline.
   */
  const refusable = new WeakSet<HeldCommand>()
  function holdIfRefused (command: HeldCommand): HeldCommand {
    if (refusable.has(command)) return command
    refusable.add(command)
    const reject = command.reject
    command.reject = (err) => {
      if (!awaitingReconnect() || !(err.message === CONNECTION_CLOSED || err.message.startsWith(CLUSTER_NOT_READY))) return reject(err)
      hold(command)
    }
    return command
  }

  /** A command's deadline runs while it waits (ioredis would start it only when writing it). */
  function startDeadline (command: HeldCommand): void {
    const options = cluster ? (client as Cluster).options.redisOptions : (client as Redis).options
    if (typeof options?.commandTimeout === 'number') command.setTimeout(options.commandTimeout)
  }

  function hold (command: HeldCommand): void {
    startDeadline(command)
    waiting.add(command)
  }

  function route (command: HeldCommand): unknown {
    if (command.isSettled) return command.promise
    if (writable()) return write(command)
    // The connection's own set-up (HELLO, CLIENT SETNAME, the ready check's INFO; a Cluster's CLUSTER INFO) is sent before `ready`.
    if (client.status === 'connect' && (cluster ? command.name === 'cluster' : (command.constructor as unknown as CommandClass).checkFlag('HANDSHAKE_COMMANDS', command.name))) return send(command)
    // Ready but no longer writable: the socket ended and its `close` is on the way.
    if (awaitingReconnect() || client.status === 'ready') {
      hold(command)
      return command.promise
    }
    return send(command) // Redis is away or not connected yet: ioredis fails it at once
  }

  function failWaiting (err: Error): void {
    for (const command of waiting) command.reject(err)
    waiting.clear()
  }

  client.on('ready', () => {
    wasReady = true
    reconnecting = false
    const held = [...waiting]
    waiting.clear()
    for (const command of held) route(command)
  })
  client.on('close', () => {
    // A Cluster decides to reconnect just after this event; 'end' follows if it does not.
    reconnecting = wasReady && client.status !== 'end'
    wasReady = false
    // On a Cluster this set stays empty: each node failed its written commands when it closed.
    for (const command of written) {
      if (command.isSettled) continue
      if (reconnecting && IDEMPOTENT.has(command.name) && !resent.has(command)) {
        resent.add(command)
        hold(command)
      } else {
        command.reject(lost(command.name))
      }
    }
    written.clear()
  })
  client.on('error', () => {
    if (client.status === 'ready') return // the socket failed while connected: its `close` follows
    // The reconnect failed: held commands fail as any command does while Redis is away.
    reconnecting = false
    failWaiting(new Error(CONNECTION_CLOSED))
  })
  client.on('end', () => {
    reconnecting = false
    failWaiting(new Error(CONNECTION_CLOSED))
    release()
  })

  raw.sendCommand = (command, stream, ...rest) => {
    // Pipelines and transactions write through their own stream: ioredis handles them whole.
    if (stream !== undefined || command.inTransaction === true) return send(command, stream, ...rest)
    if (!pausedRecently()) return route(command)
    startDeadline(command)
    // Twice: the first turn reads a FIN that waited during the pause, the second sees its socket closed.
    setImmediate(() => setImmediate(() => route(command)))
    return command.promise
  }
}

const CONNECTION_CLOSED = 'Connection is closed.'
/** ioredis's Cluster, offline queue off, when a command (or its failover retry) comes while it is not ready. */
const CLUSTER_NOT_READY = "Cluster isn't ready"

/** Commands written on a node's socket whose reply has not come yet (nodeGuard). */
const onSocket = new WeakSet<HeldCommand>()
const guarded = new WeakSet<HeldCommand>()

/**
 * A node of a Cluster: when its connection closes, ioredis's Cluster client sends again every command
 * that failed with "Connection is closed." (its failover path), written ones included. A command
 * written on this node that may have changed something fails instead with a sentence saying so, if
 * this connection closes before it is answered. One never written (the node's socket had already
 * ended), or answered here by a redirection (MOVED, ASK, TRYAGAIN: it did not run) and refused
 * before its next write (its new node still connecting), is left to that path, which is then safe.
 */
function nodeGuard (node: Redis): void {
  const raw = node as unknown as { sendCommand: Send }
  const send = raw.sendCommand.bind(node)
  raw.sendCommand = (command, stream, ...rest) => {
    if (stream !== undefined || command.inTransaction === true) return send(command, stream, ...rest)
    if (node.status === 'ready' && node.stream?.writable !== true) {
      command.reject(new Error(CONNECTION_CLOSED))
      return command.promise
    }
    if (node.status === 'ready' && !IDEMPOTENT.has(command.name)) {
      guardWrite(command)
      onSocket.add(command) // written now: ioredis writes at once on a ready, writable connection
    }
    return send(command)
  }
}

/** Once per command, whichever node writes it: only the loss of its pending write is "may have run". */
function guardWrite (command: HeldCommand): void {
  if (guarded.has(command)) return
  guarded.add(command)
  const reject = command.reject
  command.reject = (err) => {
    const pending = onSocket.delete(command) // any answer or failure ends the write it marks
    reject(pending && err.message === CONNECTION_CLOSED ? lost(command.name) : err)
  }
}

function lost (name: string): ConnectionLostError {
  return new ConnectionLostError(`the connection to Redis closed before it answered ${name.toUpperCase()}; it may have run, so it was not sent again`)
}
