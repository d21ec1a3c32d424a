// server.test.ts runs server.ts in child processes under the tsx loader; their
// coverage, merged with the in-process runs, corrupts the report, and the same
// code is covered in-process by the other files. package.test.ts runs the
// built package in other processes: it covers nothing here.
export default function coverageMap (testFile) {
  return testFile.endsWith('server.test.ts') || testFile.endsWith('package.test.ts') ? null : []
}
