import t from 'tap'
import net from 'node:net'
import http from 'node:http'
import tls from 'node:tls'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { build } from './helpers/build'
import { startRedisServer, freePort } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { demoFeature } from './helpers/demo-feature'

// The env matrix: which tier each configuration lands on, and the diagnosis
// (variable + fix) when it cannot. Timeouts are short so that the file stays fast.

const FAST = { REDIS_CONNECT_TIMEOUT_MS: 500, REDIS_COMMAND_TIMEOUT_MS: 500 }
// A label longer than 63 characters fails in the local resolver: no DNS query leaves the machine.
const UNRESOLVABLE_HOST = `${'a'.repeat(70)}.invalid`

t.test('tier selection and diagnoses', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  const restEnv = { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token }
  const opts = { plugins: [demoFeature] }

  t.test('no configuration: nothing connects, features fall back to memory or skip', async (t) => {
    const { app, logs } = await build(t, FAST, opts)
    t.match(app.connections.tiers, { tcp: { configured: false, reachable: false }, rest: { configured: false, reachable: false } })
    t.equal(app.connections.tcp, null)
    t.match(app.features.demo, { status: 'active', tier: 'memory', shared: false, reason: /no Redis configured.*per instance/ })
    t.match(app.features.jobs, { status: 'skipped', tier: null, reason: /jobs need a TCP Redis \(REDIS_URL\); no Redis configured/ })
    const report = logs().filter((l) => /^(tier|feature) /.test(l.msg))
    t.same(report.map((l) => l.msg.split(':')[0]), ['tier tcp', 'tier rest', 'feature cache', 'feature sse', 'feature presence', 'feature queues', 'feature rate-limit', 'feature demo', 'feature jobs'], 'one boot report line per tier and per feature')
    t.equal(logs().find((l) => l.msg.startsWith('feature demo'))?.level, 40, 'a memory-tier feature is warned about')
  })

  t.test('REDIS_URL reachable: tcp, preferred by features that accept it', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: redis.url }, opts)
    t.match(app.connections.tiers.tcp, { configured: true, reachable: true, source: 'REDIS_URL', endpoint: `redis://127.0.0.1:${redis.port}/0` })
    t.type(app.connections.tiers.tcp.latencyMs, 'number')
    t.equal(await app.connections.tcp?.ping(), 'PONG')
    t.match(app.features.demo, { status: 'active', tier: 'tcp', shared: true })
    t.match(app.features.jobs, { status: 'active', tier: 'tcp' })
  })

  t.test('REDIS_HOST and REDIS_PORT instead of a URL', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_HOST: '127.0.0.1', REDIS_PORT: redis.port, REDIS_DB: 2 }, opts)
    t.match(app.connections.tiers.tcp, { reachable: true, source: 'REDIS_HOST', endpoint: `redis://127.0.0.1:${redis.port}/2` })
  })

  t.test('Upstash REST only: rest for features that accept it, tcp-only features skipped with the reason', async (t) => {
    const { app } = await build(t, { ...FAST, ...restEnv }, opts)
    t.match(app.connections.tiers.rest, { configured: true, reachable: true, source: 'UPSTASH_REDIS_REST_URL' })
    t.equal(await app.connections.rest?.ping(), 'PONG')
    t.match(app.features.demo, { status: 'active', tier: 'rest' })
    t.match(app.features.jobs, { status: 'skipped', reason: /jobs need a TCP Redis \(REDIS_URL\); only Upstash REST .* is configured/ })
    const res = await app.inject('/demo/jobs')
    t.equal(res.statusCode, 503, 'a skipped feature answers 503')
    t.match(res.json(), { message: /jobs is unavailable: jobs need a TCP Redis/ })
  })

  t.test('Vercel KV variable names work as REST configuration', async (t) => {
    const { app } = await build(t, { ...FAST, KV_REST_API_URL: rest.url, KV_REST_API_TOKEN: rest.token }, opts)
    t.match(app.connections.tiers.rest, { reachable: true, source: 'KV_REST_API_URL' })
  })

  t.test('both tiers: tcp preferred; <FEATURE>_TIER forces another', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: redis.url, ...restEnv, JOBS_TIER: 'rest' }, opts)
    t.match(app.features.demo, { tier: 'tcp' })
    t.match(app.features.jobs, { status: 'skipped', reason: 'JOBS_TIER=rest is not supported: the jobs feature runs on tcp' })
    const forced = await build(t, { ...FAST, REDIS_URL: redis.url, ...restEnv, DEMO_TIER: 'rest' }, opts)
    t.match(forced.app.features.demo, { status: 'active', tier: 'rest', reason: 'forced by DEMO_TIER=rest' })
  })

  t.test('<FEATURE>_TIER=memory and <FEATURE>_ENABLED=false', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: redis.url, DEMO_TIER: 'memory', JOBS_ENABLED: 'false' }, opts)
    t.match(app.features.demo, { status: 'active', tier: 'memory' })
    t.match(app.features.jobs, { status: 'skipped', reason: 'disabled by JOBS_ENABLED=false' })
    const noMemory = await build(t, { ...FAST, JOBS_TIER: 'memory' }, opts)
    t.match(noMemory.app.features.jobs, { status: 'skipped', reason: /JOBS_TIER=memory is not supported/ })
  })

  t.test('a forced tier that is not there skips the feature with the reason', async (t) => {
    const { app } = await build(t, { ...FAST, DEMO_TIER: 'tcp' }, opts)
    t.match(app.features.demo, { status: 'skipped', reason: 'DEMO_TIER=tcp but tcp is not configured' })
  })

  t.test('closed port: connection refused, naming REDIS_URL', async (t) => {
    const port = await freePort()
    const { app } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}` }, opts)
    t.match(app.connections.tiers.tcp, { configured: true, reachable: false, lastError: /connection refused by redis:\/\/127\.0\.0\.1:\d+\/0 \(REDIS_URL\).*check host and port in REDIS_URL/ })
    t.match(app.features.demo, { tier: 'memory', reason: /tcp unreachable: connection refused/ })
    t.match(app.features.jobs, { status: 'skipped', reason: /tcp unreachable/ })
  })

  t.test('unresolvable host: ENOTFOUND, naming the variable', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_HOST: UNRESOLVABLE_HOST }, opts)
    t.match(app.connections.tiers.tcp.lastError, /cannot be resolved \(ENOTFOUND\): check the host name in REDIS_HOST/)
  })

  t.test('a host that accepts but never answers: timeout within the deadline', async (t) => {
    const sockets = new Set<net.Socket>()
    const silent = net.createServer((socket) => { sockets.add(socket); socket.on('error', () => {}) })
    silent.listen(0, '127.0.0.1')
    await new Promise((resolve) => silent.once('listening', resolve))
    t.teardown(() => {
      for (const socket of sockets) socket.destroy()
      silent.close()
    })
    const started = Date.now()
    const { app } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${(silent.address() as net.AddressInfo).port}` }, opts)
    const elapsed = Date.now() - started
    t.ok(elapsed < FAST.REDIS_CONNECT_TIMEOUT_MS + 1000, `boot took ${elapsed} ms, deadline ${FAST.REDIS_CONNECT_TIMEOUT_MS} ms + 1 s`)
    t.match(app.connections.tiers.tcp.lastError, /no answer from .* within 500 ms.*REDIS_CONNECT_TIMEOUT_MS.*rediss:\/\//)
  })

  t.test('REST URL in REDIS_URL and redis:// URL in the REST variable are diagnosed, not dialled', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: 'https://eu1-fine-cat-12345.upstash.io', UPSTASH_REDIS_REST_URL: `redis://default:s3cretpassw0rd@127.0.0.1:${redis.port}`, UPSTASH_REDIS_REST_TOKEN: 'tok' }, opts)
    t.match(app.connections.tiers.tcp, { configured: true, reachable: false, source: 'REDIS_URL', lastError: /REDIS_URL holds an HTTP\(S\) URL .*move it to UPSTASH_REDIS_REST_URL/ })
    t.match(app.connections.tiers.rest, { configured: true, reachable: false, source: 'UPSTASH_REDIS_REST_URL', lastError: /UPSTASH_REDIS_REST_URL holds a redis:\/\/ URL .*move it to REDIS_URL/ })
    t.notMatch(JSON.stringify(app.connections.tiers), /s3cretpassw0rd/)
  })

  t.test('REST URL without token, and token without URL', async (t) => {
    const a = await build(t, { ...FAST, UPSTASH_REDIS_REST_URL: rest.url }, opts)
    t.match(a.app.connections.tiers.rest.lastError, /UPSTASH_REDIS_REST_URL is set but UPSTASH_REDIS_REST_TOKEN is missing/)
    const b = await build(t, { ...FAST, UPSTASH_REDIS_REST_TOKEN: 'tok' }, opts)
    t.match(b.app.connections.tiers.rest.lastError, /UPSTASH_REDIS_REST_TOKEN is set but UPSTASH_REDIS_REST_URL is missing/)
  })

  t.test('wrong REST token: HTTP 401 diagnosis naming the token variable', async (t) => {
    const { app } = await build(t, { ...FAST, UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: 'wrong-token-value' }, opts)
    t.match(app.connections.tiers.rest, { reachable: false, lastError: /rejected the token \(HTTP 401\/403\): UPSTASH_REDIS_REST_TOKEN is wrong/ })
    t.match(app.features.demo, { tier: 'memory' })
  })

  t.test('REDIS_PORT without a host never means localhost', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_PORT: redis.port }, opts)
    t.match(app.connections.tiers.tcp, { configured: true, reachable: false, source: 'REDIS_PORT', lastError: /REDIS_PORT is set but neither REDIS_URL nor REDIS_HOST is/ })
    t.equal(app.connections.tcp, null)
  })

  t.test('an address that is not Redis, and one that is not Upstash REST', async (t) => {
    const web = http.createServer((_req, res) => { res.writeHead(404, { 'content-type': 'text/html' }); res.end('<html>not found</html>') })
    web.listen(0, '127.0.0.1')
    await new Promise((resolve) => web.once('listening', resolve))
    t.teardown(() => { web.closeAllConnections(); web.close() })
    const port = (web.address() as net.AddressInfo).port
    const { app } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${port}`, UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${port}`, UPSTASH_REDIS_REST_TOKEN: 'tok' }, opts)
    t.match(app.connections.tiers.tcp.lastError, /\(REDIS_URL\) answered with something that is not Redis.*check the host and port in REDIS_URL/)
    t.match(app.connections.tiers.rest.lastError, /did not answer like an Upstash REST endpoint: check that UPSTASH_REDIS_REST_URL is the REST URL/)
  })

  t.test('REST endpoint at a closed port: connection refused naming the REST variable', async (t) => {
    const { app } = await build(t, { ...FAST, UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${await freePort()}`, UPSTASH_REDIS_REST_TOKEN: 'tok' }, opts)
    t.match(app.connections.tiers.rest.lastError, /connection refused by http:\/\/127\.0\.0\.1:\d+ \(UPSTASH_REDIS_REST_URL\)/)
  })

  t.test('redis:// to a TLS-only host is diagnosed before dialling', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: 'redis://default:pw@eu1-fine-cat-12345.upstash.io:6379' }, opts)
    t.match(app.connections.tiers.tcp.lastError, /only accepts TLS connections; use rediss:\/\/ instead of redis:\/\/ in REDIS_URL/)
  })
})

t.test('authentication', async (t) => {
  const password = 'correct-horse-battery-staple'
  const redis = await startRedisServer(t, { password })

  t.test('right password in REDIS_URL connects', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: redis.url })
    t.match(app.connections.tiers.tcp, { reachable: true, endpoint: `redis://:***@127.0.0.1:${redis.port}/0` })
  })

  t.test('wrong password: WRONGPASS naming REDIS_URL, password never shown', async (t) => {
    const { app, logText } = await build(t, { ...FAST, REDIS_URL: `redis://:not-the-password-123@127.0.0.1:${redis.port}` })
    t.match(app.connections.tiers.tcp.lastError, /authentication failed \(WRONGPASS\).*REDIS_URL is wrong/)
    const health = await app.inject('/health')
    t.notMatch(health.body + logText(), /not-the-password-123/)
  })

  t.test('wrong REDIS_PASSWORD: the diagnosis names REDIS_PASSWORD', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_HOST: '127.0.0.1', REDIS_PORT: redis.port, REDIS_PASSWORD: 'nope-nope-nope' })
    t.match(app.connections.tiers.tcp.lastError, /REDIS_PASSWORD is wrong/)
  })

  t.test('no password for a server that requires one: NOAUTH', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: `redis://127.0.0.1:${redis.port}` })
    t.match(app.connections.tiers.tcp.lastError, /requires a password \(NOAUTH\): put it in REDIS_URL/)
  })
})

t.test('TLS', async (t) => {
  const redis = await startRedisServer(t)

  t.test('rediss:// to a server without TLS: the diagnosis says to use redis://', async (t) => {
    const { app } = await build(t, { ...FAST, REDIS_URL: `rediss://127.0.0.1:${redis.port}` })
    t.match(app.connections.tiers.tcp, { reachable: false, lastError: /rediss:\/\/.*use redis:\/\// })
  })

  t.test('certificate verification is on: a self-signed certificate is rejected with the fix', async (t) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'redis-tiers-tls-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')], { stdio: 'ignore' })
    const server = tls.createServer({ key: readFileSync(path.join(dir, 'key.pem')), cert: readFileSync(path.join(dir, 'cert.pem')) }, (socket) => socket.on('error', () => {}))
    server.on('tlsClientError', () => {})
    server.listen(0, '127.0.0.1')
    await new Promise((resolve) => server.once('listening', resolve))
    t.teardown(() => { server.close() })
    const { app } = await build(t, { ...FAST, REDIS_URL: `rediss://localhost:${(server.address() as net.AddressInfo).port}` })
    t.match(app.connections.tiers.tcp.lastError, /TLS certificate of .* was rejected \(DEPTH_ZERO_SELF_SIGNED_CERT\); verification stays on.*NODE_EXTRA_CA_CERTS/)
  })
})

t.test('invalid values fail boot with a message naming the variable', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ REDIS_CONNECT_TIMEOUT_MS: 'abc' }, /REDIS_CONNECT_TIMEOUT_MS must be a whole number from 1 to 600000 \(got "abc"\)/],
    [{ REDIS_PORT: '99999', REDIS_HOST: '127.0.0.1' }, /REDIS_PORT must be a whole number from 1 to 65535 \(got "99999"\)/],
    [{ REDIS_TLS: 'maybe', REDIS_HOST: '127.0.0.1' }, /REDIS_TLS must be true or false \(got "maybe"\)/],
    [{ DEMO_ENABLED: 'sometimes' }, /DEMO_ENABLED must be true or false/],
    [{ DEMO_TIER: 'fast' }, /DEMO_TIER must be one of tcp, rest, memory/]
  ]
  for (const [env, message] of cases) {
    await t.rejects(build(t, env, { plugins: [demoFeature] }), { code: 'REDIS_TIERS_CONFIG', message }, Object.keys(env).join(' '))
  }
})

t.test('REDIS_REQUIRED=true', async (t) => {
  t.test('fails boot when no tier is reachable', async (t) => {
    const port = await freePort()
    await t.rejects(build(t, { ...FAST, REDIS_REQUIRED: 'true', REDIS_URL: `redis://127.0.0.1:${port}` }), {
      code: 'REDIS_TIERS_REQUIRED',
      message: /REDIS_REQUIRED=true but no Redis tier is reachable: tcp: connection refused.*; rest: not configured/
    })
  })
  t.test('boots when one is', async (t) => {
    const redis = await startRedisServer(t)
    const { app } = await build(t, { ...FAST, REDIS_REQUIRED: 'true', REDIS_URL: redis.url })
    t.equal(app.connections.tiers.tcp.reachable, true)
  })
})
