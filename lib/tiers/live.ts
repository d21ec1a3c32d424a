import type { DiagnosisContext } from '../diagnose'
import type { RedisTier } from '../resolve-tier'
import type { ProbeResult, TierDriver } from './driver'
import type { Meter } from '../redis-commands'
import type { Refusal } from '../refusal'

// The one source of truth for whether a configured tier is up, at every
// moment: fed by the boot probe, the client's own connection events (tcp),
// /health pings, and a background re-probe while the tier is down (capped
// backoff: 250 ms doubling to REDIS_REPROBE_MAX_MS). A tier that is not
// configured has no live state, so nothing is ever dialled for it.

/** What /health and the boot report say about one Redis tier. No secret in here. */
export interface TierState {
  configured: boolean
  reachable: boolean
  /** The variable it came from, e.g. REDIS_URL. */
  source: string | null
  /** Redacted address. */
  endpoint: string | null
  latencyMs: number | null
  /** One sentence naming the variable and the fix. */
  lastError: string | null
  /** When the last probe, ping or event told us the state. */
  checkedAt: string | null
  /** When `reachable` last changed (boot counts as a change). */
  since: string | null
  /** Reachable but refusing (full: writes; quota: everything), with the cause and the fix; null otherwise. */
  refusing: Refusal | null
}

export function emptyTierState (): TierState {
  return { configured: false, reachable: false, source: null, endpoint: null, latencyMs: null, lastError: null, checkedAt: null, since: null, refusing: null }
}

export interface LiveTierOptions {
  connectTimeoutMs: number
  commandTimeoutMs: number
  /** The longest wait between two re-probes of a tier that is down. */
  reprobeMaxMs: number
  /** A failure as one safe sentence (already redacted). */
  diagnose: (err: unknown, ctx: DiagnosisContext) => string
  /** reachable changed: up (true) or down (false). */
  onChange: (tier: RedisTier, up: boolean, state: TierState) => void
  /** Something failed while down (rate-limit it). */
  onError: (tier: RedisTier, diagnosis: string) => void
  /** Worth one info line, not an outage: e.g. a connection closed while idle came back at once. */
  onNotice?: (tier: RedisTier, message: string) => void
  /** Told of every PING sent on the client (one command each). */
  meter: Meter
}

export interface LiveTier<Client = unknown> {
  readonly driver: TierDriver<Client>
  readonly state: TierState
  /** The connected client, or null while the tier has never been reached. */
  client: () => Client | null
  /** PING now (for /health), with the command deadline; updates the state. */
  check: () => Promise<void>
  close: () => Promise<void>
}

const FIRST_REPROBE_MS = 250

/** The live state of one configured tier, starting from its boot probe. */
export function liveTier<Client> (driver: TierDriver<Client>, boot: ProbeResult<Client>, opts: LiveTierOptions): LiveTier<Client> {
  const { tier } = driver
  const now = (): string => new Date().toISOString()
  const state: TierState = {
    ...emptyTierState(),
    configured: true,
    source: driver.context.variable,
    endpoint: driver.context.endpoint,
    since: now()
  }
  let client: Client | null = null
  let timer: NodeJS.Timeout | undefined
  let attempt = 0
  let closed = false
  /** The boot probe's outcome is the boot report's to tell, not a change. */
  let booting = true

  function up (latencyMs?: number): void {
    if (closed) return
    state.lastError = null
    state.checkedAt = now()
    if (latencyMs !== undefined) state.latencyMs = latencyMs
    clearTimeout(timer)
    timer = undefined
    attempt = 0
    if (state.reachable) return
    state.reachable = true
    state.since = state.checkedAt
    if (!booting) opts.onChange(tier, true, state)
  }

  function down (err: unknown, ctx: DiagnosisContext = driver.context): void {
    if (closed) return
    state.lastError = opts.diagnose(err, ctx)
    state.latencyMs = null
    state.checkedAt = now()
    if (state.reachable) {
      state.reachable = false
      state.since = state.checkedAt
      opts.onChange(tier, false, state)
    } else if (!booting) {
      opts.onError(tier, state.lastError)
    }
    schedule()
  }

  function schedule (): void {
    if (closed || timer !== undefined) return
    const delay = Math.min(FIRST_REPROBE_MS * 2 ** attempt, opts.reprobeMaxMs)
    attempt++
    timer = setTimeout(() => { timer = undefined; void reprobe() }, delay)
    timer.unref()
  }

  const pingContext: DiagnosisContext = { ...driver.context, timeoutMs: opts.commandTimeoutMs, timeoutVariable: 'REDIS_COMMAND_TIMEOUT_MS' }

  async function ping (current: Client): Promise<void> {
    opts.meter(1)
    try {
      up(await driver.ping(current, opts.commandTimeoutMs))
    } catch (err) {
      down(err, pingContext)
    }
  }

  function adopt (result: ProbeResult<Client>): void {
    if (!result.ok || result.client === undefined) {
      down(result.error)
      return
    }
    const adopted = result.client
    client = adopted
    driver.watch(adopted, {
      up: () => up(),
      down: (err) => down(err ?? new Error('Connection is closed.')),
      reconnected: (ms) => {
        if (closed) return
        state.checkedAt = now()
        opts.onNotice?.(tier, `tier ${tier}: the connection was closed by the server or the network (an idle timeout, a NAT gateway, a paused process) and reconnected in ${ms} ms; not an outage`)
      }
    })
    up(result.latencyMs)
  }

  async function reprobe (): Promise<void> {
    if (closed) return
    if (client !== null) return await ping(client)
    const result = await driver.probe(opts.connectTimeoutMs)
    if (closed) {
      if (result.client !== undefined) await driver.close(result.client)
      return
    }
    adopt(result)
  }

  adopt(boot)
  booting = false

  return {
    driver,
    state,
    client: () => client,
    async check () {
      if (client !== null) await ping(client)
    },
    async close () {
      closed = true
      clearTimeout(timer)
      timer = undefined
      if (client !== null) await driver.close(client)
    }
  }
}
