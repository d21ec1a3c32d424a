import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { teardownList, row } from './helpers'
import { startRedisServer } from '../test/helpers/redis-server'

// SSE on the tcp tier: 1 000 and 5 000 concurrent clients on 10 channels,
// 100 publishes; delivered events/s (a burst of 100 publishes), publish-to-receive
// latency p50/p99 (100 publishes 5 ms apart) and
// server RSS per idle client, for fastify.sse and for a minimal hand-written
// baseline (raw reply.raw writes fed by one ioredis subscriber), measured in
// the same run. Server and clients run in their own processes.
// Targets: throughput >= 0.9x baseline, p99 <= 1.2x baseline, <= 10 KB RSS per idle client.

const CHANNELS = 10
const PUBLISHES = 100
const ROUNDS = 3

function medians (runs: Result[]): Result {
  const mid = (pick: (r: Result) => number): number => runs.map(pick).sort((a, b) => a - b)[Math.floor(runs.length / 2)]
  return { eventsPerSecond: mid((r) => r.eventsPerSecond), p50: mid((r) => r.p50), p99: mid((r) => r.p99), rssPerClientKb: mid((r) => r.rssPerClientKb) }
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

interface Result { eventsPerSecond: number, p50: number, p99: number, rssPerClientKb: number }

async function measure (mode: 'ours' | 'baseline', clients: number, redisUrl: string): Promise<Result> {
  const server = child('sse-server.ts', [mode, redisUrl], ['--expose-gc'])
  try {
    const { port } = await ask<{ port: number }>(server, null, 'port')
    const before = await ask<{ rss: number }>(server, { cmd: 'rss' }, 'rss')
    const load = child('sse-clients.ts', [String(port), String(clients), String(CHANNELS)])
    try {
      await ask(load, null, 'connected')
      await new Promise((resolve) => setTimeout(resolve, 500)) // let the server settle after the connection burst
      const idle = await ask<{ rss: number }>(server, { cmd: 'rss' }, 'rss')
      const expected = PUBLISHES * clients / CHANNELS
      const phase = async (gapMs: number): Promise<{ received: number, lastAt: number, p50: number, p99: number, startedAt: number }> => {
        await ask(load, { cmd: 'reset' }, 'reset')
        const startedAt = performance.timeOrigin + performance.now()
        await ask(server, { cmd: 'publish', count: PUBLISHES, channels: CHANNELS, gapMs }, 'published')
        let report = await ask<{ received: number, lastAt: number, p50: number, p99: number }>(load, { cmd: 'report' }, 'received')
        const deadline = Date.now() + 30_000
        while (report.received < expected && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 50))
          report = await ask(load, { cmd: 'report' }, 'received')
        }
        if (report.received < expected) throw new Error(`${mode}: ${report.received} of ${expected} events delivered`)
        return { ...report, startedAt }
      }
      const paced = await phase(5) // latency at a steady rate
      const burst = await phase(-1) // throughput: every publish at once
      const report = { p50: paced.p50, p99: paced.p99 }
      return {
        eventsPerSecond: burst.received / ((burst.lastAt - burst.startedAt) / 1000),
        p50: report.p50,
        p99: report.p99,
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
  try {
    for (const clients of [1000, 5000]) {
      // One run is noisy on 2 shared cores: alternate the two servers ROUNDS times (ABBA) and take medians.
      const bases: Result[] = []
      const ourRuns: Result[] = []
      for (let i = 0; i < ROUNDS; i++) {
        if (i % 2 === 0) {
          bases.push(await measure('baseline', clients, redis.url))
          ourRuns.push(await measure('ours', clients, redis.url))
        } else {
          ourRuns.push(await measure('ours', clients, redis.url))
          bases.push(await measure('baseline', clients, redis.url))
        }
      }
      const base = medians(bases)
      const ours = medians(ourRuns)
      process.stdout.write(`${clients} clients, ${CHANNELS} channels, ${PUBLISHES * clients / CHANNELS} deliveries per phase; latency: ${PUBLISHES} publishes 5 ms apart; throughput: the same ${PUBLISHES} at once; medians of ${ROUNDS} runs each\n`)
      row('baseline delivered events/s', base.eventsPerSecond.toFixed(0))
      row('fastify.sse delivered events/s', ours.eventsPerSecond.toFixed(0), ours.eventsPerSecond / base.eventsPerSecond, 0.9)
      row('baseline latency p50 / p99', `${base.p50.toFixed(2)} / ${base.p99.toFixed(2)} ms`)
      row('fastify.sse latency p50 / p99', `${ours.p50.toFixed(2)} / ${ours.p99.toFixed(2)} ms`)
      row('  p99 ratio (ours / baseline, target <= 1.20)', (ours.p99 / base.p99).toFixed(2))
      row('baseline RSS per idle client', `${base.rssPerClientKb.toFixed(1)} KiB`)
      row('fastify.sse RSS per idle client (target <= 10 KB)', `${ours.rssPerClientKb.toFixed(1)} KiB`, ours.rssPerClientKb / base.rssPerClientKb)
      process.stdout.write('\n')
    }
  } finally {
    await cleanups.run()
  }
}
