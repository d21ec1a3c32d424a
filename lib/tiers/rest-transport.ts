import type { Redis as UpstashRedis } from '@upstash/redis' with { 'resolution-mode': 'import' }
import type { BusTransport, Deliver, Resumed } from '../bus'
import type { RestTarget } from './rest-target'
import { withTimeout } from '../deadline'
import { reduceRedisError } from '../redact'

// Upstash REST serves SUBSCRIBE as one streaming POST per channel that emits
// `data: subscribe,<channel>,<n>` and then `data: message,<channel>,<text>`.
// @upstash/redis's own subscriber never notices when that stream ends and
// prints read errors to the console, so we read the stream ourselves: when it
// ends or fails we subscribe again with capped backoff.

const MAX_BACKOFF_MS = 5000

export function restTransport (client: UpstashRedis, target: RestTarget, commandTimeoutMs: number, onError: (err: Error) => void) {
  return (deliver: Deliver, resumed: Resumed): BusTransport => {
    const streams = new Map<string, AbortController>()

    function follow (channel: string, controller: AbortController, confirmed: () => void): void {
      const { signal } = controller
      let confirmedBefore = false
      void (async () => {
        for (let attempt = 0; !signal.aborted; attempt++) {
          try {
            const res = await fetch(`${target.url}/subscribe/${encodeURIComponent(channel)}`, {
              method: 'POST',
              headers: { authorization: `Bearer ${target.token}`, accept: 'text/event-stream' },
              signal
            })
            if (!res.ok || res.body === null) throw new Error(`subscribe to ${channel} answered HTTP ${res.status}`)
            const decoder = new TextDecoder()
            let buffer = ''
            for await (const chunk of res.body) {
              buffer += decoder.decode(chunk as Uint8Array, { stream: true })
              const lines = buffer.split('\n')
              buffer = lines.pop() ?? ''
              for (const line of lines) {
                if (!line.startsWith('data: ')) continue
                const data = line.slice(6)
                const first = data.indexOf(',')
                const second = data.indexOf(',', first + 1)
                if (first < 0 || second < 0) continue
                const kind = data.slice(0, first)
                if (kind === 'subscribe') {
                  attempt = 0
                  confirmed()
                  if (confirmedBefore) resumed(channel) // a stream that ended and was made again: a gap
                  confirmedBefore = true
                } else if (kind === 'message' && data.startsWith(`message,${channel},`)) {
                  // One stream per channel: its name is known, so a comma inside it cannot shift the text.
                  deliver(channel, data.slice(channel.length + 9))
                }
              }
            }
            if (!signal.aborted) throw new Error(`the event stream for ${channel} ended`)
          } catch (err) {
            if (signal.aborted) return
            onError(err as Error)
          }
          const delay = Math.min(100 * 2 ** attempt, MAX_BACKOFF_MS)
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, delay)
            signal.addEventListener('abort', () => { clearTimeout(timer); resolve() }, { once: true })
          })
        }
      })()
    }

    return {
      async listen (channel) {
        streams.get(channel)?.abort()
        const controller = new AbortController()
        streams.set(channel, controller)
        await withTimeout(new Promise<void>((resolve) => { follow(channel, controller, resolve) }), commandTimeoutMs,
          () => new Error(`subscription to ${channel} not confirmed within ${commandTimeoutMs} ms; retrying in the background`))
      },
      async unlisten (channel) {
        streams.get(channel)?.abort()
        streams.delete(channel)
      },
      async publish (channel, text) {
        await client.publish(channel, text).catch((err: unknown) => { throw reduceRedisError(err) })
      },
      async close () {
        for (const controller of streams.values()) controller.abort()
        streams.clear()
      }
    }
  }
}
