import { execFile, execFileSync } from 'node:child_process'
import { availableParallelism } from 'node:os'
import { promisify } from 'node:util'
import path from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import app, { type AppOptions } from '../app'
import { ROUTER_OPTIONS } from '../lib/process-entry'
import type { EnvInput } from '../lib/config'
import type { Teardown } from '../support/redis-server'

// Shared by the benchmarks: a teardown list (the test harness helpers expect
// one), timing, and HTTP load from a separate autocannon process so that the
// load generator does not share the server's event loop.

export function teardownList (): Teardown & { run: () => Promise<void> } {
  const fns: Array<() => unknown> = []
  return {
    teardown: (fn) => { fns.push(fn) },
    async run () { for (const fn of fns.reverse()) await fn() }
  }
}

export async function bootApp (env: EnvInput, routes?: (fastify: FastifyInstance) => void, options: Omit<AppOptions, 'env' | 'processEnv'> = {}): Promise<FastifyInstance> {
  const fastify = Fastify({ routerOptions: ROUTER_OPTIONS })
  await fastify.register(app, { ...options, processEnv: false, env })
  routes?.(fastify)
  await fastify.ready()
  return fastify
}

export async function time<T> (fn: () => Promise<T>): Promise<[number, T]> {
  const started = performance.now()
  const value = await fn()
  return [performance.now() - started, value]
}

export async function median (runs: number, fn: () => Promise<number>): Promise<number> {
  const samples: number[] = []
  for (let i = 0; i < runs; i++) samples.push(await fn())
  samples.sort((a, b) => a - b)
  return samples[Math.floor(samples.length / 2)]
}

export async function opsPerSecond (ms: number, fn: () => Promise<unknown>): Promise<number> {
  const end = performance.now() + ms
  let ops = 0
  while (performance.now() < end) {
    await fn()
    ops++
  }
  return ops / (ms / 1000)
}

const execFileAsync = promisify(execFile)
let pinned = false

/**
 * On a machine with 2+ cores and taskset, the server under test (this
 * process) gets core 0 and the load generator and Redis share core 1, so
 * the figures measure the server rather than the scheduler.
 */
export function pinToCores (...otherPids: Array<number | undefined>): boolean {
  if (availableParallelism() < 2) return false
  try {
    execFileSync('taskset', ['-cp', '0', String(process.pid)], { stdio: 'ignore' })
    for (const pid of otherPids) if (pid !== undefined) execFileSync('taskset', ['-cp', '1', String(pid)], { stdio: 'ignore' })
    pinned = true
  } catch {
    pinned = false
  }
  return pinned
}

export interface LoadResult {
  /** Requests per second seen by autocannon. */
  rps: number
  /** CPU time this process (the server) spent per request, in microseconds. */
  cpuUsPerRequest: number
}

/** Requests per second from autocannon in a child process (10 connections), and the server's CPU cost per request. */
export async function httpLoad (url: string, seconds = 3): Promise<LoadResult> {
  const cpuBefore = process.cpuUsage()
  const bin = path.join(__dirname, '..', 'node_modules', 'autocannon', 'autocannon.js')
  const [command, args] = pinned
    ? ['taskset', ['-c', '1', process.execPath, bin]]
    : [process.execPath, [bin]]
  const { stdout } = await execFileAsync(command, [...args, '-c', '10', '-d', String(seconds), '-j', url], { maxBuffer: 16 * 1024 * 1024 })

  const cpu = process.cpuUsage(cpuBefore)
  const result = JSON.parse(stdout) as { requests: { average: number, total: number }, non2xx: number, errors: number }
  if (result.non2xx > 0 || result.errors > 0) throw new Error(`load on ${url} saw ${result.non2xx} non-2xx answers and ${result.errors} errors`)
  return { rps: result.requests.average, cpuUsPerRequest: (cpu.user + cpu.system) / Math.max(1, result.requests.total) }
}

export function row (name: string, value: string, ratio?: number, target?: number): void {
  const verdict = ratio === undefined ? '' : `   ratio ${ratio.toFixed(2)}${target === undefined ? '' : ` (target >= ${target.toFixed(2)}: ${ratio >= target ? 'met' : 'NOT met'})`}`
  process.stdout.write(`${name.padEnd(52)} ${value.padStart(16)}${verdict}\n`)
}

/**
 * Baseline and candidate measured in alternation, `rounds` times: on a small
 * machine the load generator, Redis and the server share cores, so a drift
 * hits both sides of each pair. Returns the medians and the median ratio.
 */
export async function compare (rounds: number, baseline: () => Promise<number>, candidate: () => Promise<number>): Promise<{ base: number, ours: number, ratio: number }> {
  const bases: number[] = []
  const ours: number[] = []
  const ratios: number[] = []
  for (let i = 0; i < rounds; i++) {
    // ABBA order: whoever runs second in a pair does not always pay for the first one's garbage.
    let b: number
    let o: number
    if (i % 2 === 0) {
      b = await baseline()
      o = await candidate()
    } else {
      o = await candidate()
      b = await baseline()
    }
    bases.push(b)
    ours.push(o)
    ratios.push(o / b)
  }
  const mid = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]
  return { base: mid(bases), ours: mid(ours), ratio: mid(ratios) }
}
