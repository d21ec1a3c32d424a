// server.test.ts runs server.ts in child processes under the tsx loader; their
// coverage, merged with the in-process runs, corrupts the report, and the same
// code is covered in-process by the other files.
export default function coverageMap (testFile) {
  return testFile.endsWith('server.test.ts') ? null : []
}
