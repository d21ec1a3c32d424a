// server.test.ts runs server.ts in child processes under the tsx loader; their
// coverage, merged with the in-process runs, corrupts the report, and the same
// code is covered in-process by the other files. package.test.ts runs the
// built package in other processes: it covers nothing here. freeze.test.ts runs
// server.ts in a child process too (to freeze it), like server.test.ts. readme-snippets.test.ts
// runs the README's snippets against a transpiled copy in a temp dir: nor does it.
export default function coverageMap (testFile) {
  return testFile.endsWith('server.test.ts') || testFile.endsWith('package.test.ts') || testFile.endsWith('readme-snippets.test.ts') ? null : []
}
