import { ProbeTimeout } from './errors'
import type { RedisTier } from './resolve-tier'
import { tierDefinition } from './tiers/registry'

// A failed probe becomes one sentence: what went wrong, which variable to look
// at, and what to change. Input errors are already redacted. The failures every
// tier can have are named here; those only one tier has are its driver's
// (TierDefinition.diagnose), asked after these.

export { ProbeTimeout }

export interface DiagnosisContext {
  tier: RedisTier
  /** The variable that holds the address (REDIS_URL, REDIS_HOST, UPSTASH_REDIS_REST_URL, KV_REST_API_URL). */
  variable: string
  /** The variable that holds the secret (REDIS_URL, REDIS_PASSWORD, UPSTASH_REDIS_REST_TOKEN, ...). */
  secretVariable: string
  /** Redacted address, safe to print. */
  endpoint: string
  tls: boolean
  timeoutMs: number
  /** The variable that sets `timeoutMs` (default REDIS_CONNECT_TIMEOUT_MS). */
  timeoutVariable?: string
}

/** A failure as a tier's own diagnoses see it. */
export interface Failure {
  /** The innermost error code ('' when none). */
  code: string
  /** The messages of the error and its causes. */
  message: string
  /** `endpoint (VARIABLE)`: where, as the sentence names it. */
  where: string
  ctx: DiagnosisContext
}

const CERT_CODES = new Set([
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_GET_ISSUER_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE'
])

/** The innermost error code (fetch wraps socket errors in `cause`). */
function codeOf (err: unknown): { code: string, message: string } {
  let current: unknown = err
  let code = ''
  let message = ''
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    const c = (current as { code?: unknown }).code
    if (typeof c === 'string' && c !== '') code = c
    message = `${message} ${current.message}`
    current = (current as { cause?: unknown }).cause
  }
  return { code, message: message.trim() }
}

// Upstash: `ERR max requests limit exceeded. Limit: 500000, Usage: 500000.` (the monthly count of
// the free and fixed plans), and on older databases `ERR max daily request limit exceeded`.
const QUOTA = /max (daily )?requests? limit exceeded(?:\.?\s*Limit:\s*(\d+),\s*Usage:\s*(\d+))?/i

/** Days a monthly quota is spread over when it is turned into a daily budget (the longest month). */
const DAYS_A_MONTH = 31

/**
 * The provider's request quota is spent: the endpoint answered and took the credentials, so the
 * fix is the plan or the app's own command budget, never the address. Null when `message` is not that.
 */
export function diagnoseQuota (message: string, ctx: DiagnosisContext): string | null {
  const match = QUOTA.exec(message)
  if (match === null) return null
  const daily = match[1] !== undefined
  const limit = match[2] === undefined ? null : Number(match[2])
  const figures = limit === null ? '' : ` (limit ${limit}, used ${match[3]})`
  const resets = daily
    ? 'the count is per day and comes back at the provider\'s daily reset'
    : 'Upstash counts requests per month (the free tier: 500 000), so it comes back with the next monthly period (the date is in the Upstash console)'
  const share = limit === null ? '' : `=${Math.max(1, Math.floor(limit / (daily ? 1 : DAYS_A_MONTH)))} (divided by the number of instances)`
  return `the Redis provider refuses every command at ${ctx.endpoint} (${ctx.variable}): its request quota is spent${figures}; ` +
    `the endpoint is reachable and ${ctx.secretVariable} is accepted; ${resets}. ` +
    `Fix: move the database to a paid plan (pay-as-you-go or fixed) in the Upstash console, and keep the app within the quota with REDIS_DAILY_COMMAND_BUDGET${share} and REDIS_BUDGET_GUARD=true`
}

export function diagnose (err: unknown, ctx: DiagnosisContext): string {
  const { code, message } = codeOf(err)
  const where = `${ctx.endpoint} (${ctx.variable})`
  const quota = diagnoseQuota(message, ctx)
  if (quota !== null) return quota
  if (/\bOOM command not allowed\b/.test(message)) {
    return `${where} is full (used memory is past maxmemory): it refuses writes and serves reads; raise maxmemory, set maxmemory-policy volatile-lru (not with queues: BullMQ needs noeviction), or keep less in it`
  }
  const tier = tierDefinition(ctx.tier)
  if (err instanceof ProbeTimeout || code === 'ETIMEDOUT' || code === 'UND_ERR_CONNECT_TIMEOUT' || (err as Error | undefined)?.name === 'TimeoutError' || /Command timed out/.test(message)) {
    return `no answer from ${where} within ${ctx.timeoutMs} ms: check the address and that this network may reach it, or raise ${ctx.timeoutVariable ?? 'REDIS_CONNECT_TIMEOUT_MS'}${tier?.timeoutHint?.(ctx) ?? ''}`
  }
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_NONAME') {
    return `host of ${where} cannot be resolved (${code}): check the host name in ${ctx.variable}`
  }
  if (code === 'ECONNREFUSED') {
    return `connection refused by ${where}: nothing listens there; check host and port in ${ctx.variable} and that the server is running`
  }
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') {
    return `${where} is unreachable from this network (${code}): check ${ctx.variable} and firewall rules`
  }
  if (CERT_CODES.has(code)) {
    return `the TLS certificate of ${where} was rejected (${code}); verification stays on: fix the host name, or trust your CA with NODE_EXTRA_CA_CERTS=/path/to/ca.pem`
  }
  if (/wrong version number|EPROTO|ERR_SSL|packet length too long|before secure TLS connection/i.test(`${code} ${message}`)) {
    return `TLS handshake with ${where} failed: the server does not speak TLS on that port; use redis:// if it has no TLS, or the provider's TLS port`
  }
  const own = tier?.diagnose?.({ code, message, where, ctx })
  if (own !== undefined && own !== null) return own
  return `cannot reach ${where}: ${message || String(err)}`
}
