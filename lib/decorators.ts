import type { FastifyInstance } from 'fastify'
import { DecoratorTakenError } from './errors'

/** Fail boot with a message naming the likely owner instead of Fastify's generic "already present". */
export function assertDecoratorFree (fastify: FastifyInstance, name: string, likelyOwner: string, fix: string): void {
  if (fastify.hasDecorator(name)) throw new DecoratorTakenError(name, likelyOwner, fix)
}
