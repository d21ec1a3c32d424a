import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Client } from '../lib/sse/clients'
import { lastEventId, openSse, sseFanout, startStream, STREAM_HEADERS, type SseBinding, type SseCounters } from '../lib/sse/fanout'
import { CHANNEL_RULE, EVENT_PATTERN, validChannel } from '../lib/channels'
import { parseIntegerVariable, parseDurationVariable } from '../lib/config'
import { ForbiddenError, InvalidInputError } from '../lib/errors'
import { defineFeature, type FeatureApi, type FeatureStatus } from '../lib/feature'
import type { FeatureRequirement } from '../lib/resolve-tier'

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

export type SseStats = SseCounters & { clients: number, channels: number }

export interface Sse extends FeatureStatus {
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

const MAX_CHANNELS_PER_STREAM = 20

export default defineFeature<SsePluginOptions, SseBinding>({
  name: 'sse',
  likelyOwner: 'another SSE plugin',
  setup (feature, opts) {
    const { connections, variable } = feature
    const settings = {
      heartbeatMs: parseIntegerVariable(variable, 'SSE_HEARTBEAT_MS', 15_000, 10, 3_600_000),
      retryMs: parseIntegerVariable(variable, 'SSE_RETRY_MS', 3_000, 0, 3_600_000),
      history: { maxLength: parseIntegerVariable(variable, 'SSE_HISTORY', 1000, 1, 1_000_000), ttlMs: parseDurationVariable(variable, 'SSE_HISTORY_TTL', '1h') },
      maxClients: parseIntegerVariable(variable, 'SSE_MAX_CLIENTS', 10_000, 1, 10_000_000),
      maxBufferBytes: parseIntegerVariable(variable, 'SSE_MAX_BUFFER_BYTES', 1024 * 1024, 1024, 2 ** 31),
      timeoutMs: parseIntegerVariable(variable, 'SSE_TIMEOUT_MS', 1000, 1, 60_000)
    }
    const prefix = feature.prefix(opts.prefix)
    const counters = { published: 0, delivered: 0, replayed: 0, slowClientsDropped: 0, redisErrors: 0 }
    const fanout = sseFanout({
      settings,
      counters,
      current: () => feature.store,
      every: feature.every,
      warn: (key, what, err) => feature.warn(key, `${what} on ${feature.tier ?? '?'}: ${connections.redact(err).message}`)
    })
    const { clients } = fanout
    let closing = false

    const api: FeatureApi<Sse> = {
      async publish (channel, data, options = {}) {
        feature.use()
        if (!validChannel(channel)) throw new InvalidInputError(`invalid channel name: ${CHANNEL_RULE}`)
        const event = options.event ?? ''
        if (event !== '' && !EVENT_PATTERN.test(event)) throw new InvalidInputError('invalid event name: 1-64 letters, digits or : _ . -')
        if (data === undefined) throw new InvalidInputError('event data is required')
        const text = typeof data === 'string' ? data : JSON.stringify(data)
        const id = await feature.guard('accept the event', async ({ store }) => await store.publish(channel, event, text))
        counters.published++
        return id
      },

      async stream (request, reply, channels, options = {}) {
        feature.use()
        if (closing) feature.unavailable('the server is shutting down')
        const given: unknown = channels // callers from JavaScript may pass anything
        if (!Array.isArray(given) || channels.length === 0 || channels.length > MAX_CHANNELS_PER_STREAM) {
          throw new InvalidInputError(`a stream needs 1-${MAX_CHANNELS_PER_STREAM} channels`)
        }
        if (!channels.every(validChannel)) throw new InvalidInputError(`invalid channel name: ${CHANNEL_RULE}`)
        const authorize = options.authorize ?? opts.authorize
        // HEAD: the answer a GET would start with, at once, and no slot.
        if (request.method === 'HEAD') {
          await checkAuthorized(authorize, request, channels)
          await reply.code(200).headers(STREAM_HEADERS).send()
          return
        }
        // The slot is taken before the first await, so a burst of connects cannot overshoot SSE_MAX_CLIENTS;
        // it becomes the client's once the stream is registered, or is given back on any other way out.
        if (!fanout.reserve(settings.maxClients)) feature.unavailable('too many event streams on this instance (SSE_MAX_CLIENTS); retry later')
        let client: Client
        try {
          await checkAuthorized(authorize, request, channels)
          await fanout.ensure()
          if (request.raw.destroyed) return // gone while we subscribed
          client = clients.add(reply.raw, channels)
        } finally {
          fanout.unreserve()
        }
        reply.hijack()
        startStream(client.res, settings.retryMs)
        await fanout.resume(client, lastEventId(request))
      },

      stats: () => ({ ...counters, clients: clients.size, channels: clients.channelCount })
    }

    feature.onRestarted(fanout.historyLost)
    feature.onClose(clients.stop)
    // Streams never end on their own: end them before the server waits for open connections.
    feature.fastify.addHook('preClose', async () => {
      closing = true
      clients.endAll()
    })
    return {
      requirement: sseRequirement,
      timeoutMs: settings.timeoutMs,
      open: (binding) => openSse(binding, prefix, settings.history, () => connections.usage.shedding),
      handOver: fanout.handOver,
      close: fanout.close,
      // The caller gets the reason (and the routes log it, rate-limited).
      onTierError: () => { counters.redisErrors++ },
      describe: () => ({ stats: api.stats() }),
      api
    }
  }
})

async function checkAuthorized (authorize: Authorize | undefined, request: FastifyRequest, channels: readonly string[]): Promise<void> {
  if (authorize === undefined) return
  for (const channel of channels) {
    if (!(await authorize(request, channel))) throw new ForbiddenError(`not allowed to watch ${channel}`)
  }
}
