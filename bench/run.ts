import { run as boot } from './boot'
import { run as connections } from './connections'
import { run as cluster } from './cluster'
import { run as cache } from './cache'
import { run as sse } from './sse'
import { run as presence } from './presence'
import { run as queues } from './queues'
import { run as costs } from './costs'
import { run as rateLimit } from './rate-limit'

// `npm run bench` runs every benchmark; `npm run bench -- cache` one of them.
const benches: Record<string, () => Promise<void>> = { boot, connections, cluster, cache, sse, presence, queues, 'rate-limit': rateLimit, costs }

async function main (): Promise<void> {
  const wanted = process.argv.slice(2)
  const names = wanted.length > 0 ? wanted : Object.keys(benches)
  for (const name of names) {
    const bench = benches[name]
    if (bench === undefined) throw new Error(`no benchmark named ${name}; choose from ${Object.keys(benches).join(', ')}`)
    process.stdout.write(`\n== ${name}\n`)
    await bench()
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench failed: ${err.message}\n`)
  process.exit(1)
})
