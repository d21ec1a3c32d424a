import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyInstance, FastifyPluginAsync, FastifyPluginOptions } from 'fastify'
import type { Connections } from '../plugins/connections'
import type { Bus } from './bus'
import { claimFeatureDecorator } from './decorators'
import { settledWithin, withTimeout } from './deadline'
import { FeatureUnavailableError, isOurError, tierFailure } from './errors'
import { rateLimitedWarn } from './rate-limited-log'
import type { Meter, RedisCommands } from './redis-commands'
import { envPrefix, type FeatureRequirement, type Resolution, type Tier } from './resolve-tier'
import type { ReadVariable } from './config'
import { resolvePrefix } from './prefix'

// The one skeleton of every feature plugin (cache, sse, presence, queues,
// rate-limit). The runtime claims the decorator, resolves the requirement,
// opens the feature's store on the tier it got (memory included: a binding is
// the same shape on every tier), moves it when the resolution changes
// (subscribe-then-swap: the new store is opened and handed over before the
// old one is closed), answers `available`, `tier` and `reason`, describes the
// feature in /health, turns a tier failure into our 503 in one wording, runs
// the feature's periodic and background work, and cleans up on close. A
// feature supplies its settings, `open(binding)` and its API.

/** What a feature is given for the tier it resolved to: the same shape on every tier. */
export interface TierBinding {
  readonly tier: Tier
  /** Why the feature is on this tier (the resolver's words). */
  readonly reason: string
  /** Whether other instances share the tier's state (false on memory). */
  readonly shared: boolean
  /** The commands adapter with the feature's deadline, metered as the feature's; null on memory. */
  readonly commands: RedisCommands | null
  /** The tier's pub/sub bus (memory has one too): one event path on every tier. Made on first use. */
  readonly bus: Bus
  /** Told of round trips the feature sends past `commands` (a library's own client). */
  readonly meter: Meter
  /** The tier's shared client, for a library that makes its own connections from it (BullMQ); null on memory. */
  readonly client: unknown
  /** A Redis Cluster: keys one script or queue touches together need a hash tag. */
  readonly cluster: boolean
}

/** What every feature's decorator says of itself, whatever its tier. */
export interface FeatureStatus {
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
}

/** A feature's API as its setup writes it: the runtime adds the status. */
export type FeatureApi<Api extends FeatureStatus> = Omit<Api, keyof FeatureStatus>

/** The runtime as a feature's setup and API see it. */
export interface Feature<Store> {
  readonly fastify: FastifyInstance
  readonly connections: Connections
  /** A setting by variable name (plugin options override env). */
  readonly variable: ReadVariable
  /** The feature's key namespace: the plugin option, else <FEATURE>_PREFIX, else the package name. */
  prefix: (option: string | undefined) => string
  readonly log: FastifyBaseLogger
  /** A warning at a bounded rate per key (outages repeat). */
  readonly warn: (key: string, message: string, extra?: Record<string, unknown>) => void
  /** The store of the current binding; null while the feature is skipped. */
  readonly store: Store | null
  readonly binding: TierBinding | null
  readonly available: boolean
  readonly tier: Tier | null
  readonly reason: string
  /** The store, or our 503 with the reason the feature is off. */
  use: () => Store
  /** Our 503 for this feature. */
  unavailable: (why: string) => never
  /** Our 503 with the reason the feature is off (skipped). */
  refusal: () => FeatureUnavailableError
  /** The tier failure of `what` (e.g. 'answer the heartbeat') as our 503, in the one wording of every feature. */
  failure: (what: string, err?: unknown) => FeatureUnavailableError
  /**
   * Runs `fn` on the store; a tier failure (not a memory store's, nor our own coded errors) becomes
   * `failure(what, err)`. `deadlineMs` bounds a call whose client has no deadline of its own.
   */
  guard: <T>(what: string, fn: (store: Store) => Promise<T>, deadlineMs?: number) => Promise<T>
  /**
   * Periodic work (sweeps, heartbeats): unref'd, stopped on close; returns what stops it sooner.
   * The one place a feature's timers start, so a policy for frozen or serverless instances is set here.
   */
  every: (ms: number, task: () => void) => () => void
  /**
   * Work that outlives a request (a write the answer does not wait for, a refresh, an event
   * published after the response): tracked, never rejected, waited for on close (up to BACKGROUND_CLOSE_MS).
   */
  background: (work: Promise<unknown>) => void
  /** Redis on the feature's current tier came back without its data. */
  onRestarted: (listener: (tier: Tier) => void) => void
  onClose: (task: () => unknown) => void
}

/** What a feature's setup returns. */
export interface FeatureParts<Store> {
  requirement: FeatureRequirement
  /** The deadline of every command the feature's store sends. */
  timeoutMs: number
  open: (binding: TierBinding) => Store | Promise<Store>
  /** Before the swap: what moves from the old store to the new one; a rejection keeps the feature where it was. */
  handOver?: (from: Store | null, to: Store) => Promise<void>
  /** After the swap (`next`: the store now in use); on app close, or for a store whose hand-over failed (`next`: null). */
  close?: (store: Store, next: Store | null) => Promise<void>
  /** Counts a tier failure the guard turned into a 503. */
  onTierError?: (err: unknown) => void
  /** The feature's own figures in /health. */
  describe?: () => Record<string, unknown> | Promise<Record<string, unknown>>
  /** The decorator without `available`, `tier` and `reason`, which the runtime adds. */
  api: object
}

export interface FeatureSpec<Options, Store> {
  /** The feature's name: its plugin's, its requirement's, /health's. */
  name: string
  /** fastify.<decorator> (default: the name). */
  decorator?: string
  /** Who else may own the decorator name, for the boot error. */
  likelyOwner?: string
  setup: (feature: Feature<Store>, opts: Options) => FeatureParts<Store> | Promise<FeatureParts<Store>>
}

/** How long close waits for background work: each piece is bounded by its own deadlines; this bounds a host's. */
const BACKGROUND_CLOSE_MS = 5000

interface Current<Store> { binding: TierBinding | null, store: Store | null, reason: string }

/** The binding of an active resolution, built from what connections hands out for its tier. */
function tierBinding (connections: Connections, resolution: Resolution & { status: 'active' }, timeoutMs: number): TierBinding {
  const { tier, reason, shared, feature } = resolution
  const commands = connections.commands(tier, timeoutMs, feature)
  const meter: Meter = tier === 'memory' ? () => {} : connections.usage.meter(feature, tier)
  return {
    tier,
    reason,
    shared,
    commands,
    get bus () { return connections.bus(tier) },
    meter,
    client: connections.client(tier),
    cluster: commands?.cluster ?? false
  }
}

/** The runtime's own state behind a Feature: the binding in use, and what to stop on close. */
interface Runtime<Store> {
  feature: Feature<Store>
  current: Current<Store>
  /** Set once setup has said how it counts tier failures. */
  onTierError?: (err: unknown) => void
  /** Timers, background work and the feature's own cleanup, in that order. */
  stop: () => Promise<void>
}

function createRuntime<Store> (fastify: FastifyInstance, name: string): Runtime<Store> {
  const { connections } = fastify
  const log = fastify.log.child({ plugin: name })
  const timers = new Set<NodeJS.Timeout>()
  const pending = new Set<Promise<unknown>>()
  const closers: Array<() => unknown> = []
  const failure = (what: string, err?: unknown): FeatureUnavailableError =>
    tierFailure(name, what, err === undefined ? undefined : connections.explain(runtime.current.binding?.tier ?? null, err))
  const unavailable = (why: string): never => { throw new FeatureUnavailableError(name, why) }

  const feature: Feature<Store> = {
    fastify,
    connections,
    variable: connections.variable,
    prefix: (option) => resolvePrefix(option, `${envPrefix(name)}_PREFIX`, connections.variable),
    log,
    warn: rateLimitedWarn(log),
    get store () { return runtime.current.store },
    get binding () { return runtime.current.binding },
    get available () { return runtime.current.binding !== null },
    get tier () { return runtime.current.binding?.tier ?? null },
    get reason () { return runtime.current.reason },
    use: () => runtime.current.store ?? unavailable(runtime.current.reason),
    unavailable,
    refusal: () => new FeatureUnavailableError(name, runtime.current.reason),
    failure,
    async guard (what, fn, deadlineMs) {
      const store = feature.use()
      const { binding } = runtime.current
      try {
        return await (deadlineMs === undefined ? fn(store) : withTimeout(fn(store), deadlineMs))
      } catch (err) {
        if (binding?.commands == null || isOurError(err)) throw err
        runtime.onTierError?.(err)
        throw failure(what, err)
      }
    },
    every (ms, task) {
      const timer = setInterval(task, ms)
      timer.unref()
      timers.add(timer)
      return () => {
        clearInterval(timer)
        timers.delete(timer)
      }
    },
    background (work) {
      const tracked = work.catch(() => {}).finally(() => pending.delete(tracked))
      pending.add(tracked)
    },
    onRestarted (listener) {
      closers.push(connections.on('restarted', ({ tier }) => { if (runtime.current.binding?.tier === tier) listener(tier) }))
    },
    onClose: (task) => { closers.push(task) }
  }
  const runtime: Runtime<Store> = {
    feature,
    current: { binding: null, store: null, reason: '' },
    async stop () {
      for (const timer of timers) clearInterval(timer)
      timers.clear()
      await settledWithin(Promise.allSettled([...pending]), BACKGROUND_CLOSE_MS)
      for (const close of closers) await close()
    }
  }
  return runtime
}

export function defineFeature<Options extends FastifyPluginOptions, Store> (spec: FeatureSpec<Options, Store>): FastifyPluginAsync<Options> {
  const decorator = spec.decorator ?? spec.name
  async function plugin (fastify: FastifyInstance, opts: Options): Promise<void> {
    claimFeatureDecorator(fastify, decorator, spec.likelyOwner)
    const { connections } = fastify
    const runtime = createRuntime<Store>(fastify, spec.name)
    const { feature } = runtime
    const setup = await spec.setup(feature, opts)
    runtime.onTierError = setup.onTierError
    const bindTo = async (resolution: Resolution): Promise<Current<Store>> => {
      if (resolution.status !== 'active') return { binding: null, store: null, reason: resolution.reason }
      const binding = tierBinding(connections, resolution, setup.timeoutMs)
      return { binding, store: await setup.open(binding), reason: resolution.reason }
    }
    // Subscribe, then swap: the new store is open and handed over before the old one closes.
    runtime.current = await bindTo(connections.resolve(setup.requirement, async (next) => {
      const fresh = await bindTo(next)
      if (fresh.store !== null) {
        try {
          await setup.handOver?.(runtime.current.store, fresh.store)
        } catch (err) {
          await setup.close?.(fresh.store, null)
          throw err
        }
      }
      const old = runtime.current
      runtime.current = fresh
      if (old.store !== null) await setup.close?.(old.store, fresh.store)
    }))

    // The decorator is the same object for the life of the app; the binding behind it moves.
    const api = Object.defineProperties(setup.api, {
      available: { get: () => feature.available, enumerable: true },
      tier: { get: () => feature.tier, enumerable: true },
      reason: { get: () => feature.reason, enumerable: true }
    })
    if (setup.describe !== undefined) connections.describe(spec.name, setup.describe)
    fastify.decorate(decorator, api)
    fastify.addHook('onClose', async () => {
      await runtime.stop()
      const { store } = runtime.current
      if (store !== null) await setup.close?.(store, null)
    })
  }
  return fp(plugin as FastifyPluginAsync<Options>, { name: spec.name, fastify: '5.x', dependencies: ['connections'] })
}
