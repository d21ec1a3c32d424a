// After tsc: one ESM entry per package entry point (dist/esm/<name>.mjs and
// its .d.mts), each a thin wrapper over the CommonJS build, so that an ESM
// host's `import cache from 'redis-tiers/cache'` gets the plugin itself (not
// the CommonJS module object) and there is only one copy of each module
// whichever way the package is loaded. It works on the package in the current directory, so that a
// build elsewhere (test/readme-snippets.test.ts builds into a temp dir) gets the same entries.
import { mkdirSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'

const ENTRIES = {
  index: 'index',
  connections: 'plugins/connections',
  cache: 'plugins/cache',
  sse: 'plugins/sse',
  presence: 'plugins/presence',
  queues: 'plugins/queues',
  'rate-limit': 'plugins/rate-limit'
}

const require = createRequire(join(process.cwd(), 'package.json'))
mkdirSync('dist/esm', { recursive: true })
for (const [name, path] of Object.entries(ENTRIES)) {
  const target = `../${path}.js`
  const named = Object.keys(require(`./dist/${path}.js`)).filter((key) => key !== 'default' && key !== '__esModule')
  writeFileSync(`dist/esm/${name}.mjs`, [
    `import cjs from '${target}'`,
    ...(named.length > 0 ? [`export const { ${named.join(', ')} } = cjs`] : []),
    'export default cjs.default',
    ''
  ].join('\n'))
  // The default import of a CommonJS module is the module itself under `moduleResolution: node16/nodenext`
  // (its `default` is the plugin) and the plugin under `bundler`: the type takes whichever it is given.
  writeFileSync(`dist/esm/${name}.d.mts`, [
    `import type cjs from '${target}'`,
    `export * from '${target}'`,
    'declare const plugin: typeof cjs extends { default: infer Plugin } ? Plugin : typeof cjs',
    'export default plugin',
    ''
  ].join('\n'))
}
