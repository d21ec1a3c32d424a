import type { ClusterNode } from 'ioredis'
import { parseBooleanVariable, parseIntegerVariable, type ReadVariable } from '../config'
import { ConfigError } from '../errors'
import { redactUrl } from '../redact'
import type { TargetResult } from './driver'

// The tcp tier's settings turned into what to connect to, or into a diagnosis
// that names the variable and the fix. Never invents a host: no configuration
// means no Redis.

/** The variables of the tcp tier, parsed (a malformed number or flag throws ConfigError naming it). */
export interface TcpSettings {
  REDIS_URL?: string
  /** More cluster seed nodes, `host:port,host:port` (the first seed is REDIS_URL's). */
  REDIS_CLUSTER_NODES?: string
  REDIS_HOST?: string
  REDIS_PORT?: number
  REDIS_USERNAME?: string
  REDIS_PASSWORD?: string
  REDIS_DB?: number
  REDIS_TLS?: boolean
}

export function tcpSettings (read: ReadVariable): TcpSettings {
  const optional = <T>(name: string, parse: () => T): T | undefined => read(name) === undefined ? undefined : parse()
  return {
    REDIS_URL: read('REDIS_URL'),
    REDIS_CLUSTER_NODES: read('REDIS_CLUSTER_NODES'),
    REDIS_HOST: read('REDIS_HOST'),
    REDIS_PORT: optional('REDIS_PORT', () => parseIntegerVariable(read, 'REDIS_PORT', 0, 1, 65535)),
    REDIS_USERNAME: read('REDIS_USERNAME'),
    REDIS_PASSWORD: read('REDIS_PASSWORD'),
    REDIS_DB: optional('REDIS_DB', () => parseIntegerVariable(read, 'REDIS_DB', 0, 0, 1000)),
    REDIS_TLS: optional('REDIS_TLS', () => parseBooleanVariable(read, 'REDIS_TLS', false))
  }
}

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

const TLS_ONLY_HOSTS = ['.upstash.io']

export function tcpTarget (s: TcpSettings): TargetResult<TcpTarget> {
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

function tcpTargetFromUrl (raw: string, s: TcpSettings): TargetResult<TcpTarget> {
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

/** REDIS_CLUSTER_NODES: `host:port,host:port`; a malformed entry is an error naming it. */
export function clusterSeeds (raw: string | undefined): ClusterNode[] {
  if (raw === undefined) return []
  return raw.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '').map((entry) => {
    const match = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(entry)
    if (match === null) throw new ConfigError(`Invalid configuration: REDIS_CLUSTER_NODES entry "${entry.slice(0, 60)}" is not host:port (e.g. 10.0.0.2:6379,10.0.0.3:6379)`)
    return { host: match[1], port: Number(match[2]) }
  })
}
