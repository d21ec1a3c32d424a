// Counts tests from tap's own per-file results (.tap/test-results/**/*.tap):
// a test is a t.test() with no nested t.test() (parents are not counted twice).
// A file that crashed or failed outside any test, or that left no results,
// counts as one failed test. Prints `tests: N passed, M failed`.
import { readFileSync, readdirSync, existsSync } from 'node:fs'
import path from 'node:path'

function walk (dir, suffix) {
  if (!existsSync(dir)) return []
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name)
    return e.isDirectory() ? walk(full, suffix) : full.endsWith(suffix) ? [full] : []
  })
}

let passed = 0
let failed = 0
const testFiles = walk('test', '.test.ts')
for (const file of testFiles) {
  const results = path.join('.tap/test-results', `${file}.tap`)
  if (!existsSync(results)) { failed++; continue }
  const stack = []
  let fileFailures = 0
  let topPlan = false
  let topFailure = false
  for (const line of readFileSync(results, 'utf8').split('\n')) {
    const indent = line.length - line.trimStart().length
    if (/^\s*# Subtest:/.test(line)) { stack.push({ indent, children: 0 }); continue }
    const result = /^(\s*)(not )?ok \d+ - .*# time=/.exec(line)
    if (result !== null && stack.length > 0 && stack.at(-1).indent === indent) {
      const frame = stack.pop()
      if (frame.children === 0) {
        if (result[2]) { failed++; fileFailures++ } else passed++
      }
      if (stack.length > 0) stack.at(-1).children++
      continue
    }
    if (indent === 0 && /^1\.\.\d+/.test(line)) topPlan = true
    if (indent === 0 && /^not ok /.test(line)) topFailure = true
  }
  if ((topFailure || !topPlan) && fileFailures === 0) failed++
}
process.stdout.write(`tests: ${passed} passed, ${failed} failed\n`)
