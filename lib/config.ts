import { ConfigError } from './errors'
import { parseConfigDuration } from './duration'

/** Raw settings: environment variables, overridden by plugin options of the same names. */
export type EnvInput = Record<string, string | number | boolean | undefined>

/** What every tier shares; each tier reads its own variables (lib/tiers/<tier>-target.ts). */
export interface ConnectionSettings {
  REDIS_CONNECT_TIMEOUT_MS: number
  REDIS_COMMAND_TIMEOUT_MS: number
  REDIS_REQUIRED: boolean
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
  return { connection: parseConnectionSettings((name) => env[name]), env }
}

// Hand-parsed with the same helpers as every feature variable (one message
// shape everywhere), rather than through a JSON-schema compiler of its own:
// that alone cost about a sixth of a cold start.
function parseConnectionSettings (read: ReadVariable): ConnectionSettings {
  return {
    REDIS_CONNECT_TIMEOUT_MS: parseIntegerVariable(read, 'REDIS_CONNECT_TIMEOUT_MS', 2000, 1, 600_000),
    REDIS_COMMAND_TIMEOUT_MS: parseIntegerVariable(read, 'REDIS_COMMAND_TIMEOUT_MS', 1000, 1, 600_000),
    REDIS_REQUIRED: parseBooleanVariable(read, 'REDIS_REQUIRED', false)
  }
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
  return parseConfigDuration(read(name) ?? fallback, name)
}
