import type { ReadVariable } from '../config'
import { redactUrl } from '../redact'
import type { TargetResult } from './driver'

// The rest tier's settings (Upstash's variables, or Vercel KV's names for
// them) turned into the endpoint and token, or into a diagnosis that names the
// variable and the fix.

export interface RestSettings {
  UPSTASH_REDIS_REST_URL?: string
  UPSTASH_REDIS_REST_TOKEN?: string
  KV_REST_API_URL?: string
  KV_REST_API_TOKEN?: string
}

export function restSettings (read: ReadVariable): RestSettings {
  return {
    UPSTASH_REDIS_REST_URL: read('UPSTASH_REDIS_REST_URL'),
    UPSTASH_REDIS_REST_TOKEN: read('UPSTASH_REDIS_REST_TOKEN'),
    KV_REST_API_URL: read('KV_REST_API_URL'),
    KV_REST_API_TOKEN: read('KV_REST_API_TOKEN')
  }
}

export interface RestTarget {
  urlVariable: string
  tokenVariable: string
  url: string
  token: string
  display: string
}

export function restTarget (s: RestSettings): TargetResult<RestTarget> {
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
