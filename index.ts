// The package's one entry: every plugin, the app, the error classes and the
// public types. `import app, { cache } from 'redis-tiers'` (ESM) and
// `require('redis-tiers')` (CommonJS) both land here; `redis-tiers/<plugin>`
// default-exports one plugin.

import app from './app'

export default app
export { app }
export { default as connections } from './plugins/connections'
export { default as cache } from './plugins/cache'
export { default as sse } from './plugins/sse'
export { default as presence } from './plugins/presence'
export { default as queues } from './plugins/queues'
export { default as rateLimit } from './plugins/rate-limit'
export {
  BusClosedError,
  ConfigError,
  DeadlineError,
  DecoratorTakenError,
  DefineError,
  FeatureUnavailableError,
  ForbiddenError,
  InvalidChannelError,
  InvalidInputError,
  ProbeTimeout,
  NotFoundError,
  RateLimitedError,
  RedisRequiredError,
  UnauthorizedError
} from './lib/errors'

export type { AppOptions } from './app'
export type { ConnectionsOptions, Connections, Features, HealthReport, TierChange, TierState, FeatureChange, FeatureState, Rebind, RedisRestart, SharedTcpClient, SharedRestClient } from './plugins/connections'
export type { CachePluginOptions, RouteCacheConfig } from './plugins/cache'
export type { Cache, CacheSetOptions, GetOrSetOptions, CacheStats } from './lib/cache/client'
export type { SsePluginOptions, Sse, SseStats, StreamOptions, Authorize } from './plugins/sse'
export type { SseEvent } from './lib/sse/store'
export type { PresencePluginOptions, Presence, HeartbeatOptions, PresenceListener } from './plugins/presence'
export type { PresenceEvent, PresenceEventType, PresenceEntry } from './lib/presence/store'
export type { QueuesPluginOptions, Queues, QueuesStats, DefineOptions, ProgressChannel } from './plugins/queues'
export type { JobContext, JobProgress, Processor, JobOptions, AddOptions, JobState, JobInfo, JobCounts, Repeat, ScheduleInfo, Backoff, KeepJobs } from './lib/queues/backend'
export type { RateLimitPluginOptions, RateLimit, RateLimitConsumeOptions, RateLimitStats, RateLimitDecision, OutagePolicy, Algorithm, FastifyRateLimitStoreClass } from './plugins/rate-limit'
export type { Bus, MessageHandler, Unsubscribe } from './lib/bus'
export type { Tier, RedisTier, FeatureRequirement, Resolution } from './lib/resolve-tier'
export type { OutageBehaviour } from './lib/feature-bindings'
export type { FeatureStatus } from './lib/feature'
export type { EnvInput } from './lib/config'
export type { StatusPageOptions, StatusSnapshot, StatusSample } from './routes/status'
export type { MetricsOptions } from './routes/metrics'
export type { HealthOptions } from './routes/health'
export type { BudgetReport, Usage, UsageEntry } from './lib/usage'
export type { Meter } from './lib/redis-commands'
