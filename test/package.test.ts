import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

// The package as a user gets it: `npm pack`, the tarball installed into a
// fresh Fastify host, and used there from ESM, CommonJS and strict
// TypeScript, with nothing of this repository on the module path.

const exec = promisify(execFile)
const root = path.join(__dirname, '..')
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { name: string }
// The host installs the Fastify this repository is tested with (a peer dependency of the package).
const fastifyVersion = (JSON.parse(readFileSync(path.join(root, 'node_modules/fastify/package.json'), 'utf8')) as { version: string }).version
const SUBPATHS = ['connections', 'cache', 'sse', 'presence', 'queues', 'rate-limit']
/** The name a host binds a subpath's plugin to, and the root's export of it: rate-limit is rateLimit. */
const id = (subpath: string): string => subpath.replace(/-(\w)/g, (_match, letter: string) => letter.toUpperCase())
// A clean environment: no REDIS_URL or DEMO_ROUTES of the machine's reaches the host.
const ENV: Record<string, string> = Object.fromEntries(['PATH', 'HOME', 'npm_config_cache', 'npm_config_registry'].flatMap((name) => process.env[name] === undefined ? [] : [[name, process.env[name]]]))

// Packing builds the package, installing takes the npm cache, and three tsc programs check the hosts:
// about a minute on an idle two-core machine, and more than tap's default of 120 s on a busy one.
t.setTimeout(300_000)

async function run (cwd: string, file: string, args: string[] = []): Promise<string> {
  const { stdout } = await exec(file, args, { cwd, env: ENV, maxBuffer: 16 * 1024 * 1024 })
  return stdout
}

t.test('packed, installed into a fresh Fastify host, and used as a user would', async (t) => {
  const work = mkdtempSync(path.join(tmpdir(), 'redis-tiers-pack-'))
  t.teardown(() => rmSync(work, { recursive: true, force: true }))

  const packed = JSON.parse(await run(root, 'npm', ['pack', '--json', '--pack-destination', work])) as Array<{ filename: string, size: number, files: Array<{ path: string }> }>
  const files = packed[0].files.map((f) => f.path)
  t.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts') && files.includes('dist/esm/index.mjs') && files.includes('README.md'), 'the build and the docs are in the tarball')
  t.notOk(files.some((f) => /^(test|bench)\/|\.ts$/.test(f) && !f.endsWith('.d.ts')), 'no tests, benches or TypeScript sources')
  t.notOk(files.some((f) => f.endsWith('.map') || /dist\/(server|worker)\./.test(f)), 'no source maps, no demo server')
  t.comment(`tarball ${packed[0].filename}: ${(packed[0].size / 1000).toFixed(1)} kB, ${files.length} files`)

  t.test('the README states the tarball\'s size within 10 %', async (t) => {
    const stated = /tarball is about (\d+(?:\.\d+)?) kB/.exec(readFileSync(path.join(root, 'README.md'), 'utf8'))
    t.ok(stated, 'the README states a size')
    // kB as npm prints it: 1000 bytes.
    const ratio = Number(stated?.[1]) * 1000 / packed[0].size
    t.ok(ratio >= 0.9 && ratio <= 1.1, `README says about ${stated?.[1]} kB; npm pack: ${(packed[0].size / 1000).toFixed(1)} kB`)
  })

  const host = path.join(work, 'host')
  await run(work, 'mkdir', [host])
  writeFileSync(path.join(host, 'package.json'), JSON.stringify({ name: 'host', version: '1.0.0', private: true }))
  await run(host, 'npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error', path.join(work, packed[0].filename), `fastify@${fastifyVersion}`])

  t.test('imports from ESM and CommonJS: the root and every subpath default-export the plugin', async (t) => {
    writeFileSync(path.join(host, 'esm.mjs'), `
      import app, * as root from '${pkg.name}'
      ${SUBPATHS.map((name) => `import ${id(name)} from '${pkg.name}/${name}'`).join('\n')}
      const same = { ${SUBPATHS.map((name) => `${id(name)}: ${id(name)} === root.${id(name)}`).join(', ')} }
      console.log(JSON.stringify({ app: typeof app, appIsNamed: app === root.app, same, error: new root.FeatureUnavailableError('cache', 'off').statusCode }))
    `)
    writeFileSync(path.join(host, 'cjs.cjs'), `
      const root = require('${pkg.name}')
      const same = { ${SUBPATHS.map((name) => `${id(name)}: require('${pkg.name}/${name}').default === root.${id(name)}`).join(', ')} }
      console.log(JSON.stringify({ app: typeof root.default, appIsNamed: root.default === root.app, same, error: new root.FeatureUnavailableError('cache', 'off').statusCode }))
    `)
    const expected = { app: 'function', appIsNamed: true, same: Object.fromEntries(SUBPATHS.map((name) => [id(name), true])), error: 503 }
    t.same(JSON.parse(await run(host, process.execPath, ['esm.mjs'])), expected, 'ESM')
    t.same(JSON.parse(await run(host, process.execPath, ['cjs.cjs'])), expected, 'CommonJS')
  })

  // tsc's defaults, strict on: skipLibCheck stays false, so every declaration file a host's program
  // reaches is checked. Ours must reach none of a Redis client's: their declarations are not ours to
  // vouch for (ioredis 6's import redis-errors, which has no types: TS7016), and a host needs none.
  // The node10 and bundler hosts check how the entries resolve; they skip the lib check the nodenext
  // host already did (each lib check costs about 10 s of CPU), and their expected errors fail to
  // appear if a plugin's declared type degrades to any.
  const tsc = path.join(root, 'node_modules/typescript/bin/tsc')
  const REDIS_CLIENT_TYPES = /node_modules\/(ioredis|bullmq|@upstash)\//
  async function typecheck (project: string, compilerOptions: Record<string, unknown>, files: Record<string, string>, skipLibCheck = false): Promise<{ errors: string, clientTypes: string[] }> {
    for (const [file, source] of Object.entries(files)) writeFileSync(path.join(host, file), source)
    writeFileSync(path.join(host, project), JSON.stringify({
      compilerOptions: { strict: true, target: 'es2022', noEmit: true, skipLibCheck, types: ['node'], typeRoots: [path.join(root, 'node_modules/@types')], ...compilerOptions },
      files: Object.keys(files)
    }))
    const stdout = await exec(process.execPath, [tsc, '-p', project, '--listFiles'], { cwd: host, env: ENV, maxBuffer: 16 * 1024 * 1024 })
      .then(({ stdout }) => stdout, (err: { stdout: string }) => err.stdout)
    const lines = stdout.split('\n')
    return {
      errors: lines.filter((line) => !path.isAbsolute(line) && line !== '').join('\n'),
      clientTypes: lines.filter((line) => REDIS_CLIENT_TYPES.test(line))
    }
  }

  t.test('strict ESM and CommonJS hosts (nodenext, .mts and .cts) type-check the root and every subpath, and a wrong call does not', async (t) => {
    const { errors, clientTypes } = await typecheck('tsconfig.nodenext.json', { module: 'nodenext', moduleResolution: 'nodenext' }, {
      'host.mts': `
        import Fastify from 'fastify'
        import app, { FeatureUnavailableError, type Cache, type AppOptions } from '${pkg.name}'
        ${SUBPATHS.map((name) => `import ${id(name)} from '${pkg.name}/${name}'`).join('\n')}
        const fastify = Fastify()
        const options: AppOptions = { env: { CACHE_TIER: 'memory' }, sse: { authorize: () => true } }
        await fastify.register(app, options)
        ${SUBPATHS.map((name) => `void Fastify().register(${id(name)})`).join('\n')}
        const user: { name: string } = await fastify.cache.getOrSet<{ name: string }>('user:1', async () => ({ name: 'Ada' }), { ttl: '5m' })
        const id: string = await fastify.sse.publish('public:news', { title: user.name })
        const online: boolean = await fastify.presence.isOnline('u1')
        const available: boolean = fastify.queues.available
        const allowed: boolean = (await fastify.rateLimiter.consume('user:1', { limit: 10, window: '1m' })).allowed
        const client: Cache = fastify.cache
        const unavailable: string = new FeatureUnavailableError('cache', 'off').code
        const pong: string | undefined = await fastify.connections.tcp?.ping()
        // @ts-expect-error the loader must produce the declared type
        await fastify.cache.getOrSet<number>('n', async () => 'not a number')
        // @ts-expect-error publish needs a channel and data
        await fastify.sse.publish()
        // @ts-expect-error the decorators are what the package declares, nothing else
        fastify.redisCache.get('x')
        // @ts-expect-error options are checked
        await fastify.register(app, { demoRoutes: 'yes' })
        // @ts-expect-error a subpath's plugin is typed: its options are checked too
        await fastify.register(cache, { prefix: 42 })
        console.log(id, online, available, allowed, client, unavailable, pong)
      `,
      'host.cts': `
        import Fastify = require('fastify')
        import tiers = require('${pkg.name}')
        ${SUBPATHS.map((name) => `import ${id(name)} = require('${pkg.name}/${name}')`).join('\n')}
        const fastify = Fastify()
        void fastify.register(tiers.default)
        ${SUBPATHS.map((name) => `void Fastify().register(${id(name)}.default)`).join('\n')}
        export const hit: Promise<string | undefined> = fastify.cache.get<string>('k')
      `
    })
    t.equal(errors, '', 'no type errors, and every @ts-expect-error was needed')
    t.same(clientTypes, [], 'no Redis client declarations in the host\'s program')
  })

  t.test('a strict CommonJS host on tsc\'s defaults for module commonjs (node10 resolution, which ignores exports)', async (t) => {
    const { errors, clientTypes } = await typecheck('tsconfig.node10.json', { module: 'commonjs', esModuleInterop: true }, {
      'host-node10.ts': `
        import Fastify from 'fastify'
        import app, { cache as cacheFromRoot } from '${pkg.name}'
        ${SUBPATHS.map((name) => `import ${id(name)} from '${pkg.name}/${name}'`).join('\n')}
        const fastify = Fastify()
        void fastify.register(app)
        ${SUBPATHS.map((name) => `void Fastify().register(${id(name)})`).join('\n')}
        export const same: boolean = cache === cacheFromRoot
        export const hit: Promise<string | undefined> = fastify.cache.get<string>('k')
        // @ts-expect-error options are checked
        void fastify.register(app, { demoRoutes: 'yes' })
        // @ts-expect-error a subpath's plugin is typed: its options are checked too
        void fastify.register(cache, { prefix: 42 })
      `
    }, true)
    t.equal(errors, '')
    t.same(clientTypes, [])
  })

  t.test('a strict host with bundler resolution (Vite, Next, esbuild) type-checks the root and every subpath', async (t) => {
    const { errors, clientTypes } = await typecheck('tsconfig.bundler.json', { module: 'preserve', moduleResolution: 'bundler' }, {
      'host-bundler.ts': `
        import Fastify from 'fastify'
        import app from '${pkg.name}'
        ${SUBPATHS.map((name) => `import ${id(name)} from '${pkg.name}/${name}'`).join('\n')}
        const fastify = Fastify()
        await fastify.register(app, { cache: { prefix: 'shop' } })
        ${SUBPATHS.map((name) => `void Fastify().register(${id(name)})`).join('\n')}
        // @ts-expect-error options are checked
        await fastify.register(app, { demoRoutes: 'yes' })
        // @ts-expect-error a subpath's plugin is typed: its options are checked too
        await fastify.register(cache, { prefix: 42 })
        export const hit: string | undefined = await fastify.cache.get<string>('k')
      `
    }, true)
    t.equal(errors, '')
    t.same(clientTypes, [])
  })

  t.test('the default export with default options: /health and nothing that trusts a header', async (t) => {
    writeFileSync(path.join(host, 'mount.mjs'), `
      import Fastify from 'fastify'
      import app from '${pkg.name}'
      const fastify = Fastify()
      await fastify.register(app)
      const out = {}
      for (const [method, url] of [['GET', '/health'], ['GET', '/health/live'], ['GET', '/cache/demo/x'], ['GET', '/events/public:x'], ['POST', '/jobs/report'], ['GET', '/presence/online'], ['GET', '/status'], ['GET', '/metrics']]) {
        out[method + ' ' + url] = (await fastify.inject({ method, url, headers: { 'x-user-id': 'u1' } })).statusCode
      }
      await fastify.close()
      const withPage = Fastify()
      await withPage.register(app, { statusPage: true })
      const page = await withPage.inject('/status')
      out['GET /status with statusPage: true'] = page.statusCode + ' ' + page.headers['content-type']
      await withPage.close()
      console.log(JSON.stringify(out))
    `)
    t.same(JSON.parse(await run(host, process.execPath, ['mount.mjs'])), {
      'GET /health': 200,
      'GET /health/live': 200,
      'GET /cache/demo/x': 404,
      'GET /events/public:x': 404,
      'POST /jobs/report': 404,
      'GET /presence/online': 404,
      'GET /status': 404,
      'GET /metrics': 404,
      'GET /status with statusPage: true': '200 text/html; charset=utf-8'
    })
  })

  t.test('the REST bridge is a bin of the package, and names what it needs', async (t) => {
    const bin = path.join(host, 'node_modules/.bin/redis-tiers-rest-bridge')
    const failed = await exec(bin, [], { cwd: host, env: ENV }).then(() => null, (err: { code: number, stderr: string }) => err)
    t.equal(failed?.code, 1)
    t.match(failed?.stderr, /rest-bridge needs REDIS_URL .* and UPSTASH_REDIS_REST_TOKEN/)
  })

  t.test('connections + cache, and the whole app on memory, run with bullmq gone from node_modules', async (t) => {
    renameSync(path.join(host, 'node_modules/bullmq'), path.join(work, 'bullmq-moved'))
    writeFileSync(path.join(host, 'no-bullmq.cjs'), `
      const Fastify = require('fastify')
      const { connections, cache, default: app } = require('${pkg.name}')
      async function main () {
        const one = Fastify()
        await one.register(connections, { processEnv: false })
        await one.register(cache)
        await one.ready()
        await one.cache.set('k', { v: 1 })
        const value = await one.cache.get('k')
        await one.close()
        const all = Fastify()
        await all.register(app, { processEnv: false })
        await all.ready()
        const queues = all.features.queues.status
        await all.close()
        const loaded = Object.keys(require.cache).filter((file) => /node_modules\\/(bullmq|ioredis|@upstash)\\//.test(file)).length
        console.log(JSON.stringify({ value, queues, loaded }))
      }
      main().catch((err) => { console.error(err); process.exit(1) })
    `)
    t.same(JSON.parse(await run(host, process.execPath, ['no-bullmq.cjs'])), { value: { v: 1 }, queues: 'skipped', loaded: 0 },
      'the cache works, queues are skipped, and no Redis client module was loaded')
  })
})
