import { readFileSync } from 'node:fs'
import path from 'node:path'
import { ConfigError } from './errors'

// Every feature keeps its Redis keys and channels under one namespace, so
// that several apps can share a Redis and clear() never touches another's keys.

const PREFIX = /^[A-Za-z0-9:_.-]{1,64}$/

function packageName (): string {
  try {
    const { name } = JSON.parse(readFileSync(path.join(process.cwd(), 'package.json'), 'utf8')) as { name?: unknown }
    if (typeof name === 'string' && name !== '') return name.replace(/[^A-Za-z0-9:_.-]+/g, '-').slice(0, 64)
  } catch { /* no package.json: use the generic name */ }
  return 'app'
}

/** The plugin option, else the variable, else the package name; validated, naming the variable. */
export function resolvePrefix (option: string | undefined, variableName: string, read: (name: string) => string | undefined): string {
  const prefix = option ?? read(variableName) ?? packageName()
  if (!PREFIX.test(prefix)) throw new ConfigError(`Invalid configuration: ${variableName} must be 1-64 letters, digits or : _ . - (got "${prefix.slice(0, 70)}")`)
  return prefix
}
