import type { BusTransport, Deliver } from '../bus'

// The memory tier has no driver (nothing to connect to, nothing to probe); it
// has the in-process pub/sub transport that memory stores publish through,
// exactly as tcp and rest stores publish through theirs.

/** In-process transport: a single instance's view, delivered asynchronously like Redis would. */
export function memoryTransport (deliver: Deliver): BusTransport {
  const listening = new Set<string>()
  return {
    async listen (channel) { listening.add(channel) },
    async unlisten (channel) { listening.delete(channel) },
    async publish (channel, text) {
      if (listening.has(channel)) queueMicrotask(() => deliver(channel, text))
    },
    async close () { listening.clear() }
  }
}
