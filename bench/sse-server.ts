import type http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import app from '../app'

// A server under test for bench/sse.ts, in its own process so that its RSS is
// its own. Mode `ours`: the app with fastify.sse on tcp. Mode `baseline`: the
// minimal hand-written SSE server (raw reply.raw writes fed by one ioredis
// subscriber). Driven over IPC: { cmd: 'rss' }, { cmd: 'cpu-mark' } / { cmd: 'cpu' }
// (CPU used since the mark) and { cmd: 'publish', count, channels, gapMs, bursts }
// (gapMs < 0: `bursts` times `count` publishes at once).

const [mode, redisUrl] = process.argv.slice(2)
const send = (message: unknown): void => { process.send?.(message) }

async function ours (): Promise<{ port: number, publish: (channel: string, data: string) => Promise<unknown> }> {
  const fastify = Fastify()
  await fastify.register(app, { processEnv: false, demoRoutes: true, env: { REDIS_URL: redisUrl, SSE_MAX_CLIENTS: 100_000, SSE_PREFIX: 'bench-sse', QUEUES_ENABLED: false, SSE_MAX_BUFFER_BYTES: 16 * 1024 * 1024 } })
  await fastify.listen({ port: 0, host: '127.0.0.1' })
  return { port: (fastify.server.address() as AddressInfo).port, publish: async (channel, data) => await fastify.sse.publish(channel, data) }
}

async function baseline (): Promise<{ port: number, publish: (channel: string, data: string) => Promise<unknown> }> {
  const publisher = new Redis(redisUrl)
  const subscriber = new Redis(redisUrl)
  const byChannel = new Map<string, Set<http.ServerResponse>>()
  let seq = 0
  subscriber.on('message', (channel: string, data: string) => {
    const frame = `id: ${++seq}\ndata: ${data}\n\n`
    for (const res of byChannel.get(channel) ?? []) res.write(frame)
  })
  const fastify = Fastify()
  fastify.get<{ Params: { channel: string } }>('/events/:channel', async (request, reply) => {
    const { channel } = request.params
    let set = byChannel.get(channel)
    if (set === undefined) {
      byChannel.set(channel, set = new Set())
      await subscriber.subscribe(channel)
    }
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    reply.raw.write('retry: 3000\n\n')
    set.add(reply.raw)
    reply.raw.on('close', () => set.delete(reply.raw))
  })
  await fastify.listen({ port: 0, host: '127.0.0.1' })
  return { port: (fastify.server.address() as AddressInfo).port, publish: async (channel, data) => await publisher.publish(channel, data) }
}

async function main (): Promise<void> {
  const server = mode === 'ours' ? await ours() : await baseline()
  let cpuMark = process.cpuUsage()
  process.on('message', (message: { cmd: string, count?: number, channels?: number, gapMs?: number, bursts?: number }) => {
    if (message.cmd === 'cpu-mark') {
      cpuMark = process.cpuUsage()
      send({ marked: true })
    } else if (message.cmd === 'cpu') {
      const used = process.cpuUsage(cpuMark)
      send({ cpuUs: used.user + used.system })
    } else if (message.cmd === 'rss') {
      for (let i = 0; i < 3; i++) (globalThis as { gc?: () => void }).gc?.()
      send({ rss: process.memoryUsage().rss })
    } else if (message.cmd === 'publish') {
      void (async () => {
        // A publish refused under load (503 past SSE_TIMEOUT_MS) is counted and reported, never fatal.
        let refused = 0
        const one = async (i: number): Promise<unknown> => await server.publish(`public:bench${i % (message.channels ?? 1)}`, JSON.stringify({ i, t: performance.timeOrigin + performance.now() })).catch(() => { refused++ })
        const indexes = Array.from({ length: message.count ?? 0 }, (_v, i) => i)
        if ((message.gapMs ?? 0) < 0) {
          // Bursts: fan-out, not the publisher, is the bottleneck.
          for (let b = 0; b < (message.bursts ?? 1); b++) await Promise.all(indexes.map(one))
        } else {
          for (const i of indexes) {
            await one(i)
            await new Promise((resolve) => setTimeout(resolve, message.gapMs ?? 0))
          }
        }
        send({ published: (message.count ?? 0) * ((message.gapMs ?? 0) < 0 ? (message.bursts ?? 1) : 1), refused })
      })()
    }
  })
  send({ port: server.port })
}

process.on('disconnect', () => process.exit(0)) // the bench runner is gone: never linger

void main()
