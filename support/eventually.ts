// Poll with a deadline: for conditions no event announces. Shared by the tests and the benchmarks.

/** Poll `check` until it returns true, or fail after `ms`. For conditions no event announces. */
export async function eventually (check: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
