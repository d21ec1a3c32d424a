import type { FastifyRequest } from 'fastify'
import type { PresenceEntry, PresenceEvent, PresenceEventType, PresenceStore } from '../lib/presence/store'
import { closePresence, openPresence, presenceEvents, presenceUpkeep, writeBack, type PresenceBinding, type PresenceListener } from '../lib/presence/events'
import { seenUsers } from '../lib/presence/seen'
import { presenceFlushMs } from '../lib/presence/coalesce'
import { parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { InvalidInputError } from '../lib/errors'
import { defineFeature, type FeatureApi, type FeatureStatus } from '../lib/feature'
import type { FeatureRequirement } from '../lib/resolve-tier'

export const presenceRequirement: FeatureRequirement = { feature: 'presence', fallback: 'memory', flag: 'PRESENCE_ENABLED' }

export interface PresencePluginOptions {
  prefix?: string
  /** Who is asking (e.g. from a verified session); without it `identify()` answers undefined and the routes are not mounted. */
  identify?: (request: FastifyRequest) => string | undefined | Promise<string | undefined>
}

export interface HeartbeatOptions { status?: string, meta?: unknown, device?: string }
export type { PresenceListener }

export interface Presence extends FeatureStatus {
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

export default defineFeature<PresencePluginOptions, PresenceBinding>({
  name: 'presence',
  setup (feature, opts) {
    const { connections, variable } = feature
    const times = {
      ttlMs: parseIntegerVariable(variable, 'PRESENCE_TTL_MS', 60_000, 10, 86_400_000),
      lastSeenTtlMs: parseDurationVariable(variable, 'PRESENCE_LAST_SEEN_TTL', '7d')
    }
    const flushMs = presenceFlushMs(variable, times.ttlMs)
    const timeoutMs = parseIntegerVariable(variable, 'PRESENCE_TIMEOUT_MS', 1000, 1, 60_000)
    const prefix = feature.prefix(opts.prefix)
    const channel = `${prefix}:presence:events`
    const failed = (key: string, what: string) => (err: unknown) => feature.warn(key, `${what}: ${connections.redact(err).message}`)
    const seen = seenUsers(times.ttlMs)
    const events = presenceEvents(seen, (event, err) => failed('presence-listener', `presence ${event.type} listener threw`)(err), (event) => feature.store?.store.observe?.(event))

    /** Browsers can watch presence on the `public:presence` SSE channel when the sse plugin runs; the instance that caused an event publishes it once. */
    function toBrowsers (event: PresenceEvent): void {
      const { fastify } = feature
      if (!fastify.hasDecorator('sse') || !fastify.sse.available) return
      feature.background(fastify.sse.publish(SSE_CHANNEL, event, { event: event.type }).catch(failed('presence-sse', 'presence event not streamed')))
    }

    /** Presence is state, not a cache: a Redis failure is a 503 with the reason, not a silent miss. */
    const call = async <T>(operation: string, fn: (s: PresenceStore) => Promise<T>): Promise<T> => await feature.guard(`answer the ${operation}`, async (b) => await fn(b.store))

    const api: FeatureApi<Presence> = {
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
      isOnline: async (userId) => (await api.get(userId)) !== null,
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
      count: async () => await call('count', async (s) => await s.count(Date.now())),
      async lastSeen (userId) {
        checkUser(userId)
        return await call('read', async (s) => await s.lastSeen(userId))
      },
      stats: () => ({ redisCommands: feature.binding?.commands?.sent() ?? 0 }),
      on: events.on,
      async identify (request) {
        const id = opts.identify !== undefined ? await opts.identify(request) : undefined
        return id !== undefined && USER_ID.test(id) ? id : undefined
      }
    }

    presenceUpkeep(feature, seen, times.ttlMs, flushMs, (userId) => toBrowsers({ type: 'leave', userId }))

    return {
      requirement: presenceRequirement,
      timeoutMs,
      open: async (binding) => await openPresence(binding, { prefix, channel, times, receive: events.receive, onLost: failed('presence-event', 'presence event lost'), coalesce: { flushMs, onEvent: toBrowsers } }),
      // Users known only to this instance are written to the shared store, so that nobody appears to leave.
      handOver: async (from, to) => await writeBack(from?.store.online?.(Date.now()) ?? [], async (u, device, at) => await to.store.heartbeat(u.userId, device, u.status, u.metaJson, at)),
      close: async (binding, next) => await closePresence(binding, next === null, failed('presence-flush', 'presence: the last coalesced heartbeats were not written')),
      describe: () => ({ ttlMs: times.ttlMs, flushMs, stats: api.stats() }),
      api
    }
  }
})

function checkUser (userId: unknown): string {
  if (typeof userId !== 'string' || !USER_ID.test(userId)) throw new InvalidInputError('userId must be 1-128 letters, digits or : _ . @ -')
  return userId
}

function checkDevice (device: unknown): string {
  if (typeof device !== 'string' || !DEVICE.test(device)) throw new InvalidInputError('device must be 1-64 letters, digits or : _ . -')
  return device
}
