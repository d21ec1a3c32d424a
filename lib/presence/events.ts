import type { Bus, Unsubscribe } from '../bus'
import type { Feature } from '../feature'
import type { RedisCommands } from '../redis-commands'
import type { SeenUsers } from './seen'
import { coalescingPresenceStore } from './coalesce'
import { memoryPresenceStore, redisPresenceStore, SWEEP_BATCH, type OnlineUser, type PresenceEvent, type PresenceEventType, type PresenceStore, type PresenceTimes } from './store'

// What presence does besides its store: events from every instance to local
// listeners (the same path on every tier: memory publishes on its bus too),
// the sweep that expires users, and the write-back of users seen here.

export type PresenceListener = (event: PresenceEvent) => void

/** The store of one binding and its event subscription. */
export interface PresenceBinding { store: PresenceStore, stop: Unsubscribe }

export interface PresenceEvents {
  on: (type: PresenceEventType, listener: PresenceListener) => () => void
  /** A message from the bus: one event, or a sweep's batch of leaves. */
  receive: (message: unknown) => void
}

/** `observe` hears every event first (the coalescing store: what it assumes about who is online stays true). */
export function presenceEvents (seen: SeenUsers, onListenerError: (event: PresenceEvent, err: unknown) => void, observe: (event: PresenceEvent) => void = () => {}): PresenceEvents {
  const listeners = new Map<PresenceEventType, Set<PresenceListener>>()
  function emit (event: PresenceEvent): void {
    observe(event)
    for (const listener of listeners.get(event.type) ?? []) {
      try {
        listener(event)
      } catch (err) {
        onListenerError(event, err)
      }
    }
  }
  return {
    on (type, listener) {
      let set = listeners.get(type)
      if (set === undefined) listeners.set(type, set = new Set())
      set.add(listener)
      return () => { set.delete(listener) }
    },
    receive (message) {
      const m = message as Partial<PresenceEvent> & { meta?: unknown, userIds?: unknown } | null
      if (m !== null && typeof m === 'object' && m.type === 'leave' && Array.isArray(m.userIds)) {
        for (const userId of m.userIds) {
          if (typeof userId !== 'string') continue
          seen.left(userId)
          emit({ type: 'leave', userId }) // a sweep's batch
        }
        return
      }
      if (m === null || typeof m !== 'object' || typeof m.userId !== 'string' || (m.type !== 'join' && m.type !== 'leave' && m.type !== 'status')) return
      if (m.type === 'leave') seen.left(m.userId)
      let meta: unknown = m.meta
      if (typeof meta === 'string') {
        try { meta = JSON.parse(meta) } catch { /* left as text */ }
      }
      emit({ type: m.type, userId: m.userId, ...(m.status !== undefined ? { status: m.status } : {}), ...(meta !== undefined ? { meta } : {}) })
    }
  }
}

export interface PresenceOpenOptions {
  prefix: string
  channel: string
  times: PresenceTimes
  receive: (message: unknown) => void
  /** A memory store's event could not be published on its bus. */
  onLost: (err: Error) => void
  /** Heartbeats are coalesced where they are billed (0: each written at once); `onEvent` gets the events a flush causes. */
  coalesce: { flushMs: number, onEvent: (event: PresenceEvent) => void }
}

/** The store of a binding (Redis where there are commands, this instance's memory else) and its subscription. */
export async function openPresence (binding: { commands: RedisCommands | null, bus: Bus }, o: PresenceOpenOptions): Promise<PresenceBinding> {
  const { commands, bus } = binding
  // The memory tier writes each heartbeat at once: nothing is billed there.
  const store = coalescingPresenceStore(commands !== null
    ? redisPresenceStore(commands, o.prefix, o.channel, o.times)
    : memoryPresenceStore(o.times, (event) => { bus.publish(o.channel, event).catch(o.onLost) }),
  { flushMs: commands !== null ? o.coalesce.flushMs : 0, ttlMs: o.times.ttlMs, refreshMs: Math.floor(o.times.lastSeenTtlMs / 2), onEvent: o.coalesce.onEvent })
  return { store, stop: await bus.subscribe(o.channel, o.receive) }
}

/**
 * On app close (`last`) the heartbeats coalesced here are written and a failure reported; after a
 * move, best effort and not awaited (the old tier may be the one that went away).
 */
export async function closePresence (binding: PresenceBinding, last: boolean, onError: (err: unknown) => void): Promise<void> {
  const flushed = binding.store.close?.(Date.now())
  if (last) await flushed?.catch(onError)
  else void flushed?.catch(() => {})
  await binding.stop()
}

/** Each user's devices as last seen, 100 users at a time. */
export async function writeBack (users: OnlineUser[], write: (user: OnlineUser, device: string, at: number) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < users.length; i += 100) {
    await Promise.all(users.slice(i, i + 100).flatMap((u) => u.devices.map(async ([device, at]) => await write(u, device, at))))
  }
}

/**
 * Expiry: the store is swept until nothing expired is left (in batches of SWEEP_BATCH, each one
 * round trip), so a leave is never later than the sweep interval whatever the rate. One sweep at a
 * time; a failure is reported, the next sweep tries again.
 */
function presenceSweeper (onGone: (userId: string) => void, onError: (err: unknown) => void): { sweep: (store: PresenceStore) => Promise<void>, stop: () => void } {
  let sweeping = false
  let stopped = false
  return {
    async sweep (store) {
      if (sweeping) return // the previous sweep is still draining
      sweeping = true
      try {
        while (!stopped) {
          const gone = await store.sweep(Date.now())
          for (const userId of gone) onGone(userId)
          if (gone.length < SWEEP_BATCH) break
        }
      } catch (err) {
        onError(err)
      } finally {
        sweeping = false
      }
    },
    stop: () => { stopped = true }
  }
}

/**
 * Every instance sweeps every PRESENCE_TTL_MS / 2 (`onGone`: a user it removed, whose leave it
 * publishes once). When Redis came back empty, the users seen here are written back as last seen
 * (no join: they never left); those who stopped heartbeating expire on the sweep that follows.
 */
export function presenceUpkeep (feature: Feature<PresenceBinding>, seen: SeenUsers, ttlMs: number, flushMs: number, onGone: (userId: string) => void): void {
  const failed = (key: string, what: string) => (err: unknown) => feature.warn(key, `${what}: ${feature.connections.redact(err).message}`)
  const sweeper = presenceSweeper(onGone, (err) => failed('presence-sweep', `presence sweep failed on ${feature.tier ?? '?'}`)(err))
  // Every PRESENCE_FLUSH_MS the store writes the heartbeats it coalesced; a sweep that is due (every
  // PRESENCE_TTL_MS / 2, while anyone may be online) folds into that script.
  feature.every(Math.max(10, flushMs > 0 ? flushMs : Math.floor(ttlMs / 2)), () => {
    seen.prune(Date.now())
    if (feature.store !== null) void sweeper.sweep(feature.store.store)
  })
  feature.onClose(sweeper.stop)
  feature.onRestarted((tier) => {
    const store = feature.store?.store
    if (store === undefined) return
    const users = seen.all()
    writeBack(users, async (u, device, at) => await store.restore(u.userId, device, u.status, u.metaJson, at)).then(() => {
      feature.log.info({ tier, users: users.length }, `presence: Redis on ${tier} came back empty; wrote back the ${users.length} users this instance saw within the TTL`)
      return sweeper.sweep(store)
    }, failed('presence-restore', 'presence: users seen here could not be written back after Redis came back empty'))
  })
}
