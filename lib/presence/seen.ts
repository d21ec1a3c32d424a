import type { OnlineUser } from './store'

// The users this instance has seen heartbeating and not yet seen leave: what
// it writes back when Redis comes back empty, so that nobody appears to leave.
// Users who stopped are written back with their last heartbeat and leave on
// the next sweep. Bounded by the TTL: an entry no heartbeat refreshed for two
// TTLs is gone from Redis too (swept, its leave sent) and is forgotten here.

export interface SeenUsers {
  heartbeat: (userId: string, device: string, status: string, metaJson: string, at: number) => void
  /** A device left; the user is forgotten with their last device. */
  leave: (userId: string, device: string) => void
  /** The user left (any instance's leave or sweep). */
  left: (userId: string) => void
  prune: (now: number) => void
  all: () => OnlineUser[]
  readonly size: number
}

interface Seen { status: string, metaJson: string, devices: Map<string, number>, at: number }

export function seenUsers (ttlMs: number): SeenUsers {
  const users = new Map<string, Seen>()
  return {
    heartbeat (userId, device, status, metaJson, at) {
      const user = users.get(userId) ?? { status, metaJson, devices: new Map<string, number>(), at }
      Object.assign(user, { status, metaJson, at: Math.max(user.at, at) })
      user.devices.set(device, at)
      users.set(userId, user)
    },
    leave (userId, device) {
      const user = users.get(userId)
      user?.devices.delete(device)
      if (user?.devices.size === 0) users.delete(userId)
    },
    left (userId) {
      users.delete(userId)
    },
    prune (now) {
      for (const [userId, user] of users) if (user.at <= now - 2 * ttlMs) users.delete(userId)
    },
    all () {
      return [...users].map(([userId, u]) => ({ userId, status: u.status, metaJson: u.metaJson, devices: [...u.devices] }))
    },
    get size () { return users.size }
  }
}
