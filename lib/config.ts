import envSchema from 'env-schema'
import { ConfigError } from './errors'
import { parseDuration } from './duration'

/** Raw settings: environment variables, overridden by plugin options of the same names. */
export type EnvInput = Record<string, string | number | boolean | undefined>

const connectionSchema = {
  type: 'object',
  properties: {
    NODE_ENV: { type: 'string' },
    REDIS_URL: { type: 'string' },
    REDIS_HOST: { type: 'string', minLength: 1 },
    REDIS_PORT: { type: 'integer', minimum: 1, maximum: 65535 },
    REDIS_USERNAME: { type: 'string' },
    REDIS_PASSWORD: { type: 'string' },
    REDIS_DB: { type: 'integer', minimum: 0, maximum: 1000 },
    REDIS_TLS: { type: 'boolean' },
    REDIS_CONNECT_TIMEOUT_MS: { type: 'integer', minimum: 1, maximum: 600000, default: 2000 },
    REDIS_COMMAND_TIMEOUT_MS: { type: 'integer', minimum: 1, maximum: 600000, default: 1000 },
    REDIS_REQUIRED: { type: 'boolean', default: false },
    UPSTASH_REDIS_REST_URL: { type: 'string' },
    UPSTASH_REDIS_REST_TOKEN: { type: 'string' },
    KV_REST_API_URL: { type: 'string' },
    KV_REST_API_TOKEN: { type: 'string' }
  }
} as const

export interface ConnectionSettings {
  NODE_ENV?: string
  REDIS_URL?: string
  REDIS_HOST?: string
  REDIS_PORT?: number
  REDIS_USERNAME?: string
  REDIS_PASSWORD?: string
  REDIS_DB?: number
  REDIS_TLS?: boolean
  REDIS_CONNECT_TIMEOUT_MS: number
  REDIS_COMMAND_TIMEOUT_MS: number
  REDIS_REQUIRED: boolean
  UPSTASH_REDIS_REST_URL?: string
  UPSTASH_REDIS_REST_TOKEN?: string
  KV_REST_API_URL?: string
  KV_REST_API_TOKEN?: string
}

export interface Settings {
  connection: ConnectionSettings
  /** Every variable as text (flags such as CACHE_ENABLED are read from here by the resolver). */
  env: Readonly<Record<string, string>>
}

/** Merge env and overrides (overrides win), drop empty values, validate. Throws ConfigError naming the variable. */
export function loadSettings (base: EnvInput, overrides: EnvInput = {}): Settings {
  const env: Record<string, string> = {}
  for (const source of [base, overrides]) {
    for (const [key, value] of Object.entries(source)) {
      if (value === undefined) continue
      const text = String(value).trim()
      if (text === '') delete env[key] // PaaS dashboards often leave a variable set to ''
      else env[key] = text
    }
  }
  const data: Record<string, string> = {}
  for (const key of Object.keys(connectionSchema.properties)) {
    if (env[key] !== undefined) data[key] = env[key]
  }
  try {
    const connection = envSchema<ConnectionSettings>({
      schema: structuredClone(connectionSchema) as unknown as Record<string, unknown>,
      data,
      env: false,
      dotenv: false
    })
    return { connection, env }
  } catch (err) {
    throw new ConfigError(describeSchemaErrors(err))
  }
}

interface AjvError { instancePath: string, message?: string, params?: Record<string, unknown> }

function describeSchemaErrors (err: unknown): string {
  const errors = (err as { errors?: AjvError[] }).errors ?? []
  const parts = errors.map((e) => {
    const variable = e.instancePath.replace(/^\//, '')
    return `${variable} ${e.message ?? 'is invalid'}${hintFor(variable)}`
  })
  return `Invalid configuration: ${parts.join('; ') || String((err as Error).message)}`
}

function hintFor (variable: string): string {
  if (variable.endsWith('_MS')) return ' (a whole number of milliseconds, e.g. 2000)'
  if (variable === 'REDIS_PORT') return ' (a TCP port, 1-65535)'
  if (variable === 'REDIS_DB') return ' (a database index, e.g. 0)'
  if (variable === 'REDIS_TLS' || variable === 'REDIS_REQUIRED') return ' (use true or false)'
  return ''
}

/** Parse a feature flag or similar boolean variable; throws ConfigError naming it. */
export type ReadVariable = (name: string) => string | undefined

export function parseBooleanVariable (read: ReadVariable, name: string, fallback: boolean): boolean {
  const raw = read(name)
  if (raw === undefined) return fallback
  const value = raw.toLowerCase()
  if (['true', '1', 'yes', 'on'].includes(value)) return true
  if (['false', '0', 'no', 'off'].includes(value)) return false
  throw new ConfigError(`Invalid configuration: ${name} must be true or false (got "${raw.slice(0, 20)}")`)
}

/** Parse a variable that must be one of a few words; throws ConfigError naming it. */
export function parseChoiceVariable<T extends string> (read: ReadVariable, name: string, choices: readonly T[]): T | undefined {
  const raw = read(name)
  if (raw === undefined) return undefined
  const value = raw.toLowerCase() as T
  if (choices.includes(value)) return value
  throw new ConfigError(`Invalid configuration: ${name} must be one of ${choices.join(', ')} (got "${raw.slice(0, 20)}")`)
}

/** Parse a whole-number variable within bounds; throws ConfigError naming it. */
export function parseIntegerVariable (read: ReadVariable, name: string, fallback: number, min: number, max: number): number {
  const raw = read(name)
  if (raw === undefined) return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`Invalid configuration: ${name} must be a whole number from ${min} to ${max} (got "${raw.slice(0, 20)}")`)
  }
  return value
}

/** Parse a duration variable ('500ms', '30s', seconds); throws ConfigError naming it. */
export function parseDurationVariable (read: ReadVariable, name: string, fallback: string): number {
  try {
    return parseDuration(read(name) ?? fallback, name)
  } catch (err) {
    throw new ConfigError(`Invalid configuration: ${(err as Error).message}`)
  }
}
