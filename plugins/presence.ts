import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { redisPresenceStore, memoryPresenceStore, SWEEP_BATCH, type OnlineUser, type PresenceEntry, type PresenceEvent, type PresenceEventType, type PresenceStore } from '../lib/presence/store'
import { seenUsers } from '../lib/presence/seen'
import { coalescingPresenceStore, presenceFlushMs } from '../lib/presence/coalesce'
import { parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { FeatureUnavailableError, InvalidInputError } from '../lib/errors'
import { claimFeatureDecorator } from '../lib/decorators'
import { resolvePrefix } from '../lib/prefix'
import { rateLimitedWarn } from '../lib/rate-limited-log'
import type { FeatureRequirement, Resolution, Tier } from '../lib/resolve-tier'
import type { RedisCommands } from '../lib/redis-commands'
import type { Unsubscribe } from '../lib/bus'

export const presenceRequirement: FeatureRequirement = { feature: 'presence', tiers: ['tcp', 'rest'], fallback: 'memory', flag: 'PRESENCE_ENABLED' }

export interface PresencePluginOptions {
  prefix?: string
  /** Who is asking (e.g. from a verified session); without it `identify()` answers undefined and the routes are not mounted. */
  identify?: (request: FastifyRequest) => string | undefined | Promise<string | undefined>
}

export interface HeartbeatOptions { status?: string, meta?: unknown, device?: string }
export type PresenceListener = (event: PresenceEvent) => void

export interface Presence {
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
  heartbeat: (userId: string, opts?: HeartbeatOptions) => Promise<{ joined: boolean }>
  leave: (userId: string, opts?: { device?: string }) => Promise<void>
  isOnline: (userId: string) => Promise<boolean>
  get: (userId: string) => Promise<PresenceEntry | null>
  list: (opts?: { limit?: number, cursor?: string }) => Promise<{ users: PresenceEntry[], cursor: string | null }>
  count: () => Promise<number>
  lastSeen: (userId: string) => Promise<number | null>
  /** Round trips to Redis on the current tier (the commands they are billed: `fastify.connections.usage`). */
  stats: () => { redisCommands: number }
  /** join / leave / status events from every instance; returns a function that removes the listener. */
  on: (type: PresenceEventType, listener: PresenceListener) => () => void
  identify: (request: FastifyRequest) => Promise<string | undefined>
}

declare module 'fastify' {
  interface FastifyInstance {
    presence: Presence
  }
}

const USER_ID = /^[A-Za-z0-9:_.@-]{1,128}$/
const DEVICE = /^[A-Za-z0-9:_.-]{1,64}$/
export const MAX_STATUS_LENGTH = 64
export const MAX_META_BYTES = 1024
export const SSE_CHANNEL = 'public:presence'

async function presencePlugin (fastify: FastifyInstance, opts: PresencePluginOptions): Promise<void> {
  claimFeatureDecorator(fastify, 'presence')
  const { connections } = fastify
  const variable = connections.variable
  const times = {
    ttlMs: parseIntegerVariable(variable, 'PRESENCE_TTL_MS', 60_000, 10, 86_400_000),
    lastSeenTtlMs: parseDurationVariable(variable, 'PRESENCE_LAST_SEEN_TTL', '7d')
  }
  const flushMs = presenceFlushMs(variable, times.ttlMs)
  const timeoutMs = parseIntegerVariable(variable, 'PRESENCE_TIMEOUT_MS', 1000, 1, 60_000)
  const prefix = resolvePrefix(opts.prefix, 'PRESENCE_PREFIX', variable)
  const channel = `${prefix}:presence:events`
  const log = fastify.log.child({ plugin: 'presence' })
  const warn = rateLimitedWarn(log)

  const listeners = new Map<PresenceEventType, Set<PresenceListener>>()
  const seen = seenUsers(times.ttlMs)
  function emit (event: PresenceEvent): void {
    for (const listener of listeners.get(event.type) ?? []) {
      try {
        listener(event)
      } catch (err) {
        warn('presence-listener', `presence ${event.type} listener threw: ${connections.redact(err).message}`)
      }
    }
  }

  /** Browsers can watch presence on the `public:presence` SSE channel when the sse plugin runs; the instance that caused an event publishes it once. */
  function toBrowsers (event: PresenceEvent): void {
    if (!fastify.hasDecorator('sse') || !fastify.sse.available) return
    fastify.sse.publish(SSE_CHANNEL, event, { event: event.type }).catch((err: Error) => warn('presence-sse', `presence event not streamed: ${connections.redact(err).message}`))
  }

  /** Every presence event, from any instance: the coalescing store hears it (what it assumes stays true), then the listeners. */
  function heard (event: PresenceEvent): void {
    binding.store?.observe?.(event)
    emit(event)
  }

  function onEvent (message: unknown): void {
    const m = message as Partial<PresenceEvent> & { meta?: unknown, userIds?: unknown } | null
    if (m !== null && typeof m === 'object' && m.type === 'leave' && Array.isArray(m.userIds)) {
      for (const userId of m.userIds) {
        if (typeof userId !== 'string') continue
        seen.left(userId)
        heard({ type: 'leave', userId }) // a sweep's batch
      }
      return
    }
    if (m === null || typeof m !== 'object' || typeof m.userId !== 'string' || (m.type !== 'join' && m.type !== 'leave' && m.type !== 'status')) return
    if (m.type === 'leave') seen.left(m.userId)
    let meta: unknown = m.meta
    if (typeof meta === 'string') {
      try { meta = JSON.parse(meta) } catch { /* left as text */ }
    }
    heard({ type: m.type, userId: m.userId, ...(m.status !== undefined ? { status: m.status } : {}), ...(meta !== undefined ? { meta } : {}) })
  }

  /** The store of one resolution and its event subscription: the same event path on every tier. */
  interface Binding { tier: Tier | null, reason: string, store: PresenceStore | null, commands: RedisCommands | null, stop?: Unsubscribe }

  async function bindTo (resolution: Resolution): Promise<Binding> {
    const tier = resolution.status === 'active' ? resolution.tier : null
    if (tier === null) return { tier, reason: resolution.reason, store: null, commands: null }
    const commands = tier === 'memory' ? null : connections.commands(tier, timeoutMs, 'presence')
    const bus = connections.bus(tier)
    // Heartbeats are coalesced where they are billed; the memory tier writes each one at once (free).
    const store = coalescingPresenceStore(commands !== null
      ? redisPresenceStore(commands, prefix, channel, times)
      : memoryPresenceStore(times, (event) => { bus.publish(channel, event).catch((err: Error) => warn('presence-event', `presence event lost: ${connections.redact(err).message}`)) }),
    { flushMs: commands !== null ? flushMs : 0, ttlMs: times.ttlMs, refreshMs: Math.floor(times.lastSeenTtlMs / 2), onEvent: toBrowsers })
    const stop = await bus.subscribe(channel, onEvent)
    return { tier, reason: resolution.reason, store, commands, stop }
  }

  /** Each user's devices as last seen, 100 users at a time. */
  async function writeBack (users: OnlineUser[], write: (user: OnlineUser, device: string, at: number) => Promise<unknown>): Promise<void> {
    for (let i = 0; i < users.length; i += 100) {
      await Promise.all(users.slice(i, i + 100).flatMap((u) => u.devices.map(async ([device, at]) => await write(u, device, at))))
    }
  }

  let binding = await bindTo(connections.resolve(presenceRequirement, async (next) => {
    const fresh = await bindTo(next)
    try {
      // Users known only to this instance are written to the shared store, so that nobody appears to leave.
      await writeBack(binding.store?.online?.(Date.now()) ?? [], async (u, device, at) => await fresh.store?.heartbeat(u.userId, device, u.status, u.metaJson, at))
    } catch (err) {
      await fresh.stop?.()
      throw err
    }
    const old = binding
    binding = fresh
    await old.stop?.()
    void old.store?.close?.(Date.now()).catch(() => {}) // best effort, not awaited: the old tier may be the one that went away
  }))

  /**
   * Presence is state, not a cache: a Redis failure is a 503 with the reason, not a silent miss.
   * The caller gets the reason (and the routes log it, rate-limited): no second log line here.
   */
  async function call<T> (operation: string, fn: (s: PresenceStore) => Promise<T>): Promise<T> {
    const { store } = binding
    if (store === null) throw new FeatureUnavailableError('presence', binding.reason)
    try {
      return await fn(store)
    } catch (err) {
      throw new FeatureUnavailableError('presence', `Redis did not answer the ${operation} (${connections.explain(binding.tier, err)}); try again`)
    }
  }

  function checkUser (userId: unknown): string {
    if (typeof userId !== 'string' || !USER_ID.test(userId)) throw new InvalidInputError('userId must be 1-128 letters, digits or : _ . @ -')
    return userId
  }

  function checkDevice (device: unknown): string {
    if (typeof device !== 'string' || !DEVICE.test(device)) throw new InvalidInputError('device must be 1-64 letters, digits or : _ . -')
    return device
  }

  const presence: Presence = {
    get available () { return binding.store !== null },
    get tier () { return binding.tier },
    get reason () { return binding.reason },
    async heartbeat (userId, options = {}) {
      checkUser(userId)
      const status = options.status ?? 'online'
      if (typeof status !== 'string' || status.length > MAX_STATUS_LENGTH) throw new InvalidInputError(`status must be a string of at most ${MAX_STATUS_LENGTH} characters`)
      const device = checkDevice(options.device ?? 'default')
      const metaJson = JSON.stringify(options.meta ?? null)
      if (Buffer.byteLength(metaJson) > MAX_META_BYTES) throw new InvalidInputError(`meta must be JSON of at most ${MAX_META_BYTES} bytes`)
      const now = Date.now()
      const event = await call('heartbeat', async (s) => await s.heartbeat(userId, device, status, metaJson, now))
      seen.heartbeat(userId, device, status, metaJson, now)
      if (event !== null) toBrowsers({ type: event, userId, status, meta: options.meta ?? null })
      return { joined: event === 'join' }
    },
    async leave (userId, options = {}) {
      checkUser(userId)
      const device = checkDevice(options.device ?? 'default')
      const left = await call('leave', async (s) => await s.leave(userId, device, Date.now()))
      seen.leave(userId, device)
      if (left) toBrowsers({ type: 'leave', userId })
    },
    async isOnline (userId) {
      return (await presence.get(userId)) !== null
    },
    async get (userId) {
      checkUser(userId)
      return await call('read', async (s) => await s.get(userId, Date.now()))
    },
    async list (options = {}) {
      const limit = Math.min(Math.max(1, Math.floor(options.limit ?? 50)), 500)
      const offset = options.cursor !== undefined ? Number.parseInt(options.cursor, 10) : 0
      if (!Number.isInteger(offset) || offset < 0) throw new InvalidInputError('cursor must come from a previous list() answer')
      const users = await call('list', async (s) => await s.list(Date.now(), offset, limit))
      return { users, cursor: users.length === limit ? String(offset + limit) : null }
    },
    async count () {
      return await call('count', async (s) => await s.count(Date.now()))
    },
    async lastSeen (userId) {
      checkUser(userId)
      return await call('read', async (s) => await s.lastSeen(userId))
    },
    stats: () => ({ redisCommands: binding.commands?.sent() ?? 0 }),
    on (type, listener) {
      let set = listeners.get(type)
      if (set === undefined) listeners.set(type, set = new Set())
      set.add(listener)
      return () => { set.delete(listener) }
    },
    async identify (request) {
      const id = opts.identify !== undefined ? await opts.identify(request) : undefined
      return id !== undefined && USER_ID.test(id) ? id : undefined
    }
  }

  // Every PRESENCE_FLUSH_MS the store writes the heartbeats it coalesced; when a sweep is due (every
  // PRESENCE_TTL_MS / 2, while anyone may be online) it folds into that script, and repeats until
  // nothing expired is left (batches of SWEEP_BATCH), so a leave is never later than half a TTL
  // (plus one tick) whatever the rate. The script removes each user once and publishes its leave once.
  let sweeping = false
  let closed = false
  async function sweepExpired (active: PresenceStore): Promise<void> {
    if (sweeping) return // the previous sweep is still draining
    sweeping = true
    try {
      while (!closed) {
        const gone = await active.sweep(Date.now())
        for (const userId of gone) toBrowsers({ type: 'leave', userId })
        if (gone.length < SWEEP_BATCH) break
      }
    } catch (err) {
      warn('presence-sweep', `presence sweep failed on ${binding.tier ?? '?'}: ${connections.redact(err).message}`)
    } finally {
      sweeping = false
    }
  }
  const sweeper = setInterval(() => {
    seen.prune(Date.now())
    if (binding.store !== null) void sweepExpired(binding.store)
  }, Math.max(10, flushMs > 0 ? flushMs : Math.floor(times.ttlMs / 2)))
  sweeper.unref()

  // Redis came back empty: the users seen here are written back as last seen (no join: they never
  // left); those who stopped heartbeating expire on the sweep that follows and get their leave.
  const offRestarted = connections.on('restarted', ({ tier }) => {
    const { store } = binding
    if (binding.tier !== tier || store === null) return
    const users = seen.all()
    writeBack(users, async (u, device, at) => await store.restore(u.userId, device, u.status, u.metaJson, at)).then(() => {
      log.info({ tier, users: users.length }, `presence: Redis on ${tier} came back empty; wrote back the ${users.length} users this instance saw within the TTL`)
      return sweepExpired(store)
    }, (err: Error) => warn('presence-restore', `presence: users seen here could not be written back after Redis came back empty: ${connections.redact(err).message}`))
  })

  connections.describe('presence', () => ({ ttlMs: times.ttlMs, flushMs, stats: presence.stats() }))
  fastify.decorate('presence', presence)
  fastify.addHook('onClose', async () => {
    offRestarted()
    closed = true
    clearInterval(sweeper)
    try {
      await binding.store?.close?.(Date.now()) // the heartbeats coalesced here are not lost on a graceful shutdown
    } catch (err) {
      warn('presence-flush', `presence: the last coalesced heartbeats were not written: ${connections.redact(err).message}`)
    }
    await binding.stop?.()
  })
}

export default fp(presencePlugin, { name: 'presence', fastify: '5.x', dependencies: ['connections'] })
