// server.test.ts runs server.ts in child processes under the tsx loader; their
// coverage, merged with the in-process runs, corrupts the report, and the same
// code is covered in-process by the other files. freeze.test.ts runs server.ts
// in a child process too (to freeze it with SIGSTOP). package.test.ts runs the
// built package in other processes: it covers nothing here. readme-snippets.test.ts
// runs the README's snippets against a transpiled copy in a temp dir: nor does it.
const OTHER_PROCESSES = ['server.test.ts', 'freeze.test.ts', 'package.test.ts', 'readme-snippets.test.ts']

export default function coverageMap (testFile) {
  return OTHER_PROCESSES.some((name) => testFile.endsWith(name)) ? null : []
}
