import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { freePort, startRedisServer } from '../support/redis-server'
import { build, eventually } from './helpers/build'
import { startRestServer } from '../support/rest-server'

// server.ts and worker.ts as a newcomer runs them: real processes, JSON logs
// on stdout, a real port, signals.

const root = path.join(__dirname, '..')

interface Running { child: ChildProcess, lines: () => Array<Record<string, unknown>>, output: () => string }

function startServer (t: Test, env: Record<string, string>, entry = 'server.ts'): Running {
  const child = spawn(process.execPath, ['--import', 'tsx', entry], {
    cwd: root,
    env: { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  return {
    child,
    output: () => out,
    lines: () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
  }
}

async function listeningUrl (server: Running): Promise<string> {
  let url = ''
  await eventually(() => {
    const line = server.lines().find((l) => typeof l.msg === 'string' && l.msg.startsWith('Server listening at http://127.0.0.1'))
    url = line !== undefined ? String(line.msg).replace('Server listening at ', '') : ''
    return url !== ''
  }, 20000, `server listening; output so far: ${server.output().slice(0, 500)}`)
  return url
}

t.test('with no env it boots on the memory tier, reports, serves /health, and closes on SIGTERM', async (t) => {
  const server = startServer(t, {})
  const url = await listeningUrl(server)
  const report = server.lines().map((l) => l.msg)
  t.ok(report.includes('tier tcp: not configured') && report.includes('tier rest: not configured'), 'boot report printed')
  const health = await fetch(`${url}/health`)
  t.equal(health.status, 200)
  t.match(await health.json(), { status: 'ok' })
  server.child.kill('SIGTERM')
  const [code] = await once(server.child, 'exit') as [number | null]
  t.equal(code, 0, 'graceful exit')
})

t.test('REDIS_URL at a closed port: boot finishes within the deadline + 1 s and keeps serving', async (t) => {
  const port = await freePort()
  const server = startServer(t, { REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_CONNECT_TIMEOUT_MS: '1500' })
  const url = await listeningUrl(server)
  const tcp = server.lines().find((l) => l.tier === 'tcp')
  t.match(tcp, { level: 40, reachable: false, msg: /connection refused by .*\(REDIS_URL\)/ })
  t.ok(Number(tcp?.probeMs) < 1500 + 1000, `probes took ${String(tcp?.probeMs)} ms`)
  t.equal((await fetch(`${url}/health/live`)).status, 200)
  t.equal((await fetch(`${url}/health`)).status, 200, 'a tier that failed at boot is degraded, not down')
  t.equal(server.child.exitCode, null, 'still running')
})

t.test('an invalid variable stops boot with a message naming it', async (t) => {
  const server = startServer(t, { REDIS_HOST: '127.0.0.1', REDIS_PORT: '99999' })
  const [code] = await once(server.child, 'exit') as [number | null]
  t.equal(code, 1)
  t.match(server.output(), /REDIS_PORT must be a whole number from 1 to 65535/)
})

t.test('REDIS_REQUIRED=true without a reachable Redis exits non-zero', async (t) => {
  const server = startServer(t, { REDIS_REQUIRED: 'true' })
  const [code] = await once(server.child, 'exit') as [number | null]
  t.equal(code, 1)
  t.match(server.output(), /REDIS_REQUIRED=true but no Redis tier is reachable: tcp: not configured; rest: not configured/)
})

t.test('an invalid PORT stops boot with a message naming it', async (t) => {
  const server = startServer(t, { PORT: 'eighty' })
  const [code] = await once(server.child, 'exit') as [number | null]
  t.equal(code, 1)
  t.match(server.output(), /Invalid configuration: PORT must be a whole number from 0 to 65535 \(got "eighty"\)/)
})

t.test('worker.ts runs the queue workers without HTTP, drains on SIGTERM, and exits 1 when queues are skipped', async (t) => {
  const redis = await startRedisServer(t)
  const env = { REDIS_URL: redis.url, QUEUES_PREFIX: 'worker-entry' }
  const worker = startServer(t, env, 'worker.ts')
  await eventually(() => worker.lines().some((l) => l.msg === 'worker running: report on tcp'), 20000, `worker running; output so far: ${worker.output().slice(0, 500)}`)
  t.notOk(worker.lines().some((l) => typeof l.msg === 'string' && l.msg.startsWith('Server listening')), 'no HTTP server')
  const { app: producer } = await build(t, { ...env, QUEUES_WORKERS: false, DEMO_ROUTES: true })
  const { id } = await producer.queues.add('report', { userId: 'w1', steps: 2, stepMs: 10 })
  await eventually(async () => (await producer.queues.getJob('report', id))?.state === 'completed', 10000, 'the worker process ran the job')
  t.match(await producer.queues.getJob('report', id), { result: { userId: 'w1', rows: 200 } })
  worker.child.kill('SIGTERM')
  const [code] = await once(worker.child, 'exit') as [number | null]
  t.equal(code, 0, 'graceful exit')

  const idle = startServer(t, {}, 'worker.ts')
  const [idleCode] = await once(idle.child, 'exit') as [number | null]
  t.equal(idleCode, 1)
  t.match(idle.output(), /queues are not available, this worker has nothing to do: queues need a TCP Redis \(REDIS_URL\) or Upstash REST .*; no Redis configured/)

  const rest = await startRestServer(t, redis)
  const restOnly = startServer(t, { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token, DEMO_ROUTES: 'true' }, 'worker.ts')
  const [restCode] = await once(restOnly.child, 'exit') as [number | null]
  t.equal(restCode, 1)
  t.match(restOnly.output(), /this worker has nothing to do: queues run on rest, where they only produce \(.*workers need a TCP Redis/)
})

const DEMO_PATHS = [['GET', '/cache/demo/x'], ['GET', '/events/public:x'], ['POST', '/events/public:x'], ['POST', '/jobs/report'], ['GET', '/jobs/report/1'],
  ['POST', '/presence/heartbeat'], ['GET', '/presence/online'], ['DELETE', '/presence'], ['GET', '/presence/u1']] as const

t.test('NODE_ENV=production without DEMO_ROUTES: every demo path is 404, /health is 200, no demo warning', async (t) => {
  const server = startServer(t, { NODE_ENV: 'production' })
  const url = await listeningUrl(server)
  for (const [method, path] of DEMO_PATHS) {
    const post = method === 'POST'
    const res = await fetch(`${url}${path}`, { method, headers: { 'x-user-id': 'admin', ...(post ? { 'content-type': 'application/json' } : {}) }, body: post ? '{}' : undefined })
    t.equal(res.status, 404, `${method} ${path}`)
  }
  t.equal((await fetch(`${url}/health`)).status, 200)
  t.notOk(server.lines().some((l) => /demo identity/.test(String(l.msg))), 'nothing to warn about')
})

t.test('NODE_ENV=production with DEMO_ROUTES=true: the demo is mounted and the boot report warns', async (t) => {
  const server = startServer(t, { NODE_ENV: 'production', DEMO_ROUTES: 'true' })
  const url = await listeningUrl(server)
  t.equal((await fetch(`${url}/presence/online`, { headers: { 'x-user-id': 'u1' } })).status, 200)
  t.match(server.lines().find((l) => /demo identity/.test(String(l.msg))), { level: 40, msg: /x-user-id header\) is active and must not face the internet/ })
})

t.test('a CLOSE_GRACE_MS not larger than QUEUES_DRAIN_MS is warned about at boot, naming both', async (t) => {
  const server = startServer(t, { CLOSE_GRACE_MS: '3000', QUEUES_DRAIN_MS: '5000' })
  await listeningUrl(server)
  t.match(server.lines().find((l) => /CLOSE_GRACE_MS/.test(String(l.msg))), { level: 40, msg: /CLOSE_GRACE_MS \(3000\) is not larger than QUEUES_DRAIN_MS \(5000\)/ })
  const fine = startServer(t, { CLOSE_GRACE_MS: '8000', QUEUES_DRAIN_MS: '5000' })
  await listeningUrl(fine)
  t.notOk(fine.lines().some((l) => /CLOSE_GRACE_MS/.test(String(l.msg))), 'no warning when the grace covers the drain')
})
