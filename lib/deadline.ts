import { DeadlineError } from './errors'

// The one way this code races a promise against a timer. Every Redis call,
// probe and shutdown step is bounded; each used to carry its own hand-written
// Promise.race and clearTimeout.

/** The promise's value, or a rejection with `error()` (default: "Redis did not answer") once `ms` have passed. */
export async function withTimeout<T> (promise: Promise<T>, ms: number, error: () => Error = () => new DeadlineError(`Redis did not answer within ${ms} ms`)): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(error()), ms) })
    ])
  } finally {
    clearTimeout(timer)
  }
}

/** Waits for the promise for at most `ms`; true when it settled (fulfilled or rejected) in time. Never rejects. */
export async function settledWithin (promise: Promise<unknown>, ms: number): Promise<boolean> {
  return await withTimeout(promise.then(() => true, () => true), ms).catch(() => false)
}
