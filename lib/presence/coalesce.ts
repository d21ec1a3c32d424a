import { parseIntegerVariable, type ReadVariable } from '../config'
import { ConfigError } from '../errors'
import { SWEEP_BATCH, type Beat, type PresenceEvent, type PresenceEventType, type PresenceStore } from './store'

// Presence billed per instance, not per heartbeat. A heartbeat that changes
// nothing (a device this instance already wrote, same status and meta) is not
// sent: it waits here, and every flush interval the pending heartbeats of the
// instance go out in one script (one ZADD of many members is one command,
// however many users). Joins, new devices, status or meta changes and leaves
// are written at once, as before. A pending heartbeat whose device expired in
// the meantime (nobody heartbeated it anywhere within the TTL) is written as
// a full one right after the flush: the user is back, with a join. The sweep
// folds into the flush when it is due (every TTL / 2), and runs only while
// someone may be online. Consequences, stated in docs/presence.md: a score
// (lastSeen of an online user, list order) may be up to one flush interval
// old; an instance that dies loses at most one interval of coalesced heartbeats.

export const DEFAULT_FLUSH_MS = 5000

/** Coalesced heartbeats one script carries at most (two arguments each: well within Lua's unpack limit). */
export const FLUSH_BATCH = 1000

export interface CoalesceOptions {
  /** How long a heartbeat may wait; 0 writes every heartbeat at once. */
  flushMs: number
  ttlMs: number
  /** A full heartbeat at least this often per device, so the per-user keys' TTL (lastSeen TTL) is refreshed. */
  refreshMs: number
  /** The event of a coalesced heartbeat written as a full one by the flush (a user back after expiring). */
  onEvent?: (event: PresenceEvent) => void
}

/** A pending heartbeat, with what it would write as a full one. */
interface Pending extends Beat { status: string, metaJson: string }

interface KnownDevice { at: number, sentAt: number }
interface KnownUser { status: string, metaJson: string, devices: Map<string, KnownDevice> }

const member = (userId: string, device: string): string => `${userId}\n${device}`

/**
 * Wraps a store: `heartbeat` coalesces what it can, `sweep(now)` is the periodic tick (call it
 * every flush interval: it flushes what is pending and sweeps when a sweep is due), `observe`
 * takes every presence event, `close` flushes what is left.
 */
export function coalescingPresenceStore (store: PresenceStore, options: CoalesceOptions): PresenceStore {
  const { flushMs, ttlMs, refreshMs } = options
  const sweepEveryMs = Math.max(1, Math.floor(ttlMs / 2))
  const known = new Map<string, KnownUser>()
  const pending = new Map<string, Pending>()
  // Devices this instance wrote are remembered this long without a heartbeat here: behind a
  // round-robin balancer an instance sees each user once every (instances x interval).
  const forgetAfterMs = 10 * ttlMs
  // Whether a sweep may find anyone: true at boot (users may be online from before), after any
  // heartbeat or join seen, false once a sweep leaves nobody online.
  let mayBeOnline = true
  let touched = 0
  let nextSweepAt = Date.now() + sweepEveryMs

  function forgetDevice (userId: string, device: string): void {
    const user = known.get(userId)
    user?.devices.delete(device)
    if (user?.devices.size === 0) known.delete(userId)
  }

  function take (): Pending[] {
    const beats: Pending[] = []
    for (const [key, beat] of pending) {
      if (beats.length === FLUSH_BATCH) break
      beats.push(beat)
      pending.delete(key)
    }
    return beats
  }

  async function flushOnce (now: number, sweep: boolean): Promise<string[] | null> {
    const beats = take()
    const before = touched
    let result
    try {
      result = await store.flush(beats, now, sweep)
    } catch (err) {
      // Put back what no newer heartbeat replaced: the next tick tries again.
      for (const beat of beats) if (!pending.has(member(beat.userId, beat.device))) pending.set(member(beat.userId, beat.device), beat)
      throw err
    }
    for (const { userId, device } of result.left) forgetDevice(userId, device)
    for (const userId of result.gone) known.delete(userId)
    // The device expired before these heartbeats (nobody heartbeated it anywhere within the TTL,
    // or Redis came back empty): the user is back, written as a full heartbeat (a join if offline).
    const byMember = new Map(beats.map((beat) => [member(beat.userId, beat.device), beat]))
    await Promise.all(result.expired.map(async ({ userId, device }) => {
      const beat = byMember.get(member(userId, device))
      if (beat === undefined) return
      forgetDevice(userId, device)
      const event = await write(beat.userId, beat.device, beat.status, beat.metaJson, beat.at)
      if (event !== null) options.onEvent?.({ type: event, userId, status: beat.status, meta: JSON.parse(beat.metaJson) as unknown })
    }))
    if (!sweep) return null
    if (result.gone.length < SWEEP_BATCH) nextSweepAt = now + sweepEveryMs
    if (result.online === 0 && touched === before) mayBeOnline = false
    for (const [userId, user] of known) {
      for (const [device, d] of user.devices) if (d.at <= now - forgetAfterMs) user.devices.delete(device)
      if (user.devices.size === 0) known.delete(userId)
    }
    return result.gone
  }

  /** Everything pending, in as many scripts as it takes (bounded by what was pending at the start). */
  async function flushAll (now: number, sweep: boolean): Promise<string[]> {
    const gone: string[] = []
    let rounds = Math.max(1, Math.ceil(pending.size / FLUSH_BATCH))
    let sweeping = sweep
    while (rounds-- > 0) {
      gone.push(...(await flushOnce(now, sweeping) ?? []))
      sweeping = false
      if (pending.size === 0) break
    }
    return gone
  }

  /** A full heartbeat, remembered: the next ones of this device (same status and meta) are coalesced. */
  async function write (userId: string, device: string, status: string, metaJson: string, now: number): Promise<PresenceEventType | null> {
    const event = await store.heartbeat(userId, device, status, metaJson, now)
    const next = known.get(userId) ?? { status, metaJson, devices: new Map<string, KnownDevice>() }
    Object.assign(next, { status, metaJson })
    const d = next.devices.get(device)
    next.devices.set(device, { at: Math.max(d?.at ?? 0, now), sentAt: now })
    known.set(userId, next)
    const waiting = pending.get(member(userId, device))
    if (waiting !== undefined && waiting.at <= now) pending.delete(member(userId, device))
    return event
  }

  return {
    ...store,
    async heartbeat (userId, device, status, metaJson, now) {
      mayBeOnline = true
      touched++
      const user = known.get(userId)
      const d = user?.devices.get(device)
      if (flushMs > 0 && user !== undefined && d !== undefined && user.status === status && user.metaJson === metaJson && now - d.sentAt < refreshMs) {
        d.at = Math.max(d.at, now)
        pending.set(member(userId, device), { userId, device, at: d.at, status, metaJson })
        return null
      }
      return await write(userId, device, status, metaJson, now)
    },
    async restore (userId, device, status, metaJson, at) {
      mayBeOnline = true
      touched++
      await store.restore(userId, device, status, metaJson, at)
    },
    async leave (userId, device, now) {
      pending.delete(member(userId, device))
      const left = await store.leave(userId, device, now)
      forgetDevice(userId, device)
      if (left) {
        const user = known.get(userId)
        for (const other of user?.devices.keys() ?? []) pending.delete(member(userId, other))
        known.delete(userId)
      }
      return left
    },
    /** The periodic tick: flushes what is pending, with the sweep folded in when one is due and anyone may be online. */
    async sweep (now) {
      const sweepDue = mayBeOnline && now >= nextSweepAt
      if (pending.size === 0 && !sweepDue) return []
      return await flushAll(now, sweepDue)
    },
    observe (event: PresenceEvent) {
      if (event.type === 'leave') {
        // Its pending heartbeats stay: a device that left is not written (XX), and reported stale.
        known.delete(event.userId)
        return
      }
      mayBeOnline = true
      const user = known.get(event.userId)
      if (user !== undefined && (event.status !== user.status || JSON.stringify(event.meta ?? null) !== user.metaJson)) known.delete(event.userId)
    },
    async close (now) {
      if (pending.size > 0) await flushAll(now, false)
    }
  }
}

/**
 * PRESENCE_FLUSH_MS: how long a heartbeat that changes nothing may wait before it is written
 * (default 5 s, at most a quarter of the TTL so that it lands well within it; 0 writes each one at once).
 */
export function presenceFlushMs (read: ReadVariable, ttlMs: number): number {
  const quarter = Math.floor(ttlMs / 4)
  const flushMs = parseIntegerVariable(read, 'PRESENCE_FLUSH_MS', Math.min(DEFAULT_FLUSH_MS, quarter), 0, 3_600_000)
  if (flushMs > quarter) {
    throw new ConfigError(`Invalid configuration: PRESENCE_FLUSH_MS must be at most a quarter of PRESENCE_TTL_MS (${quarter} for PRESENCE_TTL_MS=${ttlMs}), so that a coalesced heartbeat lands well within the TTL (got ${flushMs}); lower PRESENCE_FLUSH_MS or raise PRESENCE_TTL_MS`)
  }
  return flushMs
}
