import { execFileSync, execFile } from 'node:child_process'
import { promisify } from 'node:util'
import path from 'node:path'
import { compare, row } from './helpers'

// Cold start as a serverless platform pays it: a new Node process that loads
// Fastify and the *built* package (dist/, as a host installs it), registers it
// on the memory tier (no env) and waits for ready(). Each sample is one
// process; the time is measured inside it from process start, so Node's own
// bootstrap is in both sides of every ratio. Bare Fastify and the candidate
// alternate (ABBA), and the ratio is the median of the pairs.
// Run with `npm run bench -- boot` (builds first).

const execFileAsync = promisify(execFile)
const ROOT = path.resolve(__dirname, '..')
const ROUNDS = Number(process.env.BENCH_BOOT_ROUNDS ?? 15)
const HEAVY = ['bullmq', 'ioredis', '@upstash/redis', 'cron-parser']

const CASES: Record<string, string> = {
  bare: '',
  app: "f.register(require('./dist/index.js').default, { processEnv: false })",
  'connections + cache': "f.register(require('./dist/plugins/connections.js').default, { processEnv: false }); f.register(require('./dist/plugins/cache.js').default)"
}

interface Sample { ms: number, modules: number, heavy: string[] }

async function sample (name: string): Promise<Sample> {
  const script = `
    const f = require('fastify')()
    ${CASES[name]}
    f.ready().then(() => {
      const ms = performance.now()
      const loaded = Object.keys(require.cache)
      const heavy = ${JSON.stringify(HEAVY)}.filter((m) => loaded.some((file) => file.includes('/node_modules/' + m + '/')))
      process.stdout.write(JSON.stringify({ ms, modules: loaded.length, heavy }))
      return f.close()
    })`
  const { stdout } = await execFileAsync(process.execPath, ['-e', script], { cwd: ROOT, env: { PATH: process.env.PATH ?? '' } })
  return JSON.parse(stdout) as Sample
}

export async function run (): Promise<void> {
  process.stdout.write('building dist/ (npm run build)\n')
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' })
  const first = await sample('bare')
  row('bare Fastify: modules loaded', String(first.modules))
  for (const name of ['app', 'connections + cache']) {
    const once = await sample(name)
    row(`${name}: modules loaded`, String(once.modules))
    row(`${name}: heavy modules loaded`, once.heavy.length === 0 ? 'none' : once.heavy.join(', '))
  }
  process.stdout.write(`\nprocess start to ready(), median of ${ROUNDS} ABBA pairs, ratio against bare Fastify (target <= 1.50)\n`)
  for (const name of ['app', 'connections + cache']) {
    const { base, ours, ratio } = await compare(ROUNDS, async () => (await sample('bare')).ms, async () => (await sample(name)).ms)
    row(`bare Fastify (paired with ${name})`, `${base.toFixed(0)} ms`)
    process.stdout.write(`${`${name} on memory`.padEnd(52)} ${`${ours.toFixed(0)} ms`.padStart(16)}   ratio ${ratio.toFixed(2)} (target <= 1.50: ${ratio <= 1.5 ? 'met' : 'NOT met'})\n`)
  }
}
