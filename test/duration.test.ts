import t from 'tap'
import { MAX_DURATION_MS, parseConfigDuration, parseDuration } from '../lib/duration'
import { parseDurationVariable } from '../lib/config'

// One parser for every duration: a caller's mistake is a 400
// (REDIS_TIERS_INVALID_INPUT), a setting's a boot failure (REDIS_TIERS_CONFIG).

const WRONG: unknown[] = ['soon', -5, '-5', '0.0001ms', 0, Number.NaN, Number.POSITIVE_INFINITY, 1e12, '1e12', '367d', '', null, {}, [30]]

t.test('seconds as a number, or a string with a unit', async (t) => {
  t.equal(parseDuration(30, 'ttl'), 30_000)
  t.equal(parseDuration(0.5, 'ttl'), 500)
  t.equal(parseDuration('500ms', 'ttl'), 500)
  t.equal(parseDuration(' 5m ', 'ttl'), 300_000)
  t.equal(parseDuration('12', 'ttl'), 12_000)
  t.equal(parseDuration('366d', 'ttl'), MAX_DURATION_MS, 'a year is the most')
})

t.test('what a caller gets wrong is InvalidInputError (400)', async (t) => {
  for (const value of WRONG) {
    t.throws(() => parseDuration(value as number, 'ttl'), { code: 'REDIS_TIERS_INVALID_INPUT', statusCode: 400 }, JSON.stringify(value) ?? String(value))
  }
})

t.test('what configuration gets wrong is ConfigError, naming the setting', async (t) => {
  for (const value of WRONG) {
    t.throws(() => parseConfigDuration(value as number, 'config.cache.ttl of /x'), { code: 'REDIS_TIERS_CONFIG', message: /config\.cache\.ttl of \/x/ }, JSON.stringify(value) ?? String(value))
  }
  t.throws(() => parseDurationVariable(() => '1000d', 'CACHE_DEFAULT_TTL', '60s'), { code: 'REDIS_TIERS_CONFIG', message: /CACHE_DEFAULT_TTL/ })
  t.equal(parseDurationVariable(() => undefined, 'CACHE_DEFAULT_TTL', '60s'), 60_000, 'the fallback when unset')
})

t.test('the refused value is quoted, at most 40 characters of it', async (t) => {
  const err = t.throws(() => parseDuration('x'.repeat(1000), 'ttl')) as Error
  t.ok(err.message.length < 200, err.message)
})
