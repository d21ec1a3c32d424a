// The grammar of what callers name: the channels of sse (which presence and
// queues publish to), event names. One home, so that a feature validating a
// channel it publishes to does not import another feature's plugin.

/** An sse channel: 1-128 letters, digits or : _ . - */
export const CHANNEL_PATTERN = /^[A-Za-z0-9:_.-]{1,128}$/
export const CHANNEL_RULE = '1-128 letters, digits or : _ . -'

/** An sse event name. */
export const EVENT_PATTERN = /^[A-Za-z0-9:_.-]{1,64}$/

export function validChannel (channel: unknown): channel is string {
  return typeof channel === 'string' && CHANNEL_PATTERN.test(channel)
}
