import { execFileSync, fork, type ChildProcess } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { once } from 'node:events'
import path from 'node:path'
import { teardownList, row } from './helpers'
import { startRedisServer } from '../test/helpers/redis-server'

// SSE on the tcp tier: 1 000 and 5 000 concurrent clients on 10 channels.
// Latency: 300 publishes 1 ms apart per 250 clients (4 ms at 1 000, 20 ms at
// 5 000: well below what the client process can take, so that queueing in the
// load generator does not become the p99), publish-to-receive p50/p99 over every
// delivery. Throughput: bursts of 100 publishes at once (500 000 deliveries
// or more), delivered events/s
// and the server's CPU per delivered event. Memory: server RSS per idle client.
// For fastify.sse and for a minimal hand-written baseline (raw reply.raw
// writes fed by one ioredis subscriber), measured in the same run, ABBA order,
// medians of the per-pair ratios. Server and clients run in their own
// processes; with taskset the server and Redis get core 0 and the clients core 1,
// so that the load generator neither steals their CPU nor is slowed by Redis.
// Targets: throughput >= 0.9x baseline, p99 <= 1.2x baseline, <= 10 KB RSS per idle client.

const CHANNELS = 10
const PUBLISHES = 100
/** Bursts of PUBLISHES per throughput phase: at least 10, and at least 500 000 deliveries so that one phase lasts seconds, not milliseconds. */
const bursts = (clients: number): number => Math.max(10, Math.ceil(500_000 / (PUBLISHES * clients / CHANNELS)))
const PACED = 300
/** Gap between paced publishes: deliveries stay at ~250 000/s x 1/4, a quarter of what the clients can read. */
const gapMs = (clients: number): number => Math.max(1, Math.round(clients / 250))
const ROUNDS = 5

function mid (xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
}

function pin (pid: number | undefined, core: number): boolean {
  if (pid === undefined || availableParallelism() < 2) return false
  try {
    execFileSync('taskset', ['-cp', String(core), String(pid)], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

function child (script: string, args: string[], execArgv: string[] = []): ChildProcess {
  return fork(path.join(__dirname, script), args, { execArgv: ['--import', 'tsx', ...execArgv], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
}

async function ask<T> (proc: ChildProcess, message: unknown, key: string): Promise<T> {
  const reply = new Promise<T>((resolve) => {
    const listen = (m: Record<string, unknown>): void => {
      if (key in m) {
        proc.off('message', listen)
        resolve(m as T)
      }
    }
    proc.on('message', listen)
  })
  if (message !== null) proc.send(message as object)
  return await reply
}

interface Result { eventsPerSecond: number, cpuUsPerEvent: number, p50: number, p99: number, rssPerClientKb: number }

async function measure (mode: 'ours' | 'baseline', clients: number, redisUrl: string): Promise<Result> {
  const server = child('sse-server.ts', [mode, redisUrl], ['--expose-gc'])
  pin(server.pid, 0)
  try {
    const { port } = await ask<{ port: number }>(server, null, 'port')
    const before = await ask<{ rss: number }>(server, { cmd: 'rss' }, 'rss')
    const load = child('sse-clients.ts', [String(port), String(clients), String(CHANNELS)])
    pin(load.pid, 1)
    try {
      await ask(load, null, 'connected')
      await new Promise((resolve) => setTimeout(resolve, 500)) // let the server settle after the connection burst
      const idle = await ask<{ rss: number }>(server, { cmd: 'rss' }, 'rss')
      const phase = async (count: number, gapMs: number, bursts: number): Promise<{ received: number, seconds: number, cpuUs: number, p50: number, p99: number }> => {
        const expected = count * bursts * clients / CHANNELS
        await ask(load, { cmd: 'reset' }, 'reset')
        await ask(server, { cmd: 'cpu-mark' }, 'marked')
        const startedAt = performance.timeOrigin + performance.now()
        await ask(server, { cmd: 'publish', count, channels: CHANNELS, gapMs, bursts }, 'published')
        let report = await ask<{ received: number, lastAt: number, p50: number, p99: number }>(load, { cmd: 'report' }, 'received')
        const deadline = Date.now() + 60_000
        while (report.received < expected && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 20))
          report = await ask(load, { cmd: 'report' }, 'received')
        }
        if (report.received < expected) throw new Error(`${mode}: ${report.received} of ${expected} events delivered`)
        const { cpuUs } = await ask<{ cpuUs: number }>(server, { cmd: 'cpu' }, 'cpuUs')
        return { ...report, seconds: (report.lastAt - startedAt) / 1000, cpuUs }
      }
      const paced = await phase(PACED, gapMs(clients), 1) // latency at a steady rate
      const burst = await phase(PUBLISHES, -1, bursts(clients)) // throughput
      return {
        eventsPerSecond: burst.received / burst.seconds,
        cpuUsPerEvent: burst.cpuUs / burst.received,
        p50: paced.p50,
        p99: paced.p99,
        rssPerClientKb: (idle.rss - before.rss) / clients / 1024
      }
    } finally {
      load.kill()
    }
  } finally {
    server.kill()
    await once(server, 'exit')
  }
}

export async function run (): Promise<void> {
  const cleanups = teardownList()
  const redis = await startRedisServer(cleanups)
  const pinned = pin(redis.pid(), 0)
  try {
    for (const clients of [1000, 5000]) {
      // One run is noisy on 2 shared cores: alternate the two servers (ABBA) and take medians of the pairs.
      const pairs: Array<{ base: Result, ours: Result }> = []
      for (let i = 0; i < ROUNDS; i++) {
        if (i % 2 === 0) {
          const base = await measure('baseline', clients, redis.url)
          pairs.push({ base, ours: await measure('ours', clients, redis.url) })
        } else {
          const ours = await measure('ours', clients, redis.url)
          pairs.push({ ours, base: await measure('baseline', clients, redis.url) })
        }
      }
      const base = (pick: (r: Result) => number): number => mid(pairs.map((p) => pick(p.base)))
      const ours = (pick: (r: Result) => number): number => mid(pairs.map((p) => pick(p.ours)))
      const ratio = (pick: (r: Result) => number): number => mid(pairs.map((p) => pick(p.ours) / pick(p.base)))
      process.stdout.write(`${clients} clients, ${CHANNELS} channels${pinned ? ', server and Redis on core 0, clients on core 1' : ''}; ` +
        `throughput: ${bursts(clients)} bursts of ${PUBLISHES} publishes (${bursts(clients) * PUBLISHES * clients / CHANNELS} deliveries); ` +
        `latency: ${PACED} publishes ${gapMs(clients)} ms apart; medians of ${ROUNDS} ABBA pairs\n`)
      row('baseline delivered events/s', base((r) => r.eventsPerSecond).toFixed(0))
      row('fastify.sse delivered events/s', ours((r) => r.eventsPerSecond).toFixed(0), ratio((r) => r.eventsPerSecond), 0.9)
      row('baseline / fastify.sse server CPU per event', `${base((r) => r.cpuUsPerEvent).toFixed(2)} / ${ours((r) => r.cpuUsPerEvent).toFixed(2)} us`, ratio((r) => r.cpuUsPerEvent))
      row('baseline latency p50 / p99', `${base((r) => r.p50).toFixed(2)} / ${base((r) => r.p99).toFixed(2)} ms`)
      row('fastify.sse latency p50 / p99', `${ours((r) => r.p50).toFixed(2)} / ${ours((r) => r.p99).toFixed(2)} ms`)
      row('  p99 ratio (ours / baseline, target <= 1.20)', ratio((r) => r.p99).toFixed(2))
      row('baseline RSS per idle client', `${base((r) => r.rssPerClientKb).toFixed(1)} KiB`)
      row('fastify.sse RSS per idle client (target <= 10 KB)', `${ours((r) => r.rssPerClientKb).toFixed(1)} KiB`, ratio((r) => r.rssPerClientKb))
      process.stdout.write('\n')
    }
  } finally {
    await cleanups.run()
  }
}
