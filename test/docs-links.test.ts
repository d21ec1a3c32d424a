import t from 'tap'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'

// The README is the five-minute page and every other subject has one page under docs/, so the
// pages lean on links to each other: every link in README.md, CONTRIBUTING.md, bench/README.md and
// docs/**/*.md must resolve inside the repository, to a file that exists and, with a #fragment, to
// a heading of that page (anchored as GitHub anchors them). No link may leave the repository: no
// http(s)://, no protocol-relative //, no other scheme, no ../ past the root. Code (fenced blocks
// and `inline code`) is not a link. The README also stays a five-minute page: at most 12 500 bytes.

const root = path.join(__dirname, '..')
const README_MAX_BYTES = 12_500

/** What the checker may ask of the repository: paths relative to its root, with `/`. */
interface Repo {
  exists: (file: string) => boolean
  read: (file: string) => string
}

const disk: Repo = {
  exists: (file) => existsSync(path.join(root, file)),
  read: (file) => statSync(path.join(root, file)).isFile() ? readFileSync(path.join(root, file), 'utf8') : ''
}

/** The lines of a page with fenced code blocks blanked (kept as empty lines, so line numbers hold). */
function withoutFences (text: string): string[] {
  let fence: string | null = null
  return text.split('\n').map((line) => {
    const marker = /^ {0,3}(`{3,}|~{3,})/.exec(line)?.[1]
    if (fence === null) {
      if (marker !== undefined) fence = marker
      return marker === undefined ? line : ''
    }
    if (marker !== undefined && marker[0] === fence[0] && marker.length >= fence.length && line.trim() === marker) fence = null
    return ''
  })
}

const withoutInlineCode = (line: string): string => line.replace(/(`+)(?:(?!\1)[\s\S])*?\1/g, (code) => ' '.repeat(code.length))

/** GitHub's heading anchor (github-slugger): lower case, punctuation dropped, spaces to hyphens. */
function slug (heading: string): string {
  // Code spans keep their text as written; elsewhere links and images keep their text, and inline HTML and emphasis go.
  const text = heading.split(/(`+[^`]*`+)/).map((part, i) => i % 2 === 1
    ? part.replace(/`/g, '')
    : part.replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1').replace(/<[^>]+>/g, '').replace(/\*\*|__|\*/g, '')).join('')
  return text.trim().toLowerCase().replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '').replace(/ /g, '-')
}

/** Every anchor a page offers: its headings (ATX and setext, numbered as GitHub numbers repeats) and explicit ids. */
function anchors (text: string): Set<string> {
  const found = new Set<string>()
  const seen = new Map<string, number>()
  const add = (heading: string): void => {
    const base = slug(heading)
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    found.add(n === 0 ? base : `${base}-${n}`)
  }
  const lines = withoutFences(text)
  lines.forEach((line, i) => {
    const atx = /^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/.exec(line)
    if (atx !== null) add(atx[1])
    const previous = lines[i - 1] ?? ''
    if (/^ {0,3}(=+|-+)[ \t]*$/.test(line) && previous.trim() !== '' && !/^ {0,3}([#>|*+-]|\d+[.)])/.test(previous)) add(previous.trim())
    for (const id of line.matchAll(/<a\s+[^>]*(?:name|id)\s*=\s*["']([^"']+)["']/gi)) found.add(id[1])
  })
  return found
}

/** Every link target of a page, outside code: inline links and images, reference definitions, autolinks, HTML href/src, bare URLs. */
function links (text: string): Array<{ line: number, target: string }> {
  const found: Array<{ line: number, target: string }> = []
  withoutFences(text).forEach((raw, i) => {
    const line = withoutInlineCode(raw)
    const at = (target: string): void => { found.push({ line: i + 1, target }) }
    for (const m of line.matchAll(/\]\(\s*(?:<([^>]*)>|([^\s)]*))(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/g)) at(m[1] ?? m[2])
    const definition = /^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?/.exec(line)
    if (definition !== null) at(definition[1])
    for (const m of line.matchAll(/<([a-z][a-z0-9+.-]*:[^\s>]*)>/gi)) at(m[1])
    for (const m of line.matchAll(/(?:href|src)\s*=\s*["']([^"']*)["']/gi)) at(m[1])
    // GitHub links a bare URL in prose too; the ones above are already counted.
    const prose = line.replace(/\]\([^)]*\)|<[^>]*>/g, '')
    for (const m of prose.matchAll(/(?:\bhttps?:\/\/|\bwww\.)[^\s)<>]+/gi)) at(m[0])
  })
  return found
}

/** What is wrong with the links of one page, as `<file>:<line>: <target>: <why>`; empty when every link resolves. */
function check (file: string, repo: Repo): string[] {
  const problems: string[] = []
  const anchorsOf = new Map<string, Set<string>>()
  const anchorsIn = (page: string): Set<string> => {
    let set = anchorsOf.get(page)
    if (set === undefined) anchorsOf.set(page, set = anchors(repo.read(page)))
    return set
  }
  for (const { line, target } of links(repo.read(file))) {
    const problem = (why: string): void => { problems.push(`${file}:${line}: ${target}: ${why}`) }
    if (/^(?:[a-z][a-z0-9+.-]*:|\/\/|www\.)/i.test(target)) { problem('leaves the repository'); continue }
    const hash = target.indexOf('#')
    const pathPart = decodeURI(hash === -1 ? target : target.slice(0, hash))
    const fragment = hash === -1 ? null : decodeURIComponent(target.slice(hash + 1))
    if (pathPart === '' && fragment === null) { problem('empty link'); continue }
    const resolved = pathPart === ''
      ? file
      : path.posix.normalize(pathPart.startsWith('/') ? pathPart.slice(1) : path.posix.join(path.posix.dirname(file), pathPart)).replace(/\/$/, '')
    if (resolved === '..' || resolved.startsWith('../')) { problem('leaves the repository'); continue }
    if (!repo.exists(resolved)) { problem(`no such file (${resolved})`); continue }
    if (fragment !== null) {
      if (!resolved.endsWith('.md')) problem(`#${fragment} on a file that is not a page`)
      else if (!anchorsIn(resolved).has(fragment)) problem(`no heading #${fragment} in ${resolved}`)
    }
  }
  return problems
}

const docs = existsSync(path.join(root, 'docs'))
  ? readdirSync(path.join(root, 'docs'), { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.md')).map((f) => `docs/${f.split(path.sep).join('/')}`).sort()
  : []
const pages = ['README.md', 'CONTRIBUTING.md', 'bench/README.md', ...docs]

t.test('the checker itself', async (t) => {
  t.equal(slug('Route caching, as HTTP sees it'), 'route-caching-as-http-sees-it')
  t.equal(slug('`<FEATURE>_ON_OUTAGE` and **budgets**'), 'feature_on_outage-and-budgets')
  t.equal(slug('Observability: /health, /metrics and the status page'), 'observability-health-metrics-and-the-status-page')
  const repo = new Map<string, string>([
    ['a.md', '# A\n\n## Twice\n\n## Twice\n\nSetext\n------\n'],
    ['img.png', ''],
    ['docs/b.md', [
      '# B', '',
      '[ok](../a.md) [ok](../a.md#twice-1) [ok](../a.md#setext) [ok](#b) ![ok](../img.png "title")',
      '[missing file](../nope.md) [missing heading](../a.md#thrice) [here](#nowhere)',
      '[out](https://example.com) [out](//cdn.example.com/x.js) [out](mailto:x@example.com) [out](../../outside.md)',
      'bare https://example.com/page and <https://example.com/auto>', '',
      '`[code](nope.md)` is code, and so is:', '```md', '[fenced](nope.md)', '```'
    ].join('\n')]
  ])
  const fake: Repo = { exists: (f) => repo.has(f), read: (f) => repo.get(f) ?? '' }
  t.same(check('docs/b.md', fake).map((p) => p.replace(/^docs\/b\.md:\d+: /, '')), [
    '../nope.md: no such file (nope.md)',
    '../a.md#thrice: no heading #thrice in a.md',
    '#nowhere: no heading #nowhere in docs/b.md',
    'https://example.com: leaves the repository',
    '//cdn.example.com/x.js: leaves the repository',
    'mailto:x@example.com: leaves the repository',
    '../../outside.md: leaves the repository',
    'https://example.com/auto: leaves the repository',
    'https://example.com/page: leaves the repository'
  ], 'finds every broken or outgoing link, and nothing in code')
})

t.test('every link of the docs resolves inside the repository', async (t) => {
  t.ok(docs.length > 0, `docs/ has ${docs.length} pages`)
  for (const page of pages) {
    if (!disk.exists(page)) {
      t.fail(`${page} exists`)
      continue
    }
    t.ok(links(disk.read(page)).length > 0 || page.startsWith('docs/'), `${page} links somewhere`)
    t.same(check(page, disk), [], page)
  }
})

t.test('the README is a five-minute page', async (t) => {
  const bytes = statSync(path.join(root, 'README.md')).size
  t.ok(bytes <= README_MAX_BYTES, `README.md is ${bytes} bytes (at most ${README_MAX_BYTES})`)
})
