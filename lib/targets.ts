import type { ConnectionSettings } from './config'
import { redactUrl } from './redact'

// Turns settings into what to connect to, or into a diagnosis that names the
// variable and the fix. Never invents a host: no configuration means no Redis.

export interface TcpTarget {
  source: 'REDIS_URL' | 'REDIS_HOST'
  host: string
  port: number
  username?: string
  password?: string
  db: number
  tls: boolean
  /** Safe to print: `rediss://user:***@host:port/db`. */
  display: string
}

export interface RestTarget {
  urlVariable: string
  tokenVariable: string
  url: string
  token: string
  display: string
}

export type TargetResult<T> =
  | { status: 'none' }
  | { status: 'invalid', variable: string, diagnosis: string }
  | { status: 'ok', target: T }

const TLS_ONLY_HOSTS = ['.upstash.io']

export function tcpTarget (s: ConnectionSettings): TargetResult<TcpTarget> {
  if (s.REDIS_URL !== undefined) return tcpTargetFromUrl(s.REDIS_URL, s)
  if (s.REDIS_HOST !== undefined) {
    const target: TcpTarget = {
      source: 'REDIS_HOST',
      host: s.REDIS_HOST,
      port: s.REDIS_PORT ?? 6379,
      username: s.REDIS_USERNAME,
      password: s.REDIS_PASSWORD,
      db: s.REDIS_DB ?? 0,
      tls: s.REDIS_TLS ?? false,
      display: ''
    }
    target.display = displayTcp(target)
    return tlsRequired(target) ?? { status: 'ok', target }
  }
  const stray = (['REDIS_PORT', 'REDIS_PASSWORD', 'REDIS_USERNAME', 'REDIS_DB', 'REDIS_TLS'] as const).find((v) => s[v] !== undefined)
  if (stray !== undefined) {
    return {
      status: 'invalid',
      variable: stray,
      diagnosis: `${stray} is set but neither REDIS_URL nor REDIS_HOST is, so there is no host to connect to (nothing defaults to localhost); set REDIS_URL=redis://host:port or REDIS_HOST`
    }
  }
  return { status: 'none' }
}

function tcpTargetFromUrl (raw: string, s: ConnectionSettings): TargetResult<TcpTarget> {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    return { status: 'invalid', variable: 'REDIS_URL', diagnosis: 'REDIS_URL is not a valid URL; expected redis://[user:password@]host:port[/db], or rediss://... for TLS' }
  }
  if (url.protocol === 'http:' || url.protocol === 'https:') {
    return {
      status: 'invalid',
      variable: 'REDIS_URL',
      diagnosis: `REDIS_URL holds an HTTP(S) URL (${redactUrl(raw)}), which is an Upstash REST endpoint, not a Redis TCP address; move it to UPSTASH_REDIS_REST_URL (with UPSTASH_REDIS_REST_TOKEN), or set REDIS_URL to the redis:// or rediss:// URL your provider gives`
    }
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
    return { status: 'invalid', variable: 'REDIS_URL', diagnosis: `REDIS_URL must start with redis:// or rediss:// (TLS), not ${url.protocol}//` }
  }
  if (url.hostname === '') {
    return { status: 'invalid', variable: 'REDIS_URL', diagnosis: 'REDIS_URL has no host; expected redis://host:port' }
  }
  const dbText = url.pathname.replace(/^\//, '')
  if (dbText !== '' && !/^\d+$/.test(dbText)) {
    return { status: 'invalid', variable: 'REDIS_URL', diagnosis: `REDIS_URL path must be a database number such as /0, not /${dbText.slice(0, 20)}` }
  }
  const target: TcpTarget = {
    source: 'REDIS_URL',
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 6379 : Number(url.port),
    username: url.username !== '' ? decodeURIComponent(url.username) : s.REDIS_USERNAME,
    password: url.password !== '' ? decodeURIComponent(url.password) : s.REDIS_PASSWORD,
    db: dbText !== '' ? Number(dbText) : (s.REDIS_DB ?? 0),
    tls: url.protocol === 'rediss:' || s.REDIS_TLS === true,
    display: ''
  }
  target.display = displayTcp(target)
  return tlsRequired(target) ?? { status: 'ok', target }
}

function tlsRequired (target: TcpTarget): TargetResult<TcpTarget> | undefined {
  if (target.tls || !TLS_ONLY_HOSTS.some((suffix) => target.host.endsWith(suffix))) return undefined
  return {
    status: 'invalid',
    variable: target.source,
    diagnosis: `${target.host} only accepts TLS connections; use rediss:// instead of redis:// in ${target.source}${target.source === 'REDIS_HOST' ? ' (or set REDIS_TLS=true)' : ''}`
  }
}

function displayTcp (t: TcpTarget): string {
  const auth = t.password !== undefined ? `${t.username ?? ''}:***@` : t.username !== undefined ? '***@' : '' // a lone userinfo is often a token
  const host = t.host.includes(':') ? `[${t.host}]` : t.host
  return `${t.tls ? 'rediss' : 'redis'}://${auth}${host}:${t.port}/${t.db}`
}

export function restTarget (s: ConnectionSettings): TargetResult<RestTarget> {
  const urlVariable = s.UPSTASH_REDIS_REST_URL !== undefined ? 'UPSTASH_REDIS_REST_URL' : 'KV_REST_API_URL'
  const tokenVariable = s.UPSTASH_REDIS_REST_TOKEN !== undefined ? 'UPSTASH_REDIS_REST_TOKEN' : 'KV_REST_API_TOKEN'
  const url = s.UPSTASH_REDIS_REST_URL ?? s.KV_REST_API_URL
  const token = s.UPSTASH_REDIS_REST_TOKEN ?? s.KV_REST_API_TOKEN
  if (url === undefined && token === undefined) return { status: 'none' }
  if (url === undefined) {
    return { status: 'invalid', variable: tokenVariable, diagnosis: `${tokenVariable} is set but UPSTASH_REDIS_REST_URL is missing; set it to the https:// REST URL shown next to the token in the Upstash console` }
  }
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return { status: 'invalid', variable: urlVariable, diagnosis: `${urlVariable} is not a valid URL; expected https://<name>.upstash.io` }
  }
  if (parsed.protocol === 'redis:' || parsed.protocol === 'rediss:') {
    return {
      status: 'invalid',
      variable: urlVariable,
      diagnosis: `${urlVariable} holds a ${parsed.protocol}// URL (${redactUrl(url)}), which is a Redis TCP address, not the REST endpoint; move it to REDIS_URL, and set ${urlVariable} to the https:// REST URL`
    }
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    return { status: 'invalid', variable: urlVariable, diagnosis: `${urlVariable} must start with https:// (got ${parsed.protocol}//)` }
  }
  if (token === undefined) {
    return { status: 'invalid', variable: urlVariable, diagnosis: `${urlVariable} is set but UPSTASH_REDIS_REST_TOKEN is missing; copy the REST token from the Upstash console (on Vercel: KV_REST_API_TOKEN)` }
  }
  if (/\s/.test(token)) {
    return { status: 'invalid', variable: tokenVariable, diagnosis: `${tokenVariable} contains whitespace or a line break; paste the token again without it` }
  }
  const base = url.replace(/\/+$/, '')
  return { status: 'ok', target: { urlVariable, tokenVariable, url: base, token, display: redactUrl(base).replace(/\/$/, '') } }
}
