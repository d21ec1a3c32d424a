import t from 'tap'
import { diagnose, ProbeTimeout, type DiagnosisContext } from '../lib/diagnose'
import { redactUrl, redactText, redactError } from '../lib/redact'

// Failures that cannot be produced on loopback (routing, DNS servers, hosted
// certificates) are checked here on the diagnosis function itself; the
// integration tests in tiers.test.ts produce the rest for real.

const tcp: DiagnosisContext = { tier: 'tcp', variable: 'REDIS_URL', secretVariable: 'REDIS_URL', endpoint: 'redis://h:6379/0', tls: false, timeoutMs: 2000 }
const rest: DiagnosisContext = { tier: 'rest', variable: 'UPSTASH_REDIS_REST_URL', secretVariable: 'UPSTASH_REDIS_REST_TOKEN', endpoint: 'https://x.upstash.io', tls: true, timeoutMs: 2000 }

function withCode (message: string, code: string): Error {
  return Object.assign(new Error(message), { code })
}

t.test('each failure names the variable and the fix', async (t) => {
  const cases: Array<[unknown, DiagnosisContext, RegExp]> = [
    [withCode('getaddrinfo EAI_AGAIN h', 'EAI_AGAIN'), tcp, /cannot be resolved \(EAI_AGAIN\): check the host name in REDIS_URL/],
    [withCode('connect EHOSTUNREACH', 'EHOSTUNREACH'), tcp, /unreachable from this network \(EHOSTUNREACH\): check REDIS_URL/],
    [new ProbeTimeout('x'), { ...tcp, tls: true }, /no answer .* within 2000 ms.*REDIS_CONNECT_TIMEOUT_MS.*use redis:\/\//],
    [new ProbeTimeout('x'), { ...tcp, variable: 'REDIS_HOST' }, /REDIS_TLS=true/],
    [withCode('certificate has expired', 'CERT_HAS_EXPIRED'), tcp, /certificate .* rejected \(CERT_HAS_EXPIRED\); verification stays on/],
    [withCode('write EPROTO wrong version number', 'EPROTO'), tcp, /TLS handshake .* failed/],
    [new Error('ERR AUTH <password> called without any password configured for the default user'), tcp, /has none configured: remove it from REDIS_URL/],
    [withCode('read ECONNRESET', 'ECONNRESET'), tcp, /closed the connection during the handshake; if the server only accepts TLS, use rediss:\/\/ in REDIS_URL/],
    [new Error('Protocol error, got "H" as reply type byte'), tcp, /not Redis/],
    [new Error('WRONGPASS invalid or missing auth token'), rest, /rejected the token \(HTTP 401\/403\): UPSTASH_REDIS_REST_TOKEN/],
    [Object.assign(new Error('fetch failed'), { cause: withCode('connect ECONNREFUSED 127.0.0.1:1', 'ECONNREFUSED') }), rest, /connection refused by https:\/\/x.upstash.io \(UPSTASH_REDIS_REST_URL\)/],
    [Object.assign(new Error('fetch failed'), { cause: withCode('other side closed', 'UND_ERR_SOCKET') }), rest, /closed the connection: check UPSTASH_REDIS_REST_URL/],
    [new DOMException('The operation was aborted due to timeout', 'TimeoutError'), rest, /no answer from https:\/\/x.upstash.io \(UPSTASH_REDIS_REST_URL\) within 2000 ms/],
    ['something odd', tcp, /cannot reach redis:\/\/h:6379\/0 \(REDIS_URL\): something odd/]
  ]
  for (const [err, ctx, expected] of cases) t.match(diagnose(err, ctx), expected, String((err as Error).message ?? err))
})

t.test('redactUrl hides passwords, lone secrets and query tokens', async (t) => {
  t.equal(redactUrl('redis://user:secret@host:6379/0'), 'redis://user:***@host:6379/0')
  t.equal(redactUrl('rediss://:secret@host:6380'), 'rediss://:***@host:6380')
  t.equal(redactUrl('redis://secrettoken@host:6379'), 'redis://***@host:6379')
  t.equal(redactUrl('https://x.upstash.io/?_token=secret'), 'https://x.upstash.io/')
  t.notMatch(redactUrl('not a url redis://u:secret@h'), /secret/)
})

t.test('redactText removes known secrets and credential-shaped text', async (t) => {
  const text = 'failed rediss://default:pw123456@h:6379 with Bearer abcdef and ?_token=zzz and the value hunter22'
  const out = redactText(text, ['hunter22'])
  t.notMatch(out, /pw123456|abcdef|zzz|hunter22/)
  t.match(out, /rediss:\/\/default:\*\*\*@h:6379/)
})

t.test('redactError keeps name and code, scrubs the message', async (t) => {
  const err = redactError(Object.assign(new Error('UpstashError: bad, command was: ["auth","s3cret"]'), { code: 'X1' }), ['s3cret'])
  t.equal(err.code, 'X1')
  t.notMatch(err.message, /s3cret/)
  t.equal(redactError('plain').message, 'plain')
})
