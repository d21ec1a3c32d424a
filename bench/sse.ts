import { execFileSync, fork, type ChildProcess } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { once } from 'node:events'
import path from 'node:path'
import { Redis } from 'ioredis'
import { teardownList, row } from './helpers'
import { startRedisServer } from '../support/redis-server'

// SSE on the tcp tier: 1 000 and 5 000 concurrent clients on 10 channels, for
// fastify.sse and for a minimal hand-written baseline (raw reply.raw writes fed
// by one ioredis subscriber), measured in the same run.
//
// Both servers are up at once, each with its own clients, and take turns in
// short phases (ABBA order): on 2 shared cores a single phase varies by +-20 %
// with the host, and phases a second or two apart let a slow spell hit both
// sides of a pair. A process can also run fast or slow for its whole life, so
// each size uses several fresh server pairs. Figures are medians of the
// per-pair ratios.
// - Throughput: bursts of 100 publishes at once (200 000 deliveries or more per
//   phase), delivered events/s, and the CPU the server and Redis spend per event.
// - Latency: 100 publishes 1 ms apart per 250 clients (4 ms at 1 000, 20 ms at
//   5 000: well below what the client process can take, so that queueing in the
//   load generator does not become the p99), publish-to-receive p50/p99.
// - Memory: server RSS per idle client.
// With taskset the servers and Redis get core 0 and the clients core 1, so
// that the load generator neither steals their CPU nor is slowed by Redis.
// Targets: throughput >= 0.9x baseline, p99 <= 1.2x baseline, <= 10 KB RSS per idle client.

const CHANNELS = 10
const PUBLISHES = 100
/** Bursts of PUBLISHES per throughput phase: at least 200 000 deliveries, so that a phase lasts about a second. */
const bursts = (clients: number): number => Math.max(10, Math.ceil(200_000 / (PUBLISHES * clients / CHANNELS)))
const PACED = 100
/** Gap between paced publishes: deliveries stay at ~250 000/s x 1/4, a quarter of what the clients can read. */
const gapMs = (clients: number): number => Math.max(1, Math.round(clients / 250))
/** Fresh server pairs per size (BENCH_SSE_SESSIONS): one process can run a few percent fast or slow for its whole life. */
const SESSIONS = Number(process.env.BENCH_SSE_SESSIONS ?? 4)
/** Alternating pairs of phases per server pair (BENCH_SSE_PAIRS). */
const PAIRS = Number(process.env.BENCH_SSE_PAIRS ?? 5)

type Mode = 'ours' | 'baseline'

interface Side {
  mode: Mode
  clients: number
  server: ChildProcess
  load: ChildProcess
  rssPerClientBytes: number
}

interface Phase { eventsPerSecond: number, serverCpuUsPerEvent: number, redisCpuUsPerEvent: number, p50: number, p99: number, refused: number, published: number }
/** One server's turn: a throughput phase, then a latency phase. */
interface Turn { burst: Phase, paced: Phase }

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

/** Each child's stderr, kept to say why it died (and passed through). */
const stderrOf = new WeakMap<ChildProcess, string[]>()

function child (script: string, args: string[], execArgv: string[] = []): ChildProcess {
  const proc = fork(path.join(__dirname, script), args, { execArgv: ['--import', 'tsx', ...execArgv], stdio: ['ignore', 'inherit', 'pipe', 'ipc'] })
  const lines: string[] = []
  stderrOf.set(proc, lines)
  proc.stderr?.on('data', (chunk: Buffer) => {
    process.stderr.write(chunk)
    lines.push(chunk.toString())
    if (lines.length > 50) lines.shift()
  })
  return proc
}

/** Sends `message` and waits for the reply that has `key`; rejects at once if the child dies first, with its stderr. */
async function ask<T> (proc: ChildProcess, message: unknown, key: string): Promise<T> {
  const reply = new Promise<T>((resolve, reject) => {
    const listen = (m: Record<string, unknown>): void => {
      if (key in m) {
        done()
        resolve(m as T)
      }
    }
    const died = (code: number | null, signal: string | null): void => {
      done()
      const stderr = (stderrOf.get(proc) ?? []).join('').trim().split('\n').slice(-15).join('\n')
      reject(new Error(`${proc.spawnargs.find((a) => a.endsWith('.ts')) ?? 'a bench process'} exited (${signal ?? `code ${code ?? '?'}`}) while we waited for ${key}${stderr !== '' ? `:\n${stderr}` : ''}`))
    }
    const done = (): void => { proc.off('message', listen); proc.off('exit', died) }
    proc.on('message', listen)
    proc.once('exit', died)
    if (proc.exitCode !== null || proc.signalCode !== null) died(proc.exitCode, proc.signalCode)
  })
  if (message !== null) proc.send(message as object)
  return await reply
}

/** CPU Redis has used so far, in microseconds (INFO cpu). */
async function redisCpuUs (redis: Redis): Promise<number> {
  const info = await redis.info('cpu')
  const seconds = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0)
  return (seconds('used_cpu_user') + seconds('used_cpu_sys')) * 1e6
}

/** A server with `clients` connected streams, and its RSS per idle client. */
async function start (mode: Mode, clients: number, redisUrl: string): Promise<Side> {
  const server = child('sse-server.ts', [mode, redisUrl], ['--expose-gc'])
  pin(server.pid, 0)
  const { port } = await ask<{ port: number }>(server, null, 'port')
  const before = await ask<{ rss: number }>(server, { cmd: 'rss' }, 'rss')
  const load = child('sse-clients.ts', [String(port), String(clients), String(CHANNELS)])
  pin(load.pid, 1)
  await ask(load, null, 'connected')
  await new Promise((resolve) => setTimeout(resolve, 500)) // let the server settle after the connection burst
  const idle = await ask<{ rss: number }>(server, { cmd: 'rss' }, 'rss')
  return { mode, clients, server, load, rssPerClientBytes: (idle.rss - before.rss) / clients }
}

async function stop (side: Side): Promise<void> {
  side.load.kill()
  side.server.kill()
  await once(side.server, 'exit')
}

/** `bursts` times `count` publishes, at once (gapMs < 0) or paced, until every client has every event. */
async function phase (side: Side, redis: Redis, count: number, gapMs: number, bursts: number): Promise<Phase> {
  const { server, load } = side
  await ask(load, { cmd: 'reset' }, 'reset')
  await ask(server, { cmd: 'cpu-mark' }, 'marked')
  const redisBefore = await redisCpuUs(redis)
  const startedAt = performance.timeOrigin + performance.now()
  // A publish refused under load (503 past SSE_TIMEOUT_MS) is counted, not fatal: its events are not expected.
  const { published, refused } = await ask<{ published: number, refused: number }>(server, { cmd: 'publish', count, channels: CHANNELS, gapMs, bursts }, 'published')
  const expected = (published - refused) * side.clients / CHANNELS
  let report = await ask<{ received: number, lastAt: number, p50: number, p99: number }>(load, { cmd: 'report' }, 'received')
  const deadline = Date.now() + 60_000
  while (report.received < expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    report = await ask(load, { cmd: 'report' }, 'received')
  }
  if (report.received < expected) throw new Error(`${side.mode}: ${report.received} of ${expected} events delivered`)
  const { cpuUs } = await ask<{ cpuUs: number }>(server, { cmd: 'cpu' }, 'cpuUs')
  const redisUs = await redisCpuUs(redis) - redisBefore
  return {
    eventsPerSecond: report.received / ((report.lastAt - startedAt) / 1000),
    serverCpuUsPerEvent: cpuUs / report.received,
    redisCpuUsPerEvent: redisUs / report.received,
    p50: report.p50,
    p99: report.p99,
    refused,
    published
  }
}

/** BENCH_SSE_CLIENTS=1000 runs one size only (default 1000,5000). */
function clientCounts (): number[] {
  for (const [name, value] of [['BENCH_SSE_SESSIONS', SESSIONS], ['BENCH_SSE_PAIRS', PAIRS]] as const) {
    if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a whole number of at least 1`)
  }
  const counts = (process.env.BENCH_SSE_CLIENTS ?? '1000,5000').split(',').map(Number)
  if (counts.some((n) => !Number.isInteger(n) || n < CHANNELS)) throw new Error(`BENCH_SSE_CLIENTS must list client counts of at least ${CHANNELS}, e.g. 1000,5000`)
  return counts
}

function report (clients: number, pinned: boolean, rss: Array<Record<Mode, number>>, pairs: Array<Record<Mode, Turn>>): void {
  const base = (pick: (r: Turn) => number): number => mid(pairs.map((p) => pick(p.baseline)))
  const ours = (pick: (r: Turn) => number): number => mid(pairs.map((p) => pick(p.ours)))
  const ratio = (pick: (r: Turn) => number): number => mid(pairs.map((p) => pick(p.ours) / pick(p.baseline)))
  const throughput = (r: { burst: Phase }): number => r.burst.eventsPerSecond
  const cpu = (r: { burst: Phase }): number => r.burst.serverCpuUsPerEvent + r.burst.redisCpuUsPerEvent
  const spread = pairs.map((p) => throughput(p.ours) / throughput(p.baseline)).sort((a, b) => a - b)
  process.stdout.write(`${clients} clients, ${CHANNELS} channels${pinned ? ', servers and Redis on core 0, clients on core 1' : ''}; ` +
    `throughput: ${bursts(clients)} bursts of ${PUBLISHES} publishes (${bursts(clients) * PUBLISHES * clients / CHANNELS} deliveries); ` +
    `latency: ${PACED} publishes ${gapMs(clients)} ms apart; medians of ${pairs.length} pairs of phases (${SESSIONS} server pairs, ${PAIRS} each)\n`)
  row('baseline delivered events/s', base(throughput).toFixed(0))
  row('fastify.sse delivered events/s', ours(throughput).toFixed(0), ratio(throughput), 0.9)
  row('  ratio of each pair, lowest to highest', `${spread[0].toFixed(2)} .. ${spread[spread.length - 1].toFixed(2)}`)
  // Servers and Redis share core 0: their summed CPU per event is what caps throughput there, and it moves less with the host than wall-clock rates.
  row('baseline / fastify.sse server + Redis CPU per event', `${base(cpu).toFixed(2)} / ${ours(cpu).toFixed(2)} us`, ratio(cpu))
  row('  of which Redis', `${base((r) => r.burst.redisCpuUsPerEvent).toFixed(2)} / ${ours((r) => r.burst.redisCpuUsPerEvent).toFixed(2)} us`)
  row('baseline latency p50 / p99', `${base((r) => r.paced.p50).toFixed(2)} / ${base((r) => r.paced.p99).toFixed(2)} ms`)
  row('fastify.sse latency p50 / p99', `${ours((r) => r.paced.p50).toFixed(2)} / ${ours((r) => r.paced.p99).toFixed(2)} ms`)
  const p99 = ratio((r) => r.paced.p99)
  row(`  p99 ratio (ours / baseline), target <= 1.20: ${p99 <= 1.2 ? 'met' : 'NOT met'}`, p99.toFixed(2))
  // kB of 1 000 bytes: the stricter reading of the target's "10 KB".
  const kb = (bytes: number): string => `${(bytes / 1000).toFixed(1)} kB`
  row('baseline RSS per idle client', kb(mid(rss.map((r) => r.baseline))))
  const oursRss = mid(rss.map((r) => r.ours))
  row('fastify.sse RSS per idle client', kb(oursRss), mid(rss.map((r) => r.ours / r.baseline)))
  row(`  target <= 10 kB: ${oursRss <= 10_000 ? 'met' : 'NOT met'}`, '')
  for (const mode of ['baseline', 'ours'] as const) {
    const phases = pairs.flatMap((p) => [p[mode].burst, p[mode].paced])
    const refused = phases.reduce((n, p) => n + p.refused, 0)
    const published = phases.reduce((n, p) => n + p.published, 0)
    row(`${mode === 'ours' ? 'fastify.sse' : 'baseline'} publishes refused under load (${clients} clients)`, `${refused} of ${published}`)
  }
  process.stdout.write('\n')
}

export async function run (): Promise<void> {
  const sizes = clientCounts()
  const cleanups = teardownList()
  const redisServer = await startRedisServer(cleanups)
  const pinned = pin(redisServer.pid(), 0)
  const redis = new Redis(redisServer.url) // reads Redis's own CPU time
  cleanups.teardown(() => redis.disconnect())
  try {
    for (const clients of sizes) {
      const pairs: Array<Record<Mode, Turn>> = []
      const rss: Array<Record<Mode, number>> = []
      for (let session = 0; session < SESSIONS; session++) {
        // Started one after the other, so that each RSS reading is taken while the other server is idle.
        const sides: Record<Mode, Side> = { baseline: await start('baseline', clients, redisServer.url), ours: await start('ours', clients, redisServer.url) }
        try {
          rss.push({ baseline: sides.baseline.rssPerClientBytes, ours: sides.ours.rssPerClientBytes })
          for (let i = 0; i < PAIRS; i++) {
            const order: Mode[] = (session + i) % 2 === 0 ? ['baseline', 'ours'] : ['ours', 'baseline']
            const pair: Partial<Record<Mode, Turn>> = {}
            for (const mode of order) {
              const burst = await phase(sides[mode], redis, PUBLISHES, -1, bursts(clients))
              pair[mode] = { burst, paced: await phase(sides[mode], redis, PACED, gapMs(clients), 1) }
            }
            pairs.push(pair as Record<Mode, Turn>)
          }
        } finally {
          await Promise.all([stop(sides.baseline), stop(sides.ours)])
        }
      }
      report(clients, pinned, rss, pairs)
    }
  } finally {
    await cleanups.run()
  }
}
