// What BullMQ's Lua scripts are billed: Upstash counts every command a script
// runs as well as the EVALSHA. BullMQ's scripts branch on job options and queue
// state, so these are typical counts, not bounds, measured on a real Redis
// (bullmq 6, plain jobs, an idle worker; MONITOR shows each script's own
// commands). `npm run bench -- costs` compares what is counted with what
// Redis ran.

/** Commands run inside a script, by BullMQ's script name. */
const SCRIPT_COMMANDS: Readonly<Record<string, number>> = {
  addStandardJob: 8,
  addDelayedJob: 9,
  addPrioritizedJob: 9,
  getCounts: 7,
  moveToActive: 6, // a worker's fetch that finds nothing (9 when it takes a job)
  moveStalledJobsToWait: 6, // the stalled check, every QUEUES_LOCK_MS / 2 per worker
  moveToFinished: 23 // completing a job (and fetching the next)
}
const OTHER_SCRIPT = 8

/** Commands one call of a BullMQ script (named as BullMQ defines it, `addStandardJob:<version>`) is billed, its EVALSHA included. */
export function bullmqScriptCost (name: string): number {
  return 1 + (SCRIPT_COMMANDS[name.split(':')[0]] ?? OTHER_SCRIPT)
}
