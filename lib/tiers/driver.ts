import type { BusTransport, Deliver, Resumed } from '../bus'
import type { DiagnosisContext } from '../diagnose'
import type { Meter, RedisCommands } from '../redis-commands'
import type { RedisTier } from '../resolve-tier'

// One Redis tier behind one small contract: what to connect to (from the
// settings), how to probe and ping it, the commands adapter and pub/sub
// transport on its client, how its client reports its own connection state,
// and how to close it. plugins/connections.ts loops over drivers; a new tier
// is one new file that returns one of these.

export interface ProbeResult<Client> {
  ok: boolean
  /** The connected client, for runtime use (only when ok). */
  client?: Client
  latencyMs?: number
  error?: Error
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
  commands: (client: Client, timeoutMs: number, meter: Meter) => RedisCommands
  transport: (client: Client, onError: (err: Error) => void) => (deliver: Deliver, resumed: Resumed) => BusTransport
  watch: (client: Client, signals: LiveSignals) => void
  close: (client: Client) => Promise<void>
  /** What /health and the boot report add about the connected client (e.g. a cluster's mode and nodes). */
  describe?: (client: Client) => Promise<Record<string, unknown>>
}
