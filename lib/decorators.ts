import type { FastifyInstance } from 'fastify'
import { DecoratorTakenError } from './errors'

/** Fail boot with a message naming the likely owner instead of Fastify's generic "already present". */
export function assertDecoratorFree (fastify: FastifyInstance, name: string, likelyOwner: string, fix: string): void {
  if (fastify.hasDecorator(name)) throw new DecoratorTakenError(name, likelyOwner, fix)
}

/**
 * A feature plugin decorates `fastify.<feature>`, the name its types declare.
 * When another plugin owns it, boot fails with the way to keep both.
 */
export function claimFeatureDecorator (fastify: FastifyInstance, feature: string, likelyOwner = `another ${feature} plugin`): void {
  assertDecoratorFree(fastify, feature, likelyOwner, 'register one of the two inside its own encapsulated scope (fastify.register without fastify-plugin), so each decorates only that scope')
}
