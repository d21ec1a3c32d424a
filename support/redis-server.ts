import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { once } from 'node:events'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'

// A real redis-server on a free loopback port, owned by one test file, so
// tests can kill, pause and restart it without touching anyone else's Redis.

export interface Teardown { teardown: (fn: () => unknown) => void }

export interface RedisServerOptions {
  password?: string
  /** Keep an append-only file so that data survives restart() (the port and directory are kept). */
  appendonly?: boolean
  /** Listen on this port (default: a free one), e.g. one an app was configured with before Redis started. */
  port?: number
  /** More redis-server arguments (e.g. --cluster-enabled yes). */
  extraArgs?: string[]
}

export interface RedisServer {
  readonly port: number
  /** redis://[:password@]127.0.0.1:port */
  readonly url: string
  /** Kill it (SIGKILL), as a crash or an outage would. */
  stop: () => Promise<void>
  /** SIGSTOP: the port accepts connections but nothing answers. */
  pause: () => void
  resume: () => void
  /** Start it again on the same port. */
  restart: () => Promise<void>
  /** The process id while it runs (benchmarks pin it to a core). */
  pid: () => number | undefined
}

export function findRedisServer (): string {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const candidate = path.join(dir, 'redis-server')
    if (dir !== '' && existsSync(candidate)) return candidate
  }
  throw new Error('redis-server was not found on PATH: the tests need a real Redis binary (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)')
}

export async function freePort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as net.AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Resolves when the server answers PING (or NOAUTH), within `ms`. */
async function waitUntilAnswering (port: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    const answered = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1')
      socket.setTimeout(200, () => { socket.destroy(); resolve(false) })
      socket.once('error', () => resolve(false))
      socket.once('connect', () => socket.write('PING\r\n'))
      socket.once('data', (data) => { socket.destroy(); resolve(/^(\+PONG|-NOAUTH)/.test(data.toString())) })
    })
    if (answered) return
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

export async function startRedisServer (t: Teardown, opts: RedisServerOptions = {}): Promise<RedisServer> {
  const binary = findRedisServer()
  const port = opts.port ?? await freePort()
  const dir = mkdtempSync(path.join(tmpdir(), 'redis-tiers-test-'))
  const args = [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning',
    '--appendonly', opts.appendonly === true ? 'yes' : 'no', '--appendfsync', 'always'
  ]
  if (opts.password !== undefined) args.push('--requirepass', opts.password)
  if (opts.extraArgs !== undefined) args.push(...opts.extraArgs)
  // redis-server runs under a small sh guard that kills it when our stdin pipe
  // closes, so a test process that crashes or is killed leaves no Redis behind.
  const guard = 'redis-server "$@" & pid=$!; echo "$pid"; read _; kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 0'
  let child: { guard: ChildProcess, pid: number } | undefined

  async function start (): Promise<void> {
    const proc = spawn('sh', ['-c', guard.replace('redis-server', binary), 'redis-guard', ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    let stderr = ''
    proc.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const [first] = await once(proc.stdout as NodeJS.ReadableStream, 'data') as [Buffer]
    const pid = Number.parseInt(first.toString(), 10)
    child = { guard: proc, pid }
    try {
      await waitUntilAnswering(port, 5000)
    } catch (err) {
      await stop()
      throw new Error(`${(err as Error).message}: ${stderr.trim()}`, { cause: err })
    }
  }

  async function stop (): Promise<void> {
    const current = child
    child = undefined
    if (current === undefined || current.guard.exitCode !== null) return
    const exited = once(current.guard, 'exit')
    try { process.kill(current.pid, 'SIGKILL') } catch { /* already gone */ }
    current.guard.stdin?.end()
    await exited // the guard waits for redis-server to be reaped: the port is free again
  }

  await start()
  t.teardown(async () => {
    await stop()
    rmSync(dir, { recursive: true, force: true })
  })

  const auth = opts.password !== undefined ? `:${encodeURIComponent(opts.password)}@` : ''
  return {
    port,
    url: `redis://${auth}127.0.0.1:${port}`,
    stop,
    pause: () => { if (child !== undefined) process.kill(child.pid, 'SIGSTOP') },
    resume: () => { if (child !== undefined) process.kill(child.pid, 'SIGCONT') },
    async restart () {
      await stop()
      await start()
    },
    pid: () => child?.pid
  }
}
