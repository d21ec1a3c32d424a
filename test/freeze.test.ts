import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { startRedisCluster } from '../support/redis-cluster'
import { startAppProcess, type AppProcess } from '../support/app-process'
import { connectSse, type SseConnection } from './helpers/sse-client'
import { eventually } from './helpers/build'

// A Redis that closed an idle connection is not down. The demo server runs in
// its own process; the test freezes it (SIGSTOP) for longer than Redis's idle
// timeout, so Redis closes its connections, thaws it (SIGCONT) and at once
// sends what users send: a cache miss, a publish, a heartbeat, a job. Every
// one must succeed within its deadline, and the tier must never be reported
// down. The 20-cycle version with longer freezes is `npm run bench -- connections`.

const IDLE_TIMEOUT_S = 1 // redis-server --timeout: the shortest it accepts
const FREEZE_MS = 2500 // past the idle timeout, with room for the server's once-a-tick idle check
const CYCLES = 3
const COMMAND_TIMEOUT_MS = 1000
/** routes/cache.ts computes a miss for 200 ms. */
const CACHE_HANDLER_MS = 200
/** HTTP, JSON and a resumed process's first timers, on a shared 2-core machine. */
const SLACK_MS = 300

interface Answer { what: string, status: number, expected: number, ms: number, deadlineMs: number, body: string }

async function timed (what: string, expected: number, deadlineMs: number, request: Promise<Response>): Promise<Answer> {
  const started = performance.now()
  const res = await request
  const body = await res.text()
  return { what, status: res.status, expected, ms: Math.round(performance.now() - started), deadlineMs, body }
}

/** The four requests of a user arriving right after the instance thaws, sent together. */
async function thawedRequests (url: string, round: number): Promise<Answer[]> {
  const json = (body: unknown, user?: string): RequestInit => ({
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(user !== undefined ? { 'x-user-id': user } : {}) },
    body: JSON.stringify(body)
  })
  return await Promise.all([
    timed('cache miss', 200, COMMAND_TIMEOUT_MS + CACHE_HANDLER_MS + SLACK_MS, fetch(`${url}/cache/demo/freeze-${round}-${Date.now()}`)),
    timed('publish', 201, COMMAND_TIMEOUT_MS + SLACK_MS, fetch(`${url}/events/public:freeze`, json({ round }))),
    timed('heartbeat', 200, COMMAND_TIMEOUT_MS + SLACK_MS, fetch(`${url}/presence/heartbeat`, json({}, `user-${round}`))),
    timed('job add', 202, COMMAND_TIMEOUT_MS + SLACK_MS, fetch(`${url}/jobs/report`, json({ steps: 1, stepMs: 0 }, `user-${round}`)))
  ])
}

interface HealthBody { status: string, tiers: Record<string, { reachable: boolean, lastError: string | null }>, features: Record<string, { tier: string | null }> }

async function health (url: string): Promise<HealthBody> {
  return await (await fetch(`${url}/health`)).json() as HealthBody
}

async function untilEveryFeatureOn (app: AppProcess, tier: string): Promise<void> {
  await eventually(async () => Object.values((await health(app.url)).features).every((f) => f.tier === tier), 10_000, `every feature on ${tier}`)
}

/** One spec for every tier: CYCLES freezes, each followed at once by the four requests. */
async function freezeThaw (t: Test, tier: 'tcp' | 'rest', env: Record<string, string>): Promise<void> {
  const app = await startAppProcess(t, { REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS), ...env })
  await untilEveryFeatureOn(app, tier)
  t.same((await thawedRequests(app.url, 0)).map((a) => a.status), [200, 201, 200, 202], 'warm: every request succeeds before any freeze')
  const stream: SseConnection = await connectSse(t, `${app.url}/events/public:freeze`)
  t.equal(stream.status, 200, 'a stream is open through the freezes')

  const seenBefore = app.lines().length
  for (let round = 1; round <= CYCLES; round++) {
    await app.freeze(FREEZE_MS)
    const answers = await thawedRequests(app.url, round)
    for (const a of answers) {
      t.equal(a.status, a.expected, `cycle ${round}: ${a.what} answered ${a.expected}`, { body: a.body })
      t.ok(a.ms <= a.deadlineMs, `cycle ${round}: ${a.what} answered in ${a.ms} ms (deadline ${a.deadlineMs} ms)`)
    }
    const after = await health(app.url)
    t.equal(after.tiers[tier].reachable, true, `cycle ${round}: /health says ${tier} is reachable`)
    t.equal(after.status, 'ok', `cycle ${round}: /health is ok`)
    await stream.waitFor(round, 3000)
    t.same(JSON.parse(stream.events[round - 1].data), { round }, `cycle ${round}: the stream opened before the freezes got the publish`)
  }

  const lines = app.lines().slice(seenBefore)
  const outage = lines.filter((l) => typeof l.msg === 'string' && (new RegExp(`^tier ${tier}:( still)? down`).test(l.msg) || /^feature \w+: \S+ -> /.test(l.msg)))
  t.same(outage.map((l) => l.msg), [], 'no outage line and no feature moved')
  if (tier === 'tcp') {
    const reconnected = lines.filter((l) => l.level === 30 && typeof l.msg === 'string' && /^tier tcp: the connection was closed by the server or the network .* reconnected in \d+ ms; not an outage$/.test(l.msg))
    t.ok(reconnected.length >= CYCLES, `each freeze outlived the idle timeout: ${reconnected.length} info lines say the connection was closed and reconnected`)
  }
}

t.test('tcp: freeze/thaw past the idle timeout of a single Redis', async (t) => {
  const redis = await startRedisServer(t, { extraArgs: ['--timeout', String(IDLE_TIMEOUT_S)] })
  await freezeThaw(t, 'tcp', { REDIS_URL: redis.url })
})

t.test('rest: freeze/thaw with the REST bridge in front of a Redis that closes idle connections', async (t) => {
  const redis = await startRedisServer(t, { extraArgs: ['--timeout', String(IDLE_TIMEOUT_S)] })
  const rest = await startRestServer(t, redis)
  await freezeThaw(t, 'rest', { UPSTASH_REDIS_REST_URL: rest.url, UPSTASH_REDIS_REST_TOKEN: rest.token })
})

// On a cluster a command handed to the Cluster client may reach no socket (a node whose connection
// ended during the freeze, a node still connecting after a redirection): it waits for the
// reconnect and is sent then; only a command written on a connection that closed may have run.
t.test('tcp: freeze/thaw past the idle timeout of every node of a 3-master cluster', async (t) => {
  const cluster = await startRedisCluster(t)
  for (const node of cluster.nodes) {
    const admin = new Redis({ port: node.port, host: '127.0.0.1' })
    await admin.config('SET', 'timeout', String(IDLE_TIMEOUT_S))
    admin.disconnect()
  }
  await freezeThaw(t, 'tcp', { REDIS_URL: cluster.url })
})
