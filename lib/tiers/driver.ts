import type { BusTransport, Deliver, Resumed } from '../bus'
import type { ReadVariable } from '../config'
import type { DiagnosisContext, Failure } from '../diagnose'
import type { LuaScript, Meter, RedisCommands } from '../redis-commands'
import type { RedisTier } from '../resolve-tier'

// One Redis tier behind one small contract. Its definition (TierDefinition)
// says what it is called, how it reads its own settings and which failures
// only it has; the driver it configures says how to probe and ping it, the
// commands adapter and pub/sub transport on its client, how its client reports
// its own connection state, and how to close it. connections, the resolver,
// /health, /metrics and the status page loop over the registered definitions
// (registry.ts): a new tier is one file exporting a TierDefinition and one
// registerTier line.

export type TargetResult<T> =
  | { status: 'none' }
  | { status: 'invalid', variable: string, diagnosis: string }
  | { status: 'ok', target: T }

export interface ProbeResult<Client> {
  ok: boolean
  /** The connected client, for runtime use (only when ok). */
  client?: Client
  latencyMs?: number
  error?: Error
  /** Reachable, but the PING was refused by a limit of the provider (a spent quota): the client is kept. */
  refused?: Error
}

/** Told of what Redis answered through a commands adapter, so that a refusing tier is noticed and cleared. */
export interface CommandObserver {
  /** A command failed (the error already reduced to Redis's words). */
  failed: (err: Error) => void
  /** A command was answered; `script`: the script it ran (one that adds data shows that Redis accepts writes again). */
  answered: (script?: LuaScript) => void
}

/** What a client tells the live tier state by itself (tcp: connection events; rest has none). */
export interface LiveSignals {
  up: () => void
  down: (err?: Error) => void
  /** A connection the server or the network closed came back within the grace (in `ms`): not an outage. */
  reconnected?: (ms: number) => void
}

export interface TierTimeouts {
  connectTimeoutMs: number
  commandTimeoutMs: number
}

export interface TierDriver<Client = unknown> {
  readonly tier: RedisTier
  /** How diagnoses, /health and the boot report name it: variable, redacted endpoint, TLS. */
  readonly context: DiagnosisContext
  /** Secrets its settings hold, redacted from every text that leaves the process. */
  readonly secrets: readonly string[]
  /** Connect and PING within one deadline; a failed probe leaves nothing running. */
  probe: (deadlineMs: number) => Promise<ProbeResult<Client>>
  /** PING with its own deadline; resolves with the round trip in ms. */
  ping: (client: Client, ms: number) => Promise<number>
  /** The commands adapter on the client, each round trip told to `meter` with what it is billed. */
  commands: (client: Client, timeoutMs: number, meter: Meter, observer?: CommandObserver) => RedisCommands
  transport: (client: Client, onError: (err: Error) => void) => (deliver: Deliver, resumed: Resumed) => BusTransport
  watch: (client: Client, signals: LiveSignals) => void
  close: (client: Client) => Promise<void>
  /** INFO `section` with its own deadline (the boot measure of maxmemory, and the check of a full Redis). */
  info?: (client: Client, section: string, ms: number) => Promise<string>
  /** What /health and the boot report add about the connected client (e.g. a cluster's mode and nodes). */
  describe?: (client: Client) => Promise<Record<string, unknown>>
}

/** A Redis tier as the registry knows it: its name, how it is named to people, and how it is configured. */
export interface TierDefinition<Client = unknown> {
  readonly tier: RedisTier
  /** How a skipped feature's reason names it: `a TCP Redis (REDIS_URL)`. */
  readonly label: string
  /** What the status page says to set for a tier that is not configured. */
  readonly setUp: string
  /** The variables that hold its secrets: redacted from every text that leaves the process, even when the tier is misconfigured. */
  readonly secretVariables: readonly string[]
  /**
   * The driver for its own variables: `none` when none is set, `invalid` with a diagnosis naming
   * the variable (reported, never dialled). Throws ConfigError for a malformed number or flag.
   */
  configure: (read: ReadVariable, timeouts: TierTimeouts) => TargetResult<TierDriver<Client>>
  /** Failures only this tier has, as one sentence, asked after the common ones (timeout, DNS, refused, TLS); null when none fits. */
  diagnose?: (failure: Failure) => string | null
  /** Added to the sentence for a probe that timed out (e.g. a TLS hint). */
  timeoutHint?: (ctx: DiagnosisContext) => string
}
