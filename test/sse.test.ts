import t, { type Test } from 'tap'
import http from 'node:http'
import net from 'node:net'
import type { AddressInfo } from 'node:net'
import { EventSource } from 'eventsource'
import { Redis } from 'ioredis'
import { build, eventually, type Built } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import { startRestServer } from '../support/rest-server'
import { envForTier } from './helpers/tiers'
import { connectSse } from './helpers/sse-client'
import type { EnvInput } from '../lib/config'
import type { Tier } from '../lib/resolve-tier'

// fastify.sse against a listening server and real streaming clients
// (inject cannot observe a long-lived stream): one spec per tier, then
// several instances, faults, and a standards EventSource client.

const BASE = { DEMO_ROUTES: true, REDIS_CONNECT_TIMEOUT_MS: 1000, REDIS_COMMAND_TIMEOUT_MS: 500, SSE_PREFIX: 'ssespec', SSE_RETRY_MS: 1500 }
const USER = { 'x-user-id': 'u1' }

async function serve (t: Test, env: EnvInput): Promise<Built & { url: string }> {
  const built = await build(t, env)
  await built.app.listen({ port: 0, host: '127.0.0.1' })
  return { ...built, url: `http://127.0.0.1:${(built.app.server.address() as AddressInfo).port}` }
}

async function post (url: string, channel: string, body: unknown, query = ''): Promise<{ id: string }> {
  const res = await fetch(`${url}/events/${channel}${query}`, { method: 'POST', headers: { ...USER, 'content-type': 'application/json' }, body: JSON.stringify(body) })
  if (res.status !== 201) throw new Error(`publish answered ${res.status}: ${await res.text()}`)
  return await res.json() as { id: string }
}

function spec (t: Test, tier: Tier, envFor: (extra?: EnvInput) => EnvInput): void {
  t.test(`${tier}: headers, retry, framing, named events and multi-line data`, async (t) => {
    const { app, url } = await serve(t, envFor())
    t.equal(app.sse.tier, tier)
    const conn = await connectSse(t, `${url}/events/user:u1:a`, USER)
    t.equal(conn.status, 200)
    t.match(conn.headers.get('content-type'), /^text\/event-stream/)
    t.match(conn.headers.get('cache-control'), /no-cache/)
    t.equal(conn.headers.get('x-accel-buffering'), 'no')
    t.equal(conn.headers.get('connection'), 'keep-alive')
    const first = await post(url, 'user:u1:a', { progress: 50 }, '?event=progress')
    const second = await app.sse.publish('user:u1:a', 'line one\nline two')
    const events = await conn.waitFor(2)
    t.equal(conn.retry, 1500, 'retry: comes first')
    t.same(events[0], { id: first.id, event: 'progress', data: '{"progress":50}' })
    t.same(events[1], { id: second, event: 'message', data: 'line one\nline two' })
    t.match(first.id, /^\d+-\d+$/)
  })

  t.test(`${tier}: heartbeat comments keep idle streams open`, async (t) => {
    const { url } = await serve(t, envFor({ SSE_HEARTBEAT_MS: 50 }))
    const conn = await connectSse(t, `${url}/events/public:idle`)
    await eventually(() => conn.comments.includes('ping'), 3000, 'a heartbeat')
    t.ok(conn.comments.filter((c) => c === 'ping').length >= 1)
  })

  t.test(`${tier}: only silent streams get heartbeats`, async (t) => {
    const { app, url } = await serve(t, envFor({ SSE_HEARTBEAT_MS: 600 }))
    const busy = await connectSse(t, `${url}/events/public:busy`)
    const quiet = await connectSse(t, `${url}/events/public:quiet`)
    // An event every 20 ms for 1.8 s: the busy stream is never silent for a whole check (every 300 ms);
    // pinging every stream every interval, as before, gave it 3.
    let sent = 0
    for (const until = Date.now() + 1800; Date.now() < until;) {
      await app.sse.publish('public:busy', { n: sent++ })
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    await busy.waitFor(sent)
    const pings = (conn: typeof busy): number => conn.comments.filter((c) => c === 'ping').length
    t.ok(pings(quiet) >= 2, `the silent stream got pings (${pings(quiet)})`)
    t.ok(pings(busy) <= 1, `the busy stream got none, or one in a stall (${pings(busy)})`)
  })

  t.test(`${tier}: reconnecting with Last-Event-ID replays what was missed, no gap, no duplicate, while events keep flowing`, async (t) => {
    const { app, url } = await serve(t, envFor())
    const channel = 'public:replay'
    const first = await connectSse(t, `${url}/events/${channel}`)
    let n = 0
    let publishing = true
    const publisher = (async () => {
      while (publishing) {
        await app.sse.publish(channel, { n: n++ })
        await new Promise((resolve) => setTimeout(resolve, 2))
      }
    })()
    await first.waitFor(10)
    first.close()
    const seen = first.events.map((e) => (JSON.parse(e.data) as { n: number }).n)
    const lastId = first.events.at(-1)?.id ?? ''
    const byHeader = await connectSse(t, `${url}/events/${channel}`, { 'last-event-id': lastId })
    const byQuery = await connectSse(t, `${url}/events/${channel}?lastEventId=${encodeURIComponent(lastId)}`)
    await byHeader.waitFor(30)
    await byQuery.waitFor(30)
    publishing = false
    await publisher
    for (const [how, conn] of [['header', byHeader], ['query', byQuery]] as const) {
      const after = conn.events.map((e) => (JSON.parse(e.data) as { n: number }).n)
      const expected = Array.from({ length: after.length }, (_v, i) => seen[seen.length - 1] + 1 + i)
      t.same(after, expected, `${how}: continues right after the last seen event, in order, no gap, no duplicate`)
    }
  })

  t.test(`${tier}: an id older than the retained history gets event: reset`, async (t) => {
    const { app, url } = await serve(t, envFor({ SSE_HISTORY: 5 }))
    const ids: string[] = []
    for (let i = 0; i < 12; i++) ids.push(await app.sse.publish('public:short', { i }))
    const conn = await connectSse(t, `${url}/events/public:short`, { 'last-event-id': ids[0] })
    const events = await conn.waitFor(6)
    t.equal(events[0].event, 'reset')
    t.same(events.slice(1).map((e) => e.id), ids.slice(-5), 'then the retained history')
    const garbage = await connectSse(t, `${url}/events/public:short`, { 'last-event-id': 'not-an-id' })
    t.equal((await garbage.waitFor(1))[0].event, 'reset', 'a malformed id also resets')
  })

  t.test(`${tier}: authorization, validation and the client cap`, async (t) => {
    const { app, url } = await serve(t, envFor({ SSE_MAX_CLIENTS: 2 }))
    t.equal((await fetch(`${url}/events/user:u2:a`, { headers: USER })).status, 403)
    t.equal((await fetch(`${url}/events/user:u2:a`)).status, 403, 'no identity: only public channels')
    t.equal((await fetch(`${url}/events/bad%20channel`)).status, 400)
    t.equal((await fetch(`${url}/events/public:x`, { method: 'POST', headers: { ...USER, 'content-type': 'application/json' }, body: '{bad' })).status, 400)
    await t.rejects(app.sse.publish('has space', 1), { statusCode: 400, message: /invalid channel name/ })
    await t.rejects(app.sse.publish('public:x', 1, { event: 'bad event' }), { statusCode: 400, message: /invalid event name/ })
    await connectSse(t, `${url}/events/public:cap`)
    await connectSse(t, `${url}/events/public:cap`)
    const third = await fetch(`${url}/events/public:cap`)
    t.equal(third.status, 503)
    t.match(await third.text(), /SSE_MAX_CLIENTS/)
  })

  t.test(`${tier}: a burst of 200 concurrent connects admits at most SSE_MAX_CLIENTS`, async (t) => {
    const { app, url } = await serve(t, envFor({ SSE_MAX_CLIENTS: 20 }))
    const agent = new http.Agent({ maxSockets: Infinity })
    t.teardown(() => agent.destroy())
    // Raw requests, all sent before any answer: the reconnect storm after a deploy.
    const responses = await Promise.all(Array.from({ length: 200 }, async () => await new Promise<http.IncomingMessage>((resolve, reject) => {
      http.get(`${url}/events/public:burst`, { agent }, resolve).on('error', reject)
    })))
    const admitted = responses.filter((r) => r.statusCode === 200)
    t.equal(admitted.length, 20, 'exactly the cap is admitted')
    t.equal(responses.filter((r) => r.statusCode === 503).length, 180, 'the rest is refused with 503')
    t.equal(app.sse.stats().clients, 20)
    for (const r of responses) r.destroy()
    await eventually(() => app.sse.stats().clients === 0, 5000, 'every slot given back')
    const again = await connectSse(t, `${url}/events/public:burst`)
    t.equal(again.status, 200, 'refusals did not leak slots: a new stream is admitted')
  })

  t.test(`${tier}: a Last-Event-ID beyond the newest event gets a reset, then live events`, async (t) => {
    const { app, url } = await serve(t, envFor())
    await app.sse.publish('public:future', 'history')
    for (const channel of ['public:future', 'public:future-empty']) {
      const conn = await connectSse(t, `${url}/events/${channel}`, { 'last-event-id': '9999999999999-0' })
      t.equal((await conn.waitFor(1))[0].event, 'reset', `${channel}: told to resync`)
      await eventually(() => app.sse.stats().clients === 1, 3000, 'registered')
      const id = await app.sse.publish(channel, 'live')
      const events = await conn.waitFor(2)
      t.same(events[1], { id, event: 'message', data: 'live' }, `${channel}: live events flow afterwards`)
      conn.close()
      await eventually(() => app.sse.stats().clients === 0, 3000, 'closed')
    }
  })

  t.test(`${tier}: HEAD answers at once with the stream headers, no body, and holds no slot`, async (t) => {
    const { app, url } = await serve(t, envFor({ SSE_MAX_CLIENTS: 1 }))
    const started = performance.now()
    const res = await fetch(`${url}/events/public:head`, { method: 'HEAD' })
    const ms = performance.now() - started
    t.equal(res.status, 200)
    t.match(res.headers.get('content-type'), /^text\/event-stream/)
    t.equal(await res.text(), '', 'no body')
    t.ok(ms < 100, `answered in ${ms.toFixed(1)} ms`)
    t.equal(app.sse.stats().clients, 0, 'no slot held')
    t.equal((await connectSse(t, `${url}/events/public:head`)).status, 200, 'the only slot is still free')
    t.equal((await fetch(`${url}/events/user:u2:x`, { method: 'HEAD' })).status, 403, 'HEAD is authorized like GET')
  })

  t.test(`${tier}: a client that stops reading is cut off instead of growing memory`, async (t) => {
    const { app, url } = await serve(t, envFor({ SSE_MAX_BUFFER_BYTES: 256 * 1024, SSE_HISTORY: 2 }))
    const { port } = new URL(url)
    const socket = net.connect(Number(port), '127.0.0.1')
    t.teardown(() => socket.destroy())
    await new Promise((resolve) => socket.once('connect', resolve))
    socket.write('GET /events/public:slow HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n')
    socket.pause() // never read: the kernel buffers fill, then ours
    await eventually(() => app.sse.stats().clients === 1, 3000, 'the slow client connected')
    const big = 'x'.repeat(256 * 1024)
    for (let i = 0; i < 200 && app.sse.stats().slowClientsDropped === 0; i++) await app.sse.publish('public:slow', big)
    await eventually(() => app.sse.stats().slowClientsDropped === 1, 5000, 'the slow client dropped')
    await eventually(() => app.sse.stats().clients === 0, 3000, 'and removed')
  })

  t.test(`${tier}: disconnects remove every listener; close() ends streams promptly`, async (t) => {
    const { app, url } = await serve(t, envFor())
    const a = await connectSse(t, `${url}/events/public:one`)
    const b = await connectSse(t, `${url}/events/public:two`)
    t.match(app.sse.stats(), { clients: 2, channels: 2 }, 'counted')
    const bus = tier === 'memory' ? null : app.connections.bus(tier)
    if (bus !== null) t.equal(bus.subscriptions()['ssespec:sse:events'], 1, 'one fan-out subscription for every client')
    a.close()
    await eventually(() => app.sse.stats().clients === 1, 3000, 'a removed')
    t.equal(app.sse.stats().channels, 1)
    const started = Date.now()
    const closing = app.close()
    await b.ended
    t.ok(Date.now() - started < 1000, `close() ended the stream in ${Date.now() - started} ms`)
    await closing // may wait for an idle keep-alive socket the HTTP client opened on its own
    t.match(app.sse.stats(), { clients: 0, channels: 0 })
    if (bus !== null) t.notOk('ssespec:sse:events' in bus.subscriptions(), 'the fan-out subscription is gone')
  })
}

t.test('the sse specification on every tier', async (t) => {
  const redis = await startRedisServer(t)
  const rest = await startRestServer(t, redis)
  for (const tier of ['tcp', 'rest', 'memory'] as const) spec(t, tier, (extra = {}) => envForTier(tier, redis, rest, { ...BASE, ...extra }))
})

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: a client on instance B receives what instance A publishes`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const env = envForTier(tier, redis, rest, BASE)
    const a = await serve(t, env)
    const b = await serve(t, env)
    const conn = await connectSse(t, `${b.url}/events/user:u1:jobs`, USER)
    await eventually(() => b.app.sse.stats().clients === 1, 3000, 'client on B')
    const { id } = await post(a.url, 'user:u1:jobs', { step: 1 })
    const [event] = await conn.waitFor(1)
    t.same(event, { id, event: 'message', data: '{"step":1}' })
    const replay = await connectSse(t, `${a.url}/events/user:u1:jobs`, { ...USER, 'last-event-id': '0-1' })
    t.equal((await replay.waitFor(1))[0].id, id, "A replays B's history too: it lives in Redis")
  })
}

for (const tier of ['tcp', 'rest'] as const) {
  t.test(`${tier}: 500 clients on 50 channels hold one Redis subscription, gone with the last client`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const { app, url } = await serve(t, envForTier(tier, redis, rest, BASE))
    const direct = new Redis(redis.url)
    t.teardown(() => direct.disconnect())
    const subscriptions = async (): Promise<number> => Number(((await direct.pubsub('NUMSUB', 'ssespec:sse:events')) as [string, number])[1])
    const agent = new http.Agent({ maxSockets: Infinity })
    t.teardown(() => agent.destroy())
    const received = Array.from({ length: 500 }, () => 0)
    const requests = received.map((_n, i) => http.get(`${url}/events/public:many${i % 50}`, { agent }, (res) => {
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { received[i] += chunk.split('\ndata: ').length - 1 })
    }))
    await eventually(() => app.sse.stats().clients === 500, 10_000, '500 streams')
    t.equal(await subscriptions(), 1, 'one subscription in Redis for 500 clients (one connection on tcp, one event stream on rest)')
    for (let c = 0; c < 50; c++) await app.sse.publish(`public:many${c}`, { c })
    await eventually(() => received.every((n) => n === 1), 5000, 'each client its one event')
    t.equal(received.reduce((a, b) => a + b, 0), 500)
    for (const request of requests) request.destroy()
    await eventually(async () => await subscriptions() === 0, 5000, 'the subscription dropped with the last client')
    t.match(app.sse.stats(), { clients: 0, channels: 0 })
  })

  t.test(`${tier}: Redis restarted while clients are connected`, async (t) => {
    const redis = await startRedisServer(t)
    const rest = await startRestServer(t, redis)
    const env = envForTier(tier, redis, rest, BASE)
    const { app, url } = await serve(t, env)
    const conn = await connectSse(t, `${url}/events/public:restart`)
    await app.sse.publish('public:restart', 'before')
    await conn.waitFor(1)
    await redis.stop()
    await t.rejects(app.sse.publish('public:restart', 'during'), { statusCode: 503, message: /Redis did not accept the event/ }, 'publishing during the outage answers 503, fast')
    t.notOk(conn.isEnded(), 'the client stays connected')
    await redis.restart()
    await eventually(async () => {
      await app.sse.publish('public:restart', 'after').catch(() => {})
      return conn.events.some((e) => e.data === 'after')
    }, 15000, 'an event published after Redis is back')
    t.ok(conn.events.some((e) => e.data === 'after'))
  })
}

t.test('a standards-compliant EventSource client (npm eventsource)', async (t) => {
  const { app, url } = await serve(t, BASE)
  const source = new EventSource(`${url}/events/public:es`)
  t.teardown(() => source.close())
  await new Promise<void>((resolve, reject) => { source.onopen = () => resolve(); source.onerror = () => reject(new Error('EventSource failed')) })
  const received: Array<{ type: string, data: string, lastEventId: string }> = []
  source.addEventListener('message', (e) => received.push({ type: e.type, data: String(e.data), lastEventId: e.lastEventId }))
  source.addEventListener('progress', (e) => received.push({ type: e.type, data: String(e.data), lastEventId: e.lastEventId }))
  const one = await app.sse.publish('public:es', { a: 1 })
  const two = await app.sse.publish('public:es', 'multi\nline', { event: 'progress' })
  await eventually(() => received.length === 2, 3000, 'two events')
  t.same(received, [
    { type: 'message', data: '{"a":1}', lastEventId: one },
    { type: 'progress', data: 'multi\nline', lastEventId: two }
  ])
})

t.test('a skipped sse still decorates and answers 503 with the reason', async (t) => {
  const { app } = await build(t, { ...BASE, SSE_ENABLED: 'false' })
  t.equal(app.sse.available, false)
  const res = await app.inject('/events/public:x')
  t.equal(res.statusCode, 503)
  t.match(res.json(), { message: 'sse is unavailable: disabled by SSE_ENABLED=false' })
  await t.rejects(app.sse.publish('public:x', 1), { statusCode: 503, message: /disabled by SSE_ENABLED=false/ })
})

t.test('channels of 128 characters stream and publish through the routes; 129 are refused with our 400', async (t) => {
  const { url } = await serve(t, BASE)
  const ok = `public:${'c'.repeat(121)}`
  t.equal(ok.length, 128)
  const conn = await connectSse(t, `${url}/events/${ok}`)
  t.equal(conn.status, 200)
  const { id } = await post(url, ok, { n: 1 })
  t.equal((await conn.waitFor(1))[0].id, id)
  for (const [method, body] of [['GET', undefined], ['POST', '{}']] as const) {
    const res = await fetch(`${url}/events/${ok}c`, { method, headers: { ...USER, 'content-type': 'application/json' }, body })
    t.equal(res.status, 400, `${method} with 129 characters`)
    t.match(await res.json(), { statusCode: 400, message: /channel/ })
  }
})

t.test('the demo publish route caps its body at 64 KiB', async (t) => {
  const { url } = await serve(t, BASE)
  const res = await fetch(`${url}/events/public:big`, { method: 'POST', headers: { ...USER, 'content-type': 'application/json' }, body: JSON.stringify({ x: 'x'.repeat(64 * 1024) }) })
  t.equal(res.status, 413)
  t.equal((await fetch(`${url}/events/public:big`, { method: 'POST', headers: { ...USER, 'content-type': 'application/json' }, body: JSON.stringify({ x: 'x'.repeat(60 * 1024) }) })).status, 201)
})

t.test('tcp: 20 publishes refused during an outage log one stack-free warn line', async (t) => {
  const redis = await startRedisServer(t)
  const { app, url, logs } = await serve(t, { ...BASE, REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: 300, SSE_TIMEOUT_MS: 300 })
  await redis.stop()
  await eventually(() => !app.connections.tiers.tcp.reachable, 3000, 'tcp marked down')
  const before = logs().length
  for (let i = 0; i < 20; i++) {
    const res = await fetch(`${url}/events/public:down`, { method: 'POST', headers: { ...USER, 'content-type': 'application/json' }, body: '{}' })
    t.equal(res.status, 503, `publish ${i + 1} refused`)
  }
  const lines = logs().slice(before).filter((l) => l.level >= 40)
  t.same(lines.filter((l) => l.level >= 50), [], 'nothing at error level')
  const outage = lines.filter((l) => l.feature === 'sse')
  t.equal(outage.length, 1, 'one line for 20 refusals')
  t.equal(outage[0].level, 40)
  t.match(outage[0].msg, /^sse is unavailable: Redis did not accept the event: tcp is down: .*the Redis in REDIS_URL/, 'the reason is the tier\'s diagnosis, naming the variable')
  t.notMatch(outage[0].msg, /127\.0\.0\.1:\d+/, 'but not the address')
  t.notOk(JSON.stringify(lines).includes('    at '), 'no stack trace')
  t.equal(app.sse.stats().redisErrors, 20, 'every refusal is still counted')
})
