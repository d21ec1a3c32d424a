import t from 'tap'
import ts from 'typescript'
import { execFile, spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

// Every code snippet of README.md and docs/**/*.md is code a reader pastes: TypeScript ones are
// type-checked, strict, against the package's types; JavaScript ones run with node, as printed.
//
// The rules for a snippet, read from its fence's info string:
//   ```ts esm          TypeScript in an ES module (.mts, nodenext): type-checked
//   ```ts commonjs     TypeScript in a CommonJS module (.cts): type-checked
//   ```js esm          JavaScript in an ES module (.mjs): run
//   ```js commonjs     JavaScript in a CommonJS module (.cjs): run
//   ... norun          (js only) syntax-checked, not run: for code that needs what no test has (a
//                      hosted Redis, credentials); say in the snippet why it cannot run
// Every ts/js fence names its module system: a reader must know whether it goes in an ES module or a
// CommonJS one (a require() pasted beside a top-level await throws "require is not defined"), so
// also say it in the snippet or the sentence above it. Other fences (sh, text, none) are not checked.
//
// TypeScript snippets may use `fastify`, a FastifyInstance with the package's decorators, without
// declaring it (see CONTEXT); everything else they import or declare: no `...`, no helpers the
// snippet does not define. JavaScript snippets run in a clean environment (no REDIS_URL, so every
// feature runs on the memory tier) with PORT=0, and either exit 0 by themselves or start a server:
// logger on, port from process.env.PORT; once it logs Fastify's "Server listening at" line the test
// stops it with SIGTERM.

const exec = promisify(execFile)
const root = path.join(__dirname, '..')
const RUN_DEADLINE_MS = 30_000
const ENV: Record<string, string> = Object.fromEntries(['PATH', 'HOME'].flatMap((name) => process.env[name] === undefined ? [] : [[name, process.env[name]]]))

interface Snippet {
  /** README.md:<line of the opening fence> */
  where: string
  /** The line of the opening fence, 1-based. */
  fenceLine: number
  file: string
  lang: string
  flags: string[]
  code: string
}

function extractSnippets (file: string): Snippet[] {
  const lines = readFileSync(path.join(root, file), 'utf8').split('\n')
  const snippets: Snippet[] = []
  let open: { fence: string, indent: number, info: string, line: number, body: string[] } | null = null
  lines.forEach((line, i) => {
    const fence = /^( *)(`{3,}|~{3,})\s*(.*)$/.exec(line)
    if (open === null) {
      if (fence !== null) open = { fence: fence[2], indent: fence[1].length, info: fence[3].trim(), line: i + 1, body: [] }
    } else if (fence !== null && fence[2].startsWith(open.fence) && fence[3].trim() === '') {
      const [lang = '', ...flags] = open.info.split(/\s+/)
      snippets.push({ where: `${file}:${open.line}`, fenceLine: open.line, file, lang, flags, code: open.body.join('\n') + '\n' })
      open = null
    } else {
      open.body.push(line.slice(Math.min(open.indent, /^ */.exec(line)?.[0].length ?? 0)))
    }
  })
  return snippets
}

const docs = ['README.md', ...(existsSync(path.join(root, 'docs'))
  ? readdirSync(path.join(root, 'docs'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.md')).sort().map((f) => path.join('docs', f))
  : [])]
const snippets = docs.flatMap(extractSnippets)
const MODULE_SYSTEMS = ['esm', 'commonjs']
const moduleSystem = (s: Snippet): string | undefined => s.flags.find((f) => MODULE_SYSTEMS.includes(f))
const typescript = snippets.filter((s) => s.lang === 'ts')
const javascript = snippets.filter((s) => s.lang === 'js')

// What a TypeScript snippet may use without declaring it.
const CONTEXT = `
import type { FastifyInstance } from 'fastify'
import type {} from 'redis-tiers'
declare global { const fastify: FastifyInstance }
`

/**
 * The package as a host resolves it, in <work>/host/node_modules/redis-tiers: its package.json, its
 * JavaScript (each source transpiled on its own, as tsx runs it, then the ESM entries the build
 * writes) and, for the types, declaration stubs that re-export the sources. tsc's declaration build
 * costs most of half a minute on a busy machine; the declarations as shipped are the package test's
 * subject. Its dependencies and fastify resolve through <work>/node_modules, a link to this repository's.
 */
async function buildPackage (work: string): Promise<string> {
  symlinkSync(path.join(root, 'node_modules'), path.join(work, 'node_modules'), 'dir')
  const host = path.join(work, 'host')
  const pkg = path.join(host, 'node_modules/redis-tiers')
  mkdirSync(pkg, { recursive: true })
  cpSync(path.join(root, 'package.json'), path.join(pkg, 'package.json'))
  const config = ts.getParsedCommandLineOfConfigFile(path.join(root, 'tsconfig.build.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')) }
  })
  if (config === undefined) throw new Error('tsconfig.build.json did not parse')
  for (const source of config.fileNames) {
    const relative = path.relative(root, source).replace(/\.ts$/, '')
    const { outputText } = ts.transpileModule(readFileSync(source, 'utf8'), { fileName: source, compilerOptions: { ...config.options, sourceMap: false, declaration: false } })
    mkdirSync(path.dirname(path.join(pkg, 'dist', relative)), { recursive: true })
    writeFileSync(path.join(pkg, 'dist', `${relative}.js`), outputText)
    writeFileSync(path.join(pkg, 'dist', `${relative}.d.ts`), `export * from ${JSON.stringify(path.join(root, relative))}\n` +
      (/^export default /m.test(readFileSync(source, 'utf8')) ? `export { default } from ${JSON.stringify(path.join(root, relative))}\n` : ''))
  }
  await exec(process.execPath, [path.join(root, 'tools/esm-entries.mjs')], { cwd: pkg })
  return host
}

const formatHost: ts.FormatDiagnosticsHost = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => '\n' }

/** Type-check snippets in one strict program; the errors of each, at their line in the document. */
function typecheck (host: string, checked: Snippet[]): { global: string, errors: Map<Snippet, string> } {
  writeFileSync(path.join(host, 'context.d.ts'), CONTEXT)
  const files = new Map(checked.map((s, i) => [path.join(host, `snippet-${i}.${moduleSystem(s) === 'commonjs' ? 'cts' : 'mts'}`), s]))
  for (const [file, s] of files) writeFileSync(file, s.code)
  const program = ts.createProgram({
    rootNames: [path.join(host, 'context.d.ts'), ...files.keys()],
    // The package test checks the declarations themselves without skipLibCheck; here, the snippets.
    options: { strict: true, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, noEmit: true, skipLibCheck: true, types: ['node'] }
  })
  const global = ts.formatDiagnostics([...program.getOptionsDiagnostics(), ...program.getGlobalDiagnostics(), ...program.getSemanticDiagnostics(program.getSourceFile(path.join(host, 'context.d.ts')))], formatHost)
  const errors = new Map<Snippet, string>()
  for (const [file, s] of files) {
    const source = program.getSourceFile(file)
    const diagnostics = source === undefined ? [] : [...program.getSyntacticDiagnostics(source), ...program.getSemanticDiagnostics(source)]
    errors.set(s, diagnostics.map((d) => {
      const line = d.file !== undefined && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line + 1 : 0
      return `${s.file}:${s.fenceLine + line}: TS${d.code} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`
    }).join('\n'))
  }
  return { global, errors }
}

/** Run a JavaScript snippet: '' when it exited 0 or started a server, else what went wrong. */
async function runSnippet (host: string, s: Snippet, name: string): Promise<string> {
  const file = path.join(host, `${name}.${moduleSystem(s) === 'commonjs' ? 'cjs' : 'mjs'}`)
  writeFileSync(file, s.code)
  if (s.flags.includes('norun')) return await exec(process.execPath, ['--check', file], { cwd: host, env: ENV }).then(() => '', (err: { stderr: string }) => err.stderr)
  const child = spawn(process.execPath, [file], { cwd: host, env: { ...ENV, PORT: '0' } })
  let stdout = ''
  let stderr = ''
  return await new Promise<string>((resolve) => {
    const deadline = setTimeout(() => { child.kill('SIGKILL'); resolve(`neither exited nor listened within ${RUN_DEADLINE_MS} ms\n${stdout}${stderr}`) }, RUN_DEADLINE_MS)
    let listening = false
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString()
      if (!listening && stdout.includes('Server listening at')) {
        listening = true
        child.kill('SIGTERM')
      }
    })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    child.on('close', (code, signal) => {
      clearTimeout(deadline)
      resolve((code === 0 || (listening && signal === 'SIGTERM')) && stderr === '' ? '' : `exit ${code ?? signal ?? ''}\n${stderr}`)
    })
  })
}

t.test('every ts and js snippet names its module system', async (t) => {
  t.ok(typescript.length > 0 && javascript.length > 0, `found ${typescript.length} TypeScript and ${javascript.length} JavaScript snippets in ${docs.join(', ')}`)
  const unnamed = [...typescript, ...javascript].filter((s) => moduleSystem(s) === undefined).map((s) => `${s.where}: \`\`\`${s.lang} ${s.flags.join(' ')}`)
  t.same(unnamed, [], 'each says `esm` or `commonjs` after its language')
  const norunTs = typescript.filter((s) => s.flags.includes('norun')).map((s) => s.where)
  t.same(norunTs, [], 'norun is for JavaScript; TypeScript snippets are only type-checked anyway')
})

t.test('the snippets, against the package as a host resolves it', async (t) => {
  const work = mkdtempSync(path.join(tmpdir(), 'redis-tiers-snippets-'))
  t.teardown(() => rmSync(work, { recursive: true, force: true }))
  const host = await buildPackage(work)

  t.test('every TypeScript snippet type-checks in strict mode', async (t) => {
    // Two known-bad snippets ride along, so a check that cannot fail (a package that resolves to any) fails here.
    const wrongType: Snippet = { where: 'self-test', fenceLine: 0, file: 'self-test', lang: 'ts', flags: ['esm'], code: 'const n: number = await fastify.cache.get<string>(\'k\') ?? \'\'\nexport { n }\n' }
    const wrongOption: Snippet = { ...wrongType, code: 'import app from \'redis-tiers\'\nawait fastify.register(app, { demoRoutes: \'yes\' })\n' }
    const { global, errors } = typecheck(host, [...typescript, wrongType, wrongOption])
    t.equal(global, '', 'the compiler options and the context are sound')
    t.match(errors.get(wrongType), /TS2322/, 'self-test: a wrong type is an error')
    t.match(errors.get(wrongOption), /TS2769/, 'self-test: a wrong option is an error')
    for (const s of typescript) t.equal(errors.get(s), '', s.where)
  })

  t.test('every JavaScript snippet runs as printed', async (t) => {
    // The README's old CommonJS line beside a top-level await: the kind of snippet this test exists to refuse.
    const pasted: Snippet = { where: 'self-test', fenceLine: 0, file: 'self-test', lang: 'js', flags: ['esm'], code: 'const app = require(\'redis-tiers\').default\nawait Promise.resolve(app)\n' }
    const [selfTest, ...results] = await Promise.all([pasted, ...javascript].map(async (s, i) => await runSnippet(host, s, `snippet-${i}`)))
    t.match(selfTest, /require is not defined/, 'self-test: a failing snippet fails')
    javascript.forEach((s, i) => t.equal(results[i], '', s.where))
  })
})
