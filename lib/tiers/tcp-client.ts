import { createHash } from 'node:crypto'
import type { Cluster, ClusterOptions, Redis, RedisOptions } from 'ioredis'
import type { Meter } from '../redis-commands'
import { holdWhileReconnecting } from './tcp-reconnect'

// What the tcp tier's client is and what its users do with it beyond the
// driver contract: tell a Cluster, duplicate a connection (the bus's
// subscribers, BullMQ's), meter a client handed to a library, close within a
// deadline. The driver (tcp.ts), its transport and the queues import this,
// never each other.

/** The tcp tier's client: one Redis, or a Redis Cluster (detected at the probe). */
export type TcpClient = Redis | Cluster

export function isCluster (client: TcpClient): client is Cluster {
  return (client as Partial<Cluster>).isCluster === true
}

// Clusters whose servers have sharded pub/sub (Redis 7): set by the probe.
export const shardedPubSub = new WeakSet<Cluster>()

/**
 * On a cluster with sharded pub/sub, a channel named with a hash tag (`{...}`)
 * is a shard channel: SPUBLISH/SSUBSCRIBE, carried only by the nodes of its
 * slot instead of broadcast to every node.
 */
export function isShardChannel (client: TcpClient, channel: string): boolean {
  return channel.startsWith('{') && isCluster(client) && shardedPubSub.has(client)
}

/**
 * Another connection with the same settings (a Cluster duplicates as a Cluster: `overrides` apply
 * to each node, `cluster` to the cluster client; its offline queue follows the nodes' setting).
 */
export function duplicateTcp (client: TcpClient, connectionName: string, overrides: RedisOptions = {}, cluster: Partial<ClusterOptions> = {}): TcpClient {
  // A patient connection (offline queue, BullMQ's workers) waits for a reconnect by itself.
  if (!isCluster(client)) {
    const duplicate = client.duplicate({ connectionName, ...overrides })
    if (duplicate.options.enableOfflineQueue === false) holdWhileReconnecting(duplicate)
    return duplicate
  }
  const { options } = client
  const offlineQueue = overrides.enableOfflineQueue ?? options.enableOfflineQueue
  const duplicate = client.duplicate([], { ...options, ...cluster, enableOfflineQueue: offlineQueue, redisOptions: { ...options.redisOptions, connectionName, ...overrides } })
  if (offlineQueue === false) holdWhileReconnecting(duplicate)
  return duplicate
}

/**
 * Tells `meter` of every command `client` sends, pipelines and connection set-up included, and
 * makes every duplicate of it do the same: for clients handed to a library that sends commands of
 * its own (BullMQ, which duplicates what it is given for its blocking connections). A script
 * defined on it (defineCommand) is billed `scriptCost(name)`, learnt as the library defines it.
 */
export function meterTcp<T extends TcpClient> (client: T, meter: Meter, scriptCost: (name: string) => number, costs = new Map<string, number>()): T {
  type Send = (command: { name: string, args: unknown[] }, ...rest: unknown[]) => unknown
  type Define = (name: string, definition: { lua: string, numberOfKeys?: number }) => void
  type Duplicate = (...args: unknown[]) => TcpClient
  const raw = client as unknown as { sendCommand: Send, defineCommand: Define, duplicate: Duplicate }
  const send = raw.sendCommand.bind(client)
  const define = raw.defineCommand.bind(client)
  const duplicate = raw.duplicate.bind(client)
  raw.defineCommand = (name, definition) => {
    costs.set(sha1(definition.lua), scriptCost(name))
    define(name, definition)
  }
  raw.sendCommand = (command, ...rest) => {
    const { name, args } = command
    meter(name === 'evalsha' ? costs.get(String(args[0])) ?? 1 : name === 'eval' ? costs.get(sha1(String(args[0]))) ?? 1 : 1)
    return send(command, ...rest)
  }
  raw.duplicate = (...args) => meterTcp(duplicate(...args), meter, scriptCost, costs)
  return client
}

/** Ask the server to close, but never wait longer than `ms`. */
export async function closeTcp (client: TcpClient, ms: number): Promise<void> {
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

export function sha1 (text: string): string {
  return createHash('sha1').update(text).digest('hex')
}
