import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { redisSseStore, memorySseStore, parseId, isEventId, compareIds, type Replay, type SseEvent, type SseStore } from '../lib/sse/store'
import { clientRegistry, type Client } from '../lib/sse/clients'
import { parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { FeatureUnavailableError, ForbiddenError, InvalidInputError } from '../lib/errors'
import { claimFeatureDecorator } from '../lib/decorators'
import { resolvePrefix } from '../lib/prefix'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import type { FeatureRequirement, Resolution, Tier } from '../lib/resolve-tier'
import type { Unsubscribe } from '../lib/bus'

export const sseRequirement: FeatureRequirement = { feature: 'sse', fallback: 'memory', flag: 'SSE_ENABLED' }

export type Authorize = (request: FastifyRequest, channel: string) => boolean | Promise<boolean>

export interface SsePluginOptions {
  /** Who may watch a channel (default: everyone). A stream's own `authorize` wins. */
  authorize?: Authorize
  /** Key namespace for histories and the fan-out channel; overrides SSE_PREFIX (default: the name in package.json). */
  prefix?: string
}

export interface StreamOptions {
  authorize?: Authorize
}

export interface SseStats {
  clients: number
  channels: number
  published: number
  delivered: number
  replayed: number
  slowClientsDropped: number
  redisErrors: number
}

export interface Sse {
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
  /** Sends `data` to every client of `channel` on every instance; resolves with the event id. */
  publish: (channel: string, data: unknown, opts?: { event?: string }) => Promise<string>
  /** Turns the reply into an event stream of `channels` (replaying from Last-Event-ID). */
  stream: (request: FastifyRequest, reply: FastifyReply, channels: readonly string[], opts?: StreamOptions) => Promise<void>
  stats: () => SseStats
}

declare module 'fastify' {
  interface FastifyInstance {
    sse: Sse
  }
}

export const CHANNEL_PATTERN = /^[A-Za-z0-9:_.-]{1,128}$/
const EVENT_PATTERN = /^[A-Za-z0-9:_.-]{1,64}$/
const MAX_CHANNELS_PER_STREAM = 20
const RESET = 'event: reset\ndata: {}\n\n'
const STREAM_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  'x-accel-buffering': 'no'
}

/** Last-Event-ID, or `?lastEventId=` where the client cannot set headers (EventSource's first connect). */
function lastEventId (request: FastifyRequest): string | null {
  const header = request.headers['last-event-id']
  if (typeof header === 'string' && header !== '') return header
  const query = (request.query as Record<string, unknown> | undefined)?.lastEventId
  return typeof query === 'string' && query !== '' ? query : null
}

function validChannel (channel: unknown): channel is string {
  return typeof channel === 'string' && CHANNEL_PATTERN.test(channel)
}

async function ssePlugin (fastify: FastifyInstance, opts: SsePluginOptions): Promise<void> {
  claimFeatureDecorator(fastify, 'sse', 'another SSE plugin')
  const { connections } = fastify
  const variable = connections.variable
  const settings = {
    heartbeatMs: parseIntegerVariable(variable, 'SSE_HEARTBEAT_MS', 15_000, 10, 3_600_000),
    retryMs: parseIntegerVariable(variable, 'SSE_RETRY_MS', 3_000, 0, 3_600_000),
    history: { maxLength: parseIntegerVariable(variable, 'SSE_HISTORY', 1000, 1, 1_000_000), ttlMs: parseDurationVariable(variable, 'SSE_HISTORY_TTL', '1h') },
    maxClients: parseIntegerVariable(variable, 'SSE_MAX_CLIENTS', 10_000, 1, 10_000_000),
    maxBufferBytes: parseIntegerVariable(variable, 'SSE_MAX_BUFFER_BYTES', 1024 * 1024, 1024, 2 ** 31),
    timeoutMs: parseIntegerVariable(variable, 'SSE_TIMEOUT_MS', 1000, 1, 60_000)
  }
  const prefix = resolvePrefix(opts.prefix, 'SSE_PREFIX', variable)
  // On a Redis Cluster with sharded pub/sub the fan-out channel is a shard channel (hash-tagged):
  // SPUBLISH reaches only the nodes of its slot instead of every node.
  const fanoutChannel = (sharded: boolean): string => sharded ? `{${prefix}:sse}:events` : `${prefix}:sse:events`
  const log = fastify.log.child({ plugin: 'sse' })
  const warn = rateLimitedWarn(log)

  const counters = { published: 0, delivered: 0, replayed: 0, slowClientsDropped: 0, redisErrors: 0 }
  const clients = clientRegistry(settings, counters, () => releaseWhenIdle())
  /** The one fan-out subscription per instance, on the bus of the current tier, held while any client is connected. */
  let fanout: Promise<Unsubscribe> | null = null
  /** Slots taken by streams that are not registered yet (authorize, subscribe); the fan-out must outlive them. */
  let reserved = 0
  /**
   * When this instance saw the histories' Redis come back empty: an id older than that was in the
   * lost history, so what came after it there cannot be replayed (0: never).
   */
  let historyLostAt = 0
  let closing = false

  function onFanout (message: unknown): void {
    const m = message as { c?: unknown, i?: unknown, e?: unknown, d?: unknown } | null
    if (m === null || typeof m !== 'object' || typeof m.c !== 'string' || typeof m.i !== 'string') return
    clients.deliver({ channel: m.c, id: m.i, event: typeof m.e === 'string' ? m.e : '', data: typeof m.d === 'string' ? m.d : '' })
  }

  /** The store of one resolution; every store notifies through the bus of its tier (memory included). */
  interface Binding { tier: Tier | null, reason: string, store: SseStore | null, channel: string }

  function bindTo (resolution: Resolution): Binding {
    const tier = resolution.status === 'active' ? resolution.tier : null
    const commands = tier !== null ? connections.commands(tier, settings.timeoutMs, 'sse') : null
    const memoryBus = tier === 'memory' ? connections.bus('memory') : null
    const channel = fanoutChannel(commands?.shardedPubSub === true)
    const store = commands !== null
      ? redisSseStore(commands, prefix, channel, settings.history, () => connections.usage.shedding)
      : memoryBus !== null ? memorySseStore(settings.history, (notice) => { memoryBus.publish(channel, notice).catch(() => {}) }) : null
    return { tier, reason: resolution.reason, store, channel }
  }

  function subscribeFanout (of: Binding): Promise<Unsubscribe> | null {
    return of.tier === null ? null : connections.bus(of.tier).subscribe(of.channel, onFanout, () => { void catchUp() })
  }

  // Connected clients stay connected through a move: the fan-out moves to the new tier's bus
  // first, then the store; ids of the new tier are a new sequence, so every event on it is new to
  // them. What other instances published there since each client's last event is caught up.
  let binding = bindTo(connections.resolve(sseRequirement, async (next) => {
    const fresh = bindTo(next)
    const moved = fanout !== null ? subscribeFanout(fresh) : null
    if (moved !== null) await moved
    const old = fanout
    binding = fresh
    fanout = moved
    clients.forgetIds()
    if (old !== null) await (await old)()
    if (moved !== null) await catchUp()
  }))

  async function ensureFanout (): Promise<void> {
    if (binding.tier === null) return
    fanout ??= subscribeFanout(binding)
    await fanout
  }

  /**
   * After a gap in the subscription (a reconnect, a resubscribed REST stream), every connected
   * client gets what was published meanwhile from the history, once and in order, before live
   * events resume: they wait in `pending` while the history is read, as on a first connect.
   */
  async function catchUp (): Promise<void> {
    const store = binding.store
    if (store === null) return
    const groups = new Map<string, Client[]>()
    for (const client of clients.all()) {
      if (client.pending !== null) continue // still replaying its own history
      client.pending = []
      const key = client.channels.join(',')
      const group = groups.get(key)
      if (group !== undefined) group.push(client)
      else groups.set(key, [client])
    }
    for (const group of groups.values()) {
      const from = group.reduce((min, c) => Math.min(min, c.lastMs >= 0 ? c.lastMs : c.floorMs), Infinity)
      let events: SseEvent[] = []
      try {
        events = (await store.replay(group[0].channels, `${Math.max(0, from - 1)}-0`)).events
      } catch (err) {
        counters.redisErrors++
        warn('sse-catch-up', `sse catch-up after a subscription gap failed on ${binding.tier ?? '?'}: ${connections.redact(err).message}`)
      }
      for (const client of group) {
        for (const event of events) clients.send(client, event, true)
        clients.flushPending(client)
      }
    }
  }

  function releaseWhenIdle (): void {
    if (clients.size > 0 || reserved > 0) return
    const current = fanout
    fanout = null
    if (current !== null) void current.then(async (unsubscribe) => await unsubscribe())
  }

  function unavailable (why: string): never {
    throw new FeatureUnavailableError('sse', why)
  }

  async function checkAuthorized (authorize: Authorize | undefined, request: FastifyRequest, channels: readonly string[]): Promise<void> {
    if (authorize === undefined) return
    for (const channel of channels) {
      if (!(await authorize(request, channel))) throw new ForbiddenError(`not allowed to watch ${channel}`)
    }
  }

  /**
   * Replays what the client missed since `lastId`, then sends what arrived
   * meanwhile (held in `pending`) minus what the replay already contained.
   * Without an id there is nothing to replay. A malformed id, one older than
   * the retained history, or one beyond the newest event (a client cannot have
   * seen it: forged, or from another database), or one from a history that
   * Redis lost (it came back empty) gets `event: reset`; live events then
   * flow as to a new client.
   */
  async function resume (client: Client, lastId: string | null): Promise<void> {
    const { store } = binding
    if (lastId !== null && store !== null) {
      const valid = isEventId(lastId)
      let replay: Replay
      try {
        replay = valid ? await store.replay(client.channels, lastId) : { events: [], reset: true, newest: null }
      } catch (err) {
        counters.redisErrors++
        warn('sse-replay', `sse replay failed on ${binding.tier ?? '?'}: ${connections.redact(err).message}`)
        replay = { events: [], reset: true, newest: null } // history unreachable: the client must resync
      }
      const beyond = valid && (replay.newest !== null ? compareIds(lastId, replay.newest) > 0 : parseId(lastId)[0] > Date.now())
      const lost = valid && parseId(lastId)[0] < historyLostAt
      // What the client has seen is not sent again (a lagging fan-out may still bring it), unless it cannot have seen it.
      if (valid && !beyond) [client.lastMs, client.lastSeq] = parseId(lastId)
      if (replay.reset || beyond || lost) clients.write(client, RESET)
      for (const event of replay.events) clients.send(client, event, true)
    }
    clients.flushPending(client)
  }

  const sse: Sse = {
    get available () { return binding.store !== null },
    get tier () { return binding.tier },
    get reason () { return binding.reason },

    async publish (channel, data, options = {}) {
      const { store } = binding
      if (store === null) unavailable(binding.reason)
      if (!validChannel(channel)) throw new InvalidInputError(`invalid channel name: 1-128 letters, digits or : _ . -`)
      const event = options.event ?? ''
      if (event !== '' && !EVENT_PATTERN.test(event)) throw new InvalidInputError('invalid event name: 1-64 letters, digits or : _ . -')
      if (data === undefined) throw new InvalidInputError('event data is required')
      const text = typeof data === 'string' ? data : JSON.stringify(data)
      try {
        const id = await store.publish(channel, event, text)
        counters.published++
        return id
      } catch (err) {
        counters.redisErrors++ // the caller gets the reason (and the routes log it, rate-limited)
        return unavailable(`Redis did not accept the event: ${connections.explain(binding.tier, err)}`)
      }
    },

    async stream (request, reply, channels, options = {}) {
      if (binding.store === null) unavailable(binding.reason)
      if (closing) unavailable('the server is shutting down')
      const given: unknown = channels // callers from JavaScript may pass anything
      if (!Array.isArray(given) || channels.length === 0 || channels.length > MAX_CHANNELS_PER_STREAM) {
        throw new InvalidInputError(`a stream needs 1-${MAX_CHANNELS_PER_STREAM} channels`)
      }
      for (const channel of channels) {
        if (!validChannel(channel)) throw new InvalidInputError('invalid channel name: 1-128 letters, digits or : _ . -')
      }
      const authorize = options.authorize ?? opts.authorize
      // HEAD: the answer a GET would start with, at once, and no slot.
      if (request.method === 'HEAD') {
        await checkAuthorized(authorize, request, channels)
        await reply.code(200).headers(STREAM_HEADERS).send()
        return
      }
      // The slot is taken before the first await, so a burst of connects cannot overshoot SSE_MAX_CLIENTS;
      // it becomes the client's once the stream is registered, or is given back on any other way out.
      if (clients.size + reserved >= settings.maxClients) unavailable('too many event streams on this instance (SSE_MAX_CLIENTS); retry later')
      reserved++
      let client: Client
      try {
        await checkAuthorized(authorize, request, channels)
        // Listen before answering: once the client has our headers, nothing it is sent can be missed.
        await ensureFanout()
        if (request.raw.destroyed) return // gone while we subscribed
        client = clients.add(reply.raw, channels)
      } finally {
        reserved--
        releaseWhenIdle()
      }
      reply.hijack()
      const res = client.res
      res.writeHead(200, STREAM_HEADERS)
      res.write(`retry: ${settings.retryMs}\n\n`)
      // Node keeps the response head for the life of the response as a tree of
      // some 40 concatenated strings (0.5 KB per idle stream, measured with a
      // heap snapshot); reading it as a number makes V8 flatten it in place.
      void Number((res as unknown as { _header: unknown })._header)
      await resume(client, lastEventId(request))
    },

    stats () {
      return { ...counters, clients: clients.size, channels: clients.channelCount }
    }
  }

  const offRestarted = connections.on('restarted', ({ tier }) => { if (binding.tier === tier) historyLostAt = Date.now() })

  connections.describe('sse', () => ({ stats: sse.stats() }))
  fastify.decorate('sse', sse)

  // Streams never end on their own: end them before the server waits for open connections.
  fastify.addHook('preClose', async () => {
    closing = true
    clients.endAll()
  })
  fastify.addHook('onClose', async () => {
    offRestarted()
    clients.stop()
    const current = fanout
    fanout = null
    if (current !== null) await (await current)()
  })
}

export default fp(ssePlugin, { name: 'sse', fastify: '5.x', dependencies: ['connections'] })
