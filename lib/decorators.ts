import type { FastifyInstance } from 'fastify'
import { DecoratorTakenError } from './errors'

/** Fail boot with a message naming the likely owner instead of Fastify's generic "already present". */
export function assertDecoratorFree (fastify: FastifyInstance, name: string, likelyOwner: string, fix: string): void {
  if (fastify.hasDecorator(name)) throw new DecoratorTakenError(name, likelyOwner, fix)
}

/**
 * The decorator name a feature plugin uses: its `decorator` option, or the feature name.
 * Fails boot, with the option as the fix, when the name is taken.
 */
export function claimFeatureDecorator (fastify: FastifyInstance, option: string | undefined, feature: string, likelyOwner = `another ${feature} plugin`): string {
  const name = option ?? feature
  assertDecoratorFree(fastify, name, likelyOwner, `pass the \`decorator\` option to the ${feature} plugin to use another name`)
  return name
}
