import type { Teardown } from '../../support/redis-server'
import { eventually } from './build'

// A real streaming HTTP client for SSE tests (fetch reads the body as it
// arrives); it parses frames the way the EventSource spec does.

export interface ReceivedEvent { id?: string, event: string, data: string }

export interface SseConnection {
  status: number
  headers: Headers
  events: ReceivedEvent[]
  comments: string[]
  retry: number | null
  /** Resolves when the server ends the stream. */
  ended: Promise<void>
  isEnded: () => boolean
  close: () => void
  /** Waits until `count` events arrived. */
  waitFor: (count: number, ms?: number) => Promise<ReceivedEvent[]>
}

export async function connectSse (t: Teardown, url: string, headers: Record<string, string> = {}): Promise<SseConnection> {
  const controller = new AbortController()
  const res = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal: controller.signal })
  const conn: SseConnection = {
    status: res.status,
    headers: res.headers,
    events: [],
    comments: [],
    retry: null,
    ended: Promise.resolve(),
    isEnded: () => ended,
    close: () => controller.abort(),
    async waitFor (count, ms = 5000) {
      await eventually(() => conn.events.length >= count, ms, `${count} events (got ${conn.events.length}: ${JSON.stringify(conn.events.slice(-3))})`)
      return conn.events
    }
  }
  let ended = false
  t.teardown(() => controller.abort())
  if (res.body === null || !(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    ended = true
    return conn
  }
  const body = res.body
  conn.ended = (async () => {
    const decoder = new TextDecoder()
    let buffer = ''
    let current: { id?: string, event: string, data: string[] } = { event: '', data: [] }
    try {
      for await (const chunk of body) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true })
        let newline: number
        while ((newline = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, newline).replace(/\r$/, '')
          buffer = buffer.slice(newline + 1)
          if (line === '') {
            if (current.data.length > 0 || current.id !== undefined) conn.events.push({ id: current.id, event: current.event || 'message', data: current.data.join('\n') })
            current = { event: '', data: [] }
          } else if (line.startsWith(':')) {
            conn.comments.push(line.slice(1).trim())
          } else {
            const colon = line.indexOf(':')
            const field = colon < 0 ? line : line.slice(0, colon)
            const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
            if (field === 'data') current.data.push(value)
            else if (field === 'id') current.id = value
            else if (field === 'event') current.event = value
            else if (field === 'retry') conn.retry = Number(value)
          }
        }
      }
    } catch {
      // aborted by close() or teardown
    } finally {
      ended = true
    }
  })()
  return conn
}
