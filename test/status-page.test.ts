import t from 'tap'
import { existsSync } from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import type { AddressInfo } from 'node:net'
import { build, type Built } from './helpers/build'
import { startRedisServer } from '../support/redis-server'
import type { StatusSnapshot } from '../routes/status'

// GET /status: opt-in when mounted, behind the host's own access check, never
// a secret; and in a real headless Chromium, live without a reload: killing
// Redis turns the tier down on the page within seconds, with no console
// error. The browser test needs Debian's chromium package (.ci/run installs it).

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
const NO_BROWSER = existsSync(CHROMIUM) ? false : `no headless browser at ${CHROMIUM}: install the Debian package chromium (apt-get install chromium) to run it`
const LAUNCH_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']

t.test('/status is opt-in when the app is mounted, and on with the demo routes', async (t) => {
  const { app } = await build(t, {})
  for (const url of ['/status', '/status.json', '/status/stream']) t.equal((await app.inject(url)).statusCode, 404, url)
  const demo = await build(t, { DEMO_ROUTES: true })
  t.equal((await demo.app.inject('/status')).statusCode, 200)
  const off = await build(t, { DEMO_ROUTES: true, STATUS_PAGE: false })
  t.equal((await off.app.inject('/status')).statusCode, 404, 'STATUS_PAGE=false turns it off')
})

t.test("the host's authorize(request) guards the page, its stream and its JSON", async (t) => {
  const built: Built = await build(t, {}, {
    app: { statusPage: { authorize: (request) => request.headers['x-admin-token'] === 'let-me-in' } }
  })
  for (const url of ['/status', '/status.json', '/status/stream']) {
    const denied = await built.app.inject(url)
    t.equal(denied.statusCode, 403, `${url} without the header`)
    t.equal(denied.json<{ code: string }>().code, 'REDIS_TIERS_FORBIDDEN')
  }
  const page = await built.app.inject({ url: '/status', headers: { 'x-admin-token': 'let-me-in' } })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /^text\/html/)
  t.match(page.headers['content-security-policy'], /default-src 'none'; script-src 'sha256-[A-Za-z0-9+/=]+'; style-src 'sha256-/, 'only its own inline script and style run')
  t.notMatch(page.body, /<script src|<link rel="stylesheet"|https?:\/\/(?!www\.w3\.org\/2000\/svg)/, 'no external asset')
})

t.test('/status.json: every tier and feature with its figures and costs, and no secret', async (t) => {
  const password = 'status-secret-password'
  const redis = await startRedisServer(t, { password })
  const { app } = await build(t, { DEMO_ROUTES: true, REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: 500, QUEUES_DRAIN_MS: 500, REDIS_DAILY_COMMAND_BUDGET: 100000 })
  await app.cache.getOrSet('k', () => 1)
  await app.cache.get('k')
  await app.presence.heartbeat('u1')
  for (let i = 0; i < 3; i++) await app.rateLimiter.consume('s', { limit: 2, window: '1m' })
  const res = await app.inject('/status.json')
  t.equal(res.statusCode, 200)
  const s = res.json<StatusSnapshot>()
  t.equal(s.status, 'ok')
  t.match(s.tiers, [{ tier: 'tcp', configured: true, reachable: true, endpoint: `127.0.0.1:${redis.port}` }, { tier: 'rest', configured: false }])
  t.same(s.features.map((f) => [f.feature, f.tier]), [['cache', 'tcp'], ['sse', 'tcp'], ['presence', 'tcp'], ['queues', 'tcp'], ['rate-limit', 'tcp']])
  t.match(s.figures, { cache: { hits: 1, misses: 1, hitRatio: 0.5 }, presence: { online: 1 }, queues: { report: { waiting: 0 } }, rateLimit: { decisions: 3, refusedInMemory: 0, byPolicy: 0, instances: 1 } })
  t.ok(s.commands.some((c) => c.feature === 'cache' && c.tier === 'tcp' && c.commands >= 5), 'commands per feature and tier')
  t.match(s.budget, { limit: 100000, guard: false })
  t.ok(s.budget.used > 0 && s.history !== undefined && s.history.length >= 1)
  for (const url of ['/status', '/status.json']) t.notOk((await app.inject(url)).body.includes(password), `no credential in ${url}`)
})

t.test('/status/stream: a snapshot at once, and at most 100 viewers per instance (then 503: the page polls)', async (t) => {
  const { app } = await build(t, { STATUS_PAGE: true })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const agent = new http.Agent({ keepAlive: false, maxSockets: 200 })
  t.teardown(() => agent.destroy())
  const open = async (): Promise<{ status: number, first: string, res: http.IncomingMessage }> => await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/status/stream', agent }, (res) => {
      res.setEncoding('utf8')
      let text = ''
      const onData = (chunk: string): void => {
        text += chunk
        if (res.statusCode !== 200 || text.includes('\n\ndata: ')) {
          res.off('data', onData)
          resolve({ status: res.statusCode ?? 0, first: text, res })
        }
      }
      res.on('data', onData)
    }).on('error', reject)
  })
  const viewers = await Promise.all(Array.from({ length: 100 }, open))
  t.ok(viewers.every((v) => v.status === 200), '100 viewers')
  const snapshot = JSON.parse(/\ndata: (.*)\n/.exec(viewers[0].first)?.[1] ?? '{}') as StatusSnapshot
  t.match(snapshot, { status: 'ok', features: [{ feature: 'cache', tier: 'memory' }] }, 'the first frame is a whole snapshot, history included')
  t.ok(Array.isArray(snapshot.history))
  const refused = await open()
  t.equal(refused.status, 503)
  t.match(refused.first, /status page streams are open on this instance/)
  for (const v of viewers) v.res.destroy()
})

t.test('in a real browser: every feature and its tier, live without a reload when Redis dies, no console error', { skip: NO_BROWSER }, async (t) => {
  const { chromium } = await import('playwright-core')
  const redis = await startRedisServer(t)
  const { app } = await build(t, { DEMO_ROUTES: true, REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: 500, QUEUES_DRAIN_MS: 500, REDIS_DAILY_COMMAND_BUDGET: 5000 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/status`
  for (let i = 0; i < 20; i++) await app.cache.getOrSet(`k${i % 5}`, () => i)
  for (let i = 0; i < 4; i++) await app.rateLimiter.consume('page', { limit: 2, window: '1m' })

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS })
  t.teardown(async () => await browser.close())
  const page = await browser.newPage({ viewport: { width: 390, height: 844 } }) // a phone
  const problems: string[] = []
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()) })
  page.on('pageerror', (err) => problems.push(err.message))
  await page.goto(url)

  await page.waitForSelector('body[data-mode="live"]', { timeout: 10_000 })
  for (const feature of ['cache', 'sse', 'presence', 'queues', 'rate-limit']) {
    const card = page.locator(`[data-feature="${feature}"]`)
    t.equal(await card.getAttribute('data-on'), 'tcp', `${feature} on tcp`)
    t.match(await card.textContent(), new RegExp(`${feature}on tcp`), `${feature} says where it runs`)
  }
  t.match(await page.locator('[data-feature="rate-limit"]').textContent(), /decisions4.*refused in memory1/, 'the rate limiter\'s figures')
  t.equal(await page.locator('[data-tier="tcp"][data-state]').getAttribute('data-state'), 'up')
  t.match(await page.locator('#budget').textContent(), /of 5,000 commands today \(UTC\)/)
  t.ok(await page.locator('#chart-commands svg').count() === 1 && await page.locator('#chart-hits svg').count() === 1, 'both charts are drawn')
  const width = await page.evaluate<number>('document.documentElement.scrollWidth')
  t.ok(width <= 390, `nothing wider than the phone (${width}px)`)

  await page.evaluate('window.sameLoad = true')
  await redis.stop()
  await page.waitForSelector('[data-tier="tcp"][data-state="down"]', { timeout: 10_000 })
  t.pass('the tier shows down without a reload')
  t.match(await page.locator('[data-tier="tcp"]').textContent(), /REDIS_URL/, 'with the diagnosis naming the variable')
  t.equal(await page.locator('body').getAttribute('data-status'), 'down')
  t.equal(await page.evaluate('window.sameLoad'), true, 'the same page load')
  const screenshot = path.join(t.testdir(), 'status-page.png')
  await page.screenshot({ path: screenshot, fullPage: true })
  t.ok(existsSync(screenshot), 'screenshot written')
  t.same(problems, [], 'no console error')
})

t.test('in a real browser without EventSource: the page polls /status.json', { skip: NO_BROWSER }, async (t) => {
  const { chromium } = await import('playwright-core')
  const { app } = await build(t, { DEMO_ROUTES: true })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS })
  t.teardown(async () => await browser.close())
  const page = await browser.newPage()
  await page.addInitScript('delete window.EventSource')
  await page.goto(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}/status`)
  await page.waitForSelector('[data-feature="cache"][data-on="memory"]', { timeout: 10_000 })
  t.equal(await page.locator('body').getAttribute('data-mode'), 'polling')
})
