import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import net from 'node:net'
import { Redis as UpstashRedis } from '@upstash/redis'
import { Ratelimit } from '@upstash/ratelimit'
import { Redis } from 'ioredis'
import { startRestBridge } from '../tools/rest-bridge'
import { startRedisServer } from '../support/redis-server'
import { startRestServer, TEST_REST_TOKEN } from '../support/rest-server'
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

// ---- strict as Upstash, and no one client can hold it

interface Answer { status: number, body: unknown }
interface Entry { result?: unknown, error?: string }

function caller (bridge: { url: string, token: string }) {
  const headers = { authorization: `Bearer ${bridge.token}` }
  const post = async (path: string, body: unknown): Promise<Answer> => {
    const res = await fetch(`${bridge.url}${path}`, { method: 'POST', headers, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() }
  }
  return {
    command: async (args: string[]) => await post('/', args),
    pipeline: async (commands: string[][]) => await post('/pipeline', commands),
    multiExec: async (commands: string[][]) => await post('/multi-exec', commands),
    pathStyle: async (args: string[]): Promise<Answer> => {
      const res = await fetch(`${bridge.url}/${args.map(encodeURIComponent).join('/')}`, { headers })
      return { status: res.status, body: await res.json() }
    }
  }
}

function harnessClient (t: Test, url: string): Redis {
  const redis = new Redis(url, { protocol: 2, lazyConnect: true, maxRetriesPerRequest: 1 })
  t.teardown(() => redis.disconnect())
  return redis
}

t.test('scripts flagged allow-key-locking (Upstash accepts the flag, Redis does not): @upstash/ratelimit runs through the bridge', async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const upstash = new UpstashRedis({ url: bridge.url, token: bridge.token, retry: false, enableTelemetry: false })
  for (const [name, algorithm] of [['fixed', Ratelimit.fixedWindow(2, '60 s')], ['sliding', Ratelimit.slidingWindow(2, '60 s')]] as const) {
    const limiter = new Ratelimit({ redis: upstash, limiter: algorithm, prefix: `rl-${name}`, analytics: false, ephemeralCache: false })
    const decisions = []
    for (let i = 0; i < 3; i++) decisions.push((await limiter.limit('client')).success)
    t.same(decisions, [true, true, false], `${name} window: two allowed, the third refused`)
  }
  const admin = harnessClient(t, redis.url)
  const stats = await admin.info('commandstats')
  t.match(stats, /^cmdstat_eval:calls=2,/m, 'each script sent whole once, after its first NOSCRIPT')
  t.match(stats, /^cmdstat_evalsha:calls=6,.*failed_calls=2$/m, 'every later call is an EVALSHA of the client\'s own sha1, run as the script Redis loaded without the flag')
  const flagged = '#!lua flags=allow-key-locking,no-writes\nreturn redis.call("GET", KEYS[1])'
  t.equal(await upstash.eval(flagged, ['rl-none'], []), null, 'the flags Redis knows are kept')
  t.equal(await upstash.eval('#!lua flags=allow-key-locking\nreturn 1', [], []), 1, 'a script with only that flag')
})

t.test('the bridge refuses the administrative commands Upstash refuses', async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const call = caller(bridge)
  const direct = harnessClient(t, redis.url)
  // MIGRATE would make Redis connect out to any host: a listener shows whether it tried.
  const migrateTarget = net.createServer((socket) => socket.destroy())
  let migrateConnections = 0
  migrateTarget.on('connection', () => { migrateConnections++ })
  migrateTarget.listen(0, '127.0.0.1')
  await once(migrateTarget, 'listening')
  t.teardown(() => migrateTarget.close())
  const migratePort = String((migrateTarget.address() as net.AddressInfo).port)

  const refused: Array<[string, string[]]> = [
    ['CONFIG', ['CONFIG', 'SET', 'maxmemory', '1']],
    ['CONFIG', ['CONFIG', 'GET', 'requirepass']],
    ['CONFIG', ['CONFIG', 'RESETSTAT']],
    ['ACL', ['ACL', 'SETUSER', 'probe', 'on', '>pw', '~*', '+@all']],
    ['MIGRATE', ['MIGRATE', '127.0.0.1', migratePort, 'victim', '0', '1000']],
    ['SAVE', ['SAVE']],
    ['BGSAVE', ['BGSAVE']],
    ['BGREWRITEAOF', ['BGREWRITEAOF']],
    ['SWAPDB', ['SWAPDB', '0', '1']],
    ['MOVE', ['MOVE', 'victim', '1']],
    ['SCRIPT FLUSH', ['SCRIPT', 'FLUSH']],
    ['SCRIPT KILL', ['script', 'kill']],
    ['FUNCTION FLUSH', ['FUNCTION', 'FLUSH']],
    ['FUNCTION DELETE', ['FUNCTION', 'DELETE', 'lib']],
    ['FUNCTION RESTORE', ['FUNCTION', 'RESTORE', 'payload']],
    ['DEBUG', ['DEBUG', 'SLEEP', '0']],
    ['MODULE', ['MODULE', 'LIST']],
    ['SHUTDOWN', ['SHUTDOWN', 'NOSAVE']],
    ['MONITOR', ['MONITOR']],
    ['REPLICAOF', ['REPLICAOF', '127.0.0.1', migratePort]],
    ['SLAVEOF', ['SLAVEOF', 'NO', 'ONE']],
    ['CLIENT', ['CLIENT', 'KILL', 'TYPE', 'normal']],
    ['CLIENT', ['CLIENT', 'LIST']],
    ['SLOWLOG', ['SLOWLOG', 'RESET']],
    ['LATENCY', ['LATENCY', 'RESET']]
  ]
  await direct.set('victim', 'still here')

  for (const [name, args] of refused) {
    t.test(`${args.slice(0, 2).join(' ')} is refused alone, in a pipeline, in a transaction and path style`, async (t) => {
      const error = `ERR Command is not available: '${name}'`
      t.same(await call.command(args), { status: 400, body: { error } }, 'alone')
      t.same(await call.pipeline([['SET', 'ran:pipeline', '1'], args]), { status: 400, body: { error } }, 'in a pipeline')
      t.same(await call.multiExec([['SET', 'ran:multi', '1'], args]), { status: 400, body: { error } }, 'in a transaction')
      t.same(await call.pathStyle(args), { status: 400, body: { error } }, 'path style')
      t.equal(await direct.exists('ran:pipeline', 'ran:multi'), 0, 'nothing else in the refused batches ran')
    })
  }

  t.test('none of them reached Redis', async (t) => {
    t.equal(migrateConnections, 0, 'MIGRATE did not connect out')
    t.notMatch(await direct.call('ACL', 'LIST'), [/probe/], 'no backdoor user')
    t.same(await direct.call('CONFIG', 'GET', 'maxmemory'), ['maxmemory', '0'])
    t.equal(await direct.get('victim'), 'still here', 'no SWAPDB, no MOVE')
    t.equal(await direct.call('PING'), 'PONG', 'no SHUTDOWN')
  })

  t.test('a refusal names the command, never its arguments', async (t) => {
    const answer = await call.command(['CONFIG', 'SET', 'requirepass', 'hunter2-secret'])
    t.notMatch(JSON.stringify(answer.body), /hunter2/)
    const unknown = await call.command(['NOSUCHCOMMAND', 'hunter2-secret'])
    t.equal(unknown.status, 400)
    t.match(unknown.body, { error: /^ERR unknown command/ })
    t.notMatch(JSON.stringify(unknown.body), /hunter2/, 'Redis quotes the arguments of an unknown command; the bridge drops them')
  })

  t.test('what the app and Upstash clients use stays available', async (t) => {
    const loaded = await call.command(['SCRIPT', 'LOAD', 'return 1'])
    t.match(loaded, { status: 200, body: { result: /^[0-9a-f]{40}$/ } }, 'SCRIPT LOAD')
    const sha = (loaded.body as { result: string }).result
    t.same(await call.command(['SCRIPT', 'EXISTS', sha]), { status: 200, body: { result: [1] } }, 'SCRIPT EXISTS')
    t.same(await call.command(['EVALSHA', sha, '0']), { status: 200, body: { result: 1 } }, 'EVALSHA')
    t.same(await call.command(['FUNCTION', 'LIST']), { status: 200, body: { result: [] } }, 'FUNCTION LIST')
    t.same(await call.command(['CONFIG', 'SET', 'notify-keyspace-events', 'Kx']), { status: 200, body: { result: 'OK' } }, 'CONFIG SET notify-keyspace-events, as on Upstash')
    t.same(await call.command(['CONFIG', 'GET', 'notify-keyspace-events']), { status: 200, body: { result: ['notify-keyspace-events', 'xK'] } })
    t.notMatch(await call.command(['CLIENT', 'SETINFO', 'LIB-NAME', 'probe']), { body: { error: /not available/ } }, 'CLIENT SETINFO reaches Redis (7.2 and later answer OK)')
    t.match(await call.command(['INFO', 'server']), { status: 200, body: { result: /redis_version/ } }, 'INFO')
    t.same(await call.command(['KEYS', 'victim']), { status: 200, body: { result: ['victim'] } }, 'KEYS')
    t.same(await call.pipeline([['FLUSHDB'], ['DBSIZE']]), { status: 200, body: [{ result: 'OK' }, { result: 0 }] }, 'FLUSHDB, as on Upstash')
  })
})

t.test('a runaway script is killed by the bridge, which then answers again', async (t) => {
  t.test('with Redis busy-reply-threshold and the bridge deadline at 1 s', async (t) => {
    const redis = await startRedisServer(t, { extraArgs: ['--busy-reply-threshold', '1000'] })
    const bridge = Object.assign(await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN, scriptTimeoutMs: 1000 }), { token: TEST_REST_TOKEN })
    t.teardown(async () => await bridge.close())
    const call = caller(bridge)

    t.test('a single EVAL', async (t) => {
      const start = Date.now()
      const [runaway, ping] = await Promise.all([call.command(['EVAL', 'while true do end', '0']), call.command(['PING'])])
      const took = Date.now() - start
      t.match(runaway, { status: 400, body: { error: /killed/i } }, 'the runaway request gets an error')
      t.ok(took < 3000, `recovered in ${took} ms`)
      t.ok(ping.status === 200 || /BUSY/.test(JSON.stringify(ping.body)), 'a request during the script waits or is told Redis is busy')
      t.same(await call.command(['PING']), { status: 200, body: { result: 'PONG' } }, 'the bridge answers again')
    })

    t.test('an EVAL inside a pipeline and inside a transaction', async (t) => {
      const piped = await call.pipeline([['EVAL', 'while true do end', '0'], ['PING']])
      t.match(piped, { status: 200, body: [{ error: /killed/i }, { result: 'PONG' }] })
      const transaction = await call.multiExec([['EVAL', 'while true do end', '0']])
      t.match(transaction, { status: 200, body: [{ error: /killed/i }] })
      t.same(await call.command(['PING']), { status: 200, body: { result: 'PONG' } })
    })
  })

  t.test('with a stock Redis and the default deadline, in about 5 s', async (t) => {
    const redis = await startRedisServer(t)
    const bridge = await startRestServer(t, redis)
    const call = caller(bridge)
    const start = Date.now()
    const runaway = await call.command(['EVAL', 'while true do end', '0'])
    const took = Date.now() - start
    t.match(runaway, { status: 400, body: { error: /killed/i } })
    t.ok(took < 7000, `recovered in ${took} ms`)
    t.same(await call.command(['PING']), { status: 200, body: { result: 'PONG' } })
  })
})

// A separate process sends the big body, as another client would: in this
// process, fetch's own work on a 5 MB body would be measured as the bridge's.
const BIG_SENDER = `
const body = JSON.stringify(Array.from({ length: Number(process.argv[3]) }, () => ['PING']))
process.stdout.write('ready\\n')
process.stdin.once('data', async () => {
  const res = await fetch(process.argv[1] + '/pipeline', { method: 'POST', headers: { authorization: 'Bearer ' + process.argv[2] }, body })
  process.stdout.write(JSON.stringify({ status: res.status, body: await res.json() }) + '\\n')
})`

t.test('one request is bounded, and does not hold the others', async (t) => {
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const call = caller(bridge)

  t.test('a 600 000-command body is refused while concurrent PINGs answer within 100 ms', async (t) => {
    const sender = spawn(process.execPath, ['-e', BIG_SENDER, bridge.url, bridge.token, '600000'], { stdio: ['pipe', 'pipe', 'inherit'], env: { PATH: process.env.PATH } })
    t.teardown(() => sender.kill())
    await once(sender.stdout, 'data') // the body is built
    await call.command(['PING']) // a warm connection, as a client in use has
    const answered = once(sender.stdout, 'data').then(([line]) => JSON.parse(String(line)) as Answer)
    let done = false
    void answered.finally(() => { done = true })
    sender.stdin.write('go\n')
    const latencies: number[] = []
    while (!done) {
      const start = performance.now()
      t.same(await call.command(['PING']), { status: 200, body: { result: 'PONG' } })
      latencies.push(performance.now() - start)
    }
    t.same(await answered, { status: 400, body: { error: 'ERR max pipeline size exceeded. Limit: 1000 commands' } })
    latencies.sort((a, b) => a - b)
    const median = latencies[Math.floor(latencies.length / 2)]
    t.ok(median < 100, `median of ${latencies.length} concurrent PINGs: ${median.toFixed(1)} ms`)
    // Not 100 ms for the slowest: on this shared 2-core machine (load 8 while measured), under tap's coverage, PINGs with
    // nothing else running already take up to ~80 ms now and then (the bridge used to hold them 7 s).
    t.ok(latencies[latencies.length - 1] < 500, `slowest: ${latencies[latencies.length - 1].toFixed(1)} ms`)
  })

  t.test('a pipeline of 1 000 commands runs; one of 1 001 is refused before it runs', async (t) => {
    const incr = (n: number): string[][] => Array.from({ length: n }, () => ['INCR', 'counted'])
    const ran = await call.pipeline(incr(1000))
    t.equal(ran.status, 200)
    t.same((ran.body as Entry[]).at(-1), { result: 1000 })
    t.same(await call.multiExec(incr(1001)), { status: 400, body: { error: 'ERR max pipeline size exceeded. Limit: 1000 commands' } })
    t.same(await call.command(['GET', 'counted']), { status: 200, body: { result: '1000' } })
  })

  t.test('an answer past 10 MiB is refused, not built', async (t) => {
    t.same(await call.command(['SET', 'mb', 'x'.repeat(1024 * 1024)]), { status: 200, body: { result: 'OK' } })
    const gets = Array.from({ length: 20 }, () => ['GET', 'mb'])
    const error = `ERR max response size exceeded. Limit: ${10 * 1024 * 1024} bytes`
    t.same(await call.pipeline(gets), { status: 400, body: { error } }, 'a pipeline')
    t.same(await call.multiExec(gets), { status: 400, body: { error } }, 'a transaction')
    t.same(await call.command(['MGET', ...Array.from({ length: 20 }, () => 'mb')]), { status: 400, body: { error } }, 'one command')
    const some = await call.pipeline(gets.slice(0, 5))
    t.equal(some.status, 200, '5 MiB is within the limit')
  })

  t.test('a body past its limit is refused', async (t) => {
    const small = Object.assign(await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN, maxBodyBytes: 1000 }), { token: TEST_REST_TOKEN })
    t.teardown(async () => await small.close())
    t.same(await caller(small).command(['SET', 'big', 'x'.repeat(2000)]), { status: 400, body: { error: 'ERR max request size exceeded. Limit: 1000 bytes' } })
    t.same(await caller(small).command(['PING']), { status: 200, body: { result: 'PONG' } })
  })
})

interface EventStream { status: number, text: () => string, ended: Promise<void>, close: () => void }

async function openStream (t: Test, bridge: { url: string, token: string }, path: string): Promise<EventStream> {
  const controller = new AbortController()
  t.teardown(() => controller.abort())
  const res = await fetch(`${bridge.url}/${path}`, { method: 'POST', headers: { authorization: `Bearer ${bridge.token}` }, signal: controller.signal })
  let text = ''
  const decoder = new TextDecoder()
  const ended = (async () => {
    try {
      for await (const chunk of res.body ?? []) text += decoder.decode(chunk as Uint8Array, { stream: true })
    } catch { /* aborted */ }
  })()
  return { status: res.status, text: () => text, ended, close: () => controller.abort() }
}

function subscribers (clientList: string): string[] {
  return clientList.split('\n').filter((line) => /\b(sub|psub)=[1-9]/.test(line))
}

t.test('subscriptions share one Redis connection', async (t) => {
  const redis = await startRedisServer(t)
  const direct = harnessClient(t, redis.url)

  t.test('150 streams over 3 channels and a pattern hold one subscriber connection', async (t) => {
    const bridge = await startRestServer(t, redis)
    const streams = await Promise.all(Array.from({ length: 150 }, async (_, i) =>
      await openStream(t, bridge, i % 4 === 3 ? 'psubscribe/room:*' : `subscribe/room:${i % 4}`)))
    t.ok(streams.every((s) => s.status === 200), 'all 150 confirmed')
    const held = subscribers(await direct.call('CLIENT', 'LIST') as string)
    t.equal(held.length, 1, 'one connection in subscriber mode')
    t.match(held[0], /name=rest-bridge-subscriber .*sub=3 psub=1 /, 'each channel and the pattern subscribed once')
    t.equal(await direct.publish('room:1', 'hello'), 2, 'Redis delivers to one connection (the channel and the pattern)')
    await eventually(() => streams.every((s, i) => s.text().includes(i % 4 === 3 ? 'pmessage,room:*,room:1,hello' : i % 4 === 1 ? 'message,room:1,hello' : 'subscribe')), 3000, 'fan-out')
    t.ok(streams.filter((_, i) => i % 4 !== 1 && i % 4 !== 3).every((s) => !s.text().includes('hello')), 'other channels got nothing')
    for (const s of streams.filter((_, i) => i % 4 === 1)) s.close()
    await eventually(async () => await direct.publish('room:1', 'x') === 1, 3000, 'room:1 released when its last stream left')
  })

  t.test('past the cap a stream is refused with 503, and the cap frees as streams end', async (t) => {
    const bridge = Object.assign(await startRestBridge({ redisUrl: redis.url, token: TEST_REST_TOKEN, maxSubscriptions: 2 }), { token: TEST_REST_TOKEN })
    t.teardown(async () => await bridge.close())
    const first = await openStream(t, bridge, 'subscribe/a')
    await openStream(t, bridge, 'subscribe/b')
    const third = await openStream(t, bridge, 'subscribe/c')
    t.equal(third.status, 503)
    await third.ended
    t.same(JSON.parse(third.text()), { error: 'ERR too many subscriptions. Limit: 2' })
    first.close()
    await eventually(async () => (await openStream(t, bridge, 'subscribe/c')).status === 200, 3000, 'a stream accepted again')
  })

  t.test('when Redis goes away every stream ends, and the next subscribe opens a new connection', async (t) => {
    const bridge = await startRestServer(t, redis)
    const streams = await Promise.all([openStream(t, bridge, 'subscribe/x'), openStream(t, bridge, 'psubscribe/y*')])
    await redis.restart()
    await Promise.all(streams.map(async (s) => await s.ended))
    t.pass('both streams ended')
    const again = await openStream(t, bridge, 'subscribe/x')
    t.equal(again.status, 200)
    t.equal(await direct.publish('x', 'back'), 1)
    await eventually(() => again.text().includes('message,x,back'), 3000, 'delivery after the restart')
  })
})

t.test('read-your-writes: three concurrent SETs each move the client token, 20 times in a row', async (t) => {
  // As @upstash/redis's own test "updates after each element of promise.all" (one request per command).
  const redis = await startRedisServer(t)
  const bridge = await startRestServer(t, redis)
  const client = new UpstashRedis({ url: bridge.url, token: bridge.token, retry: false, enableTelemetry: false, enableAutoPipelining: false })
  const tokens: string[] = []
  for (let run = 0; run < 20; run++) {
    let current = client.readYourWritesSyncToken
    await Promise.all(Array.from({ length: 3 }, async (_, i) => {
      await client.set(`ryw:${run}:${i}`, `value${i}`)
      t.not(client.readYourWritesSyncToken, current, `run ${run}, write ${i}`)
      current = client.readYourWritesSyncToken
      tokens.push(current ?? '')
    }))
  }
  t.equal(new Set(tokens).size, 60, 'every answer had a token of its own')
  const before = BigInt(client.readYourWritesSyncToken ?? '0')
  await client.get('ryw:0:0')
  t.ok(BigInt(client.readYourWritesSyncToken ?? '0') > before, 'and a later answer a newer one')
})
