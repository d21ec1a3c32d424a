import t from 'tap'
import { Redis as UpstashRedis } from '@upstash/redis'
import { startRedisServer } from './helpers/redis-server'
import { startRestServer } from './helpers/rest-server'
import { eventually } from './helpers/build'

// The bridge is only useful if the real @upstash/redis client cannot tell it
// from Upstash: every test here goes through that client.

t.test('the REST bridge, driven by the real @upstash/redis client', async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const client = (opts: { encoding?: 'base64' | false, token?: string } = {}): UpstashRedis => new UpstashRedis({
    url: bridge.url,
    token: opts.token ?? bridge.token,
    retry: false,
    enableTelemetry: false,
    responseEncoding: opts.encoding ?? 'base64'
  })
  const r = client()

  t.test('strings, with unicode and JSON values', async (t) => {
    t.equal(await r.set('s:plain', 'héllo wörld ✓ 日本'), 'OK')
    t.equal(await r.get('s:plain'), 'héllo wörld ✓ 日本')
    await r.set('s:json', { nested: { list: [1, 'two', null] } })
    t.same(await r.get('s:json'), { nested: { list: [1, 'two', null] } })
    t.equal(await r.get('s:missing'), null)
    t.equal(await r.incr('s:counter'), 1)
    t.equal(await r.incrby('s:counter', 41), 42)
  })

  t.test('without base64 encoding the same values come back as plain JSON', async (t) => {
    const plain = client({ encoding: false })
    await plain.set('p:k', 'ünïcode')
    t.equal(await plain.get('p:k'), 'ünïcode')
    t.same(await plain.mget('p:k', 'p:none'), ['ünïcode', null])
  })

  t.test('binary-safe values survive the base64 encoding', async (t) => {
    const raw = new UpstashRedis({ url: bridge.url, token: bridge.token, retry: false, enableTelemetry: false, automaticDeserialization: false })
    await raw.set('b:k', 'line1\nline2\t\u0000end')
    t.equal(await raw.get('b:k'), 'line1\nline2\t\u0000end')
  })

  t.test('hashes', async (t) => {
    t.equal(await r.hset('h:1', { name: 'ada', age: 36 }), 2)
    t.same(await r.hgetall('h:1'), { name: 'ada', age: 36 })
    t.equal(await r.hget('h:1', 'name'), 'ada')
  })

  t.test('sorted sets with scores', async (t) => {
    await r.zadd('z:1', { score: 2, member: 'b' }, { score: 1, member: 'a' })
    t.same(await r.zrange('z:1', 0, -1), ['a', 'b'])
    t.same(await r.zrange('z:1', 0, -1, { withScores: true }), ['a', 1, 'b', 2])
    t.equal(await r.zcard('z:1'), 2)
  })

  t.test('lists', async (t) => {
    t.equal(await r.rpush('l:1', 'x', 'y', 'z'), 3)
    t.same(await r.lrange('l:1', 0, -1), ['x', 'y', 'z'])
    t.equal(await r.lpop('l:1'), 'x')
  })

  t.test('streams: nested arrays', async (t) => {
    const id = await r.xadd('x:1', '*', { field: 'value', n: 1 })
    t.match(id, /^\d+-\d+$/)
    const entries = await r.xrange('x:1', '-', '+')
    t.same(entries, { [id]: { field: 'value', n: 1 } })
  })

  t.test('EVAL with keys and arguments', async (t) => {
    const result = await r.eval('redis.call("SET", KEYS[1], ARGV[1]); return {redis.call("GET", KEYS[1]), 7}', ['e:1'], ['val'])
    t.same(result, ['val', 7])
  })

  t.test('pipeline returns one result per command, errors in place', async (t) => {
    const p = r.pipeline()
    p.set('pl:1', 'a')
    p.get('pl:1')
    p.incr('pl:1') // not an integer: an error for this command only
    const results = await p.exec({ keepErrors: true })
    t.equal(results[0].result, 'OK')
    t.equal(results[1].result, 'a')
    t.match(results[2].error, /not an integer/)
  })

  t.test('multi-exec runs the commands as one transaction', async (t) => {
    const m = r.multi()
    m.set('tx:1', '1')
    m.incr('tx:1')
    m.get('tx:1')
    t.same(await m.exec(), ['OK', 2, 2])
    t.equal(bridge.requests.multiExec, 1)
  })

  t.test('command errors become UpstashError with the Redis message', async (t) => {
    await r.set('err:str', 'x')
    await t.rejects(r.lpush('err:str', 'y'), { name: 'UpstashError', message: /WRONGTYPE/ })
  })

  t.test('blocking commands are refused, not left hanging', async (t) => {
    const res = await fetch(bridge.url, { method: 'POST', headers: { authorization: `Bearer ${bridge.token}` }, body: '["BLPOP","never","1"]' })
    t.equal(res.status, 400)
    t.match(await res.json(), { error: /not supported over REST/ })
  })

  t.test('read-your-writes: every answer carries an upstash-sync-token that moves on, and the client keeps and sends it', async (t) => {
    const writer = client()
    t.equal(writer.readYourWritesSyncToken, '', 'nothing seen yet')
    await writer.set('ryw:k', 'v1')
    const first = writer.readYourWritesSyncToken
    t.ok(first !== undefined && first !== '', 'a token after the first write')
    await writer.set('ryw:k', 'v2')
    t.not(writer.readYourWritesSyncToken, first, 'a new token after the next write')
    const afterSet = writer.readYourWritesSyncToken
    await writer.pipeline().set('ryw:p', 1).get('ryw:p').exec()
    t.not(writer.readYourWritesSyncToken, afterSet, 'a pipeline moves it on too')
    // A second client handed the writer's session (as across serverless invocations) reads what it wrote.
    const reader = client()
    reader.readYourWritesSyncToken = writer.readYourWritesSyncToken
    t.equal(await reader.get('ryw:k'), 'v2')
    const res = await fetch(bridge.url, { method: 'POST', headers: { authorization: `Bearer ${bridge.token}`, 'upstash-sync-token': afterSet ?? '' }, body: '["GET","ryw:k"]' })
    t.match(res.headers.get('upstash-sync-token'), /^\d+$/, 'the raw header, as Upstash sends it')
  })

  t.test('a wrong or missing token is answered 401', async (t) => {
    await t.rejects(client({ token: 'wrong' }).ping(), /Unauthorized/)
    const res = await fetch(bridge.url, { method: 'POST', body: '["PING"]' })
    t.equal(res.status, 401)
    t.same(await res.json(), { error: 'Unauthorized' })
  })

  t.test('path-style commands and malformed bodies', async (t) => {
    const headers = { authorization: `Bearer ${bridge.token}` }
    const set = await fetch(`${bridge.url}/set/path%20key/v1`, { headers })
    t.same(await set.json(), { result: 'OK' })
    const get = await fetch(`${bridge.url}/get/path%20key`, { headers })
    t.same(await get.json(), { result: 'v1' })
    const bad = await fetch(bridge.url, { method: 'POST', headers, body: '{not json' })
    t.equal(bad.status, 400)
    t.match(await bad.json(), { error: /parse/ })
  })

  t.test('subscribe delivers published messages as an event stream', async (t) => {
    const sub = r.subscribe<string>(['news'])
    const received: unknown[] = []
    sub.on('message', ({ message }) => received.push(message))
    t.teardown(async () => await sub.unsubscribe())
    await eventually(async () => (await r.publish('news', 'probe')) > 0, 3000, 'subscription')
    await r.publish('news', { headline: 'hello' })
    await eventually(() => received.some((m) => typeof m === 'object'), 3000, 'message delivery')
    t.same(received.at(-1), { headline: 'hello' })
  })

  t.test('a subscriber that goes away releases its Redis subscription', async (t) => {
    const sub = r.subscribe<string>(['leaving'])
    await eventually(async () => (await r.publish('leaving', 'probe')) === 1, 3000, 'subscription')
    await sub.unsubscribe() // aborts the event stream's request
    await eventually(async () => (await r.publish('leaving', 'probe')) === 0, 3000, 'no receiver left')
    t.equal(await r.publish('leaving', 'after'), 0, 'the bridge unsubscribed when the client went away')
  })

  t.test('psubscribe delivers pattern messages with their channel', async (t) => {
    const sub = r.psubscribe<string>(['room:*'])
    const received: Array<{ channel: string, message: unknown }> = []
    sub.on('pmessage', ({ channel, message }) => received.push({ channel, message }))
    t.teardown(async () => await sub.unsubscribe())
    await eventually(async () => (await r.publish('room:1', 'probe')) > 0, 3000, 'pattern subscription')
    await r.publish('room:42', { text: 'hi' }) // the client JSON-parses pattern messages without a fallback
    await eventually(() => received.some((m) => m.channel === 'room:42'), 3000, 'pattern delivery')
    t.same(received.find((m) => m.channel === 'room:42'), { channel: 'room:42', message: { text: 'hi' } })
  })
})
