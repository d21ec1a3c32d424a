import t, { type Test } from 'tap'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { build, eventually, type Built } from './helpers/build'
import { startRedisServer, type RedisServer } from '../support/redis-server'
import { startRestServer, TEST_REST_TOKEN } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import type { RedisTier } from '../lib/resolve-tier'
import type { JobContext } from '../lib/queues/backend'
import { reduceRedisError, redactError } from '../lib/redact'

// No command text leaves the process: a Redis that refuses every write (OOM)
// answers sse, queues, presence and cache with errors about commands that
// carry what users sent. Each of those is a distinctive marker; none may
// reach a response, a log line, /health, the status page or /metrics, on the
// tcp tier (ioredis) and the rest tier (@upstash/redis, through the bridge).

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 1000, QUEUES_DRAIN_MS: 200 }
/** Whatever a caller sent, and what only a command (or our Lua source) carries. */
const LEAK = /m4rker|redis\.call|command was|args beginning/i

/** A route cached per its config, whose body is a caller's data, and a queue fed from a request body. */
async function hostRoutes (fastify: FastifyInstance): Promise<void> {
  fastify.queues.define('mail', async (job: JobContext) => job.data)
  fastify.get('/page', { config: { cache: { ttl: 30 } } }, async () => ({ secret: 'm4rker-page-body' }))
  fastify.post('/mail', async (request) => await fastify.queues.add('mail', request.body))
}

/** From now on every write to `redis` fails with OOM, as a full Redis with noeviction answers. */
async function refuseWrites (t: Test, redis: RedisServer): Promise<void> {
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())
  await admin.config('SET', 'maxmemory-policy', 'noeviction')
  await admin.config('SET', 'maxmemory', '1')
}

const REFUSAL = "OOM command not allowed when used memory > 'maxmemory'."

/**
 * Answers as Upstash does when Redis refuses: HTTP 400 `{"error": ...}`, which @upstash/redis turns
 * into `<error>, command was: [<the whole command>]`. PING and subscriptions work, so the tier is up.
 */
async function refusingUpstash (t: Test): Promise<string> {
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (chunk: Buffer) => { body += chunk.toString() })
    req.on('end', () => {
      if (req.url?.startsWith('/subscribe/') === true) {
        res.writeHead(200, { 'content-type': 'text/event-stream' })
        res.write(`data: subscribe,${decodeURIComponent(req.url.slice(11))},1\n\n`)
        return
      }
      // PING comes alone or, auto-pipelined, as a pipeline of one; BullMQ asks INFO for the version before a job.
      const pipeline = req.url === '/pipeline'
      const parsed = JSON.parse(body) as unknown[]
      const command = String((pipeline && parsed.length === 1 ? parsed[0] as unknown[] : parsed)[0]).toLowerCase()
      const text = command === 'ping' ? 'PONG' : command === 'info' ? 'redis_version:7.0.15\r\n' : null
      const answer = { result: text !== null && req.headers['upstash-encoding'] === 'base64' ? Buffer.from(text).toString('base64') : text }
      res.writeHead(text !== null ? 200 : 400, { 'content-type': 'application/json', 'upstash-sync-token': '1' })
      res.end(JSON.stringify(text === null ? { error: REFUSAL } : pipeline ? [answer] : answer))
    })
  })
  server.listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

async function exposed (built: Built): Promise<Record<string, string>> {
  const { app } = built
  return {
    health: (await app.inject('/health')).body,
    status: (await app.inject('/status.json')).body,
    metrics: (await app.inject('/metrics')).body,
    logs: built.logText()
  }
}

type Backend = 'tcp' | 'rest bridge' | 'Upstash-shaped'

/** The app on a Redis that refuses every write from now on. */
async function refusingApp (t: Test, backend: Backend): Promise<Built> {
  if (backend === 'Upstash-shaped') {
    return await build(t, { ...BASE, UPSTASH_REDIS_REST_URL: await refusingUpstash(t), UPSTASH_REDIS_REST_TOKEN: TEST_REST_TOKEN }, { plugins: [hostRoutes] })
  }
  const tier: RedisTier = backend === 'tcp' ? 'tcp' : 'rest'
  const redis = await startRedisServer(t)
  const rest = tier === 'rest' ? await startRestServer(t, redis) : { url: '', token: '' }
  const built = await build(t, envForTier(tier, redis, rest, BASE), { plugins: [hostRoutes] })
  await refuseWrites(t, redis)
  return built
}

function spec (t: Test, backend: Backend): void {
  t.test(`${backend}: a refused write leaves with Redis's words, never the command`, async (t) => {
    const built = await refusingApp(t, backend)
    const { app } = built
    const tier = backend === 'tcp' ? 'tcp' : 'rest'
    t.equal(app.sse.tier, tier)
    t.equal(app.queues.tier, tier)

    const answers = {
      sse: await app.inject({ method: 'POST', url: '/events/public:news', headers: { 'x-user-id': 'alice' }, payload: { text: 'm4rker-sse-payload' } }),
      presence: await app.inject({ method: 'POST', url: '/presence/heartbeat', headers: { 'x-user-id': 'm4rkerPresenceUser' }, payload: { status: 'm4rker-status', meta: { m4rker: 'meta' } } }),
      job: await app.inject({ method: 'POST', url: '/mail', payload: { to: 'm4rker-job-data' } }),
      demoJob: await app.inject({ method: 'POST', url: '/jobs/report', headers: { 'x-user-id': 'm4rkerJobUser' }, payload: { steps: 1 } })
    }
    for (const [name, answer] of Object.entries(answers)) {
      t.equal(answer.statusCode, 503, `${name}: 503`)
      t.match(answer.body, /OOM command not allowed/, `${name}: says what Redis said`)
      t.notMatch(answer.body, LEAK, `${name}: no argument, key or script in ${answer.body}`)
    }

    await app.cache.set('m4rker-cache-key', { value: 'm4rker-cache-value' }) // fails open: served without Redis
    t.equal(app.cache.stats().redisErrors, 1, 'the refused write is counted')
    t.equal((await app.inject('/page')).statusCode, 200, 'a route whose entry cannot be stored is still answered')
    await eventually(() => app.cache.stats().redisErrors === 2, 5000, 'the refused route entry')

    const surfaces = await exposed(built)
    t.match(surfaces.logs, /OOM command not allowed/, 'the logs say what Redis said')
    for (const [name, text] of Object.entries(surfaces)) t.notMatch(text, LEAK, `nothing a command carried in ${name}`)
  })
}

spec(t, 'tcp')
spec(t, 'rest bridge')
spec(t, 'Upstash-shaped')

t.test('an ioredis reply error is reduced: no command property, no cause, the code kept', async (t) => {
  const err = Object.assign(new Error('OOM command not allowed when used memory > \'maxmemory\'.'), { name: 'ReplyError', command: { name: 'set', args: ['m4rker-key', 'm4rker-value'] } })
  const reduced = reduceRedisError(err)
  t.equal(reduced.name, 'ReplyError')
  t.equal(reduced.message, err.message)
  t.notOk('command' in reduced)
  t.notMatch(JSON.stringify({ ...reduced, stack: reduced.stack }), LEAK)
  const wrapped = reduceRedisError(Object.assign(new Error('fetch failed'), { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) }))
  t.match(wrapped, { code: 'ECONNREFUSED', message: 'fetch failed (ECONNREFUSED)' })
  t.notOk('cause' in wrapped)
})

t.test('redactError strips command text that reached it another way', async (t) => {
  const upstash = new Error('ERR wrong number of arguments, command was: ["eval","redis.call(\'set\', KEYS[1], ARGV[1])","1","m4rker-key","m4rker-value"]')
  t.equal(redactError(upstash).message, 'ERR wrong number of arguments')
  t.equal(redactError(new Error("ERR unknown command 'm', with args beginning with: 'm4rker' ")).message, "ERR unknown command 'm'")
})
