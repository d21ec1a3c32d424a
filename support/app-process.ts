import { spawn, type ChildProcess } from 'node:child_process'
import { setTimeout as sleep } from 'node:timers/promises'
import path from 'node:path'
import type { Teardown } from './redis-server'
import { eventually } from './eventually'

// The demo server (server.ts) in its own process, so that a test can freeze it
// with SIGSTOP and thaw it with SIGCONT, as a serverless platform or a laptop
// lid does; the test runner itself is never stopped.

const root = path.join(__dirname, '..')

export interface AppProcess {
  child: ChildProcess
  /** http://127.0.0.1:<port> */
  url: string
  /** The JSON log lines printed so far. */
  lines: () => Array<Record<string, unknown>>
  /** Stop the process for `ms` (a deliberate time, not a synchronisation), then resume it. */
  freeze: (ms: number) => Promise<void>
}

export async function startAppProcess (t: Teardown, env: Record<string, string>, bootMs = 30_000): Promise<AppProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'server.ts'], {
    cwd: root,
    env: { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: '0', DEMO_ROUTES: 'true', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const running = (): boolean => child.exitCode === null && child.signalCode === null
  t.teardown(() => { if (running()) child.kill('SIGKILL') })
  const lines = (): Array<Record<string, unknown>> => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>)
  let url = ''
  await eventually(() => {
    const line = lines().find((l) => typeof l.msg === 'string' && l.msg.startsWith('Server listening at http://127.0.0.1'))
    url = line !== undefined ? String(line.msg).replace('Server listening at ', '') : ''
    return url !== '' || !running()
  }, bootMs, 'the demo server listening')
  if (url === '') throw new Error(`the demo server exited before listening: ${out.slice(0, 2000)}`)
  return {
    child,
    url,
    lines,
    async freeze (ms) {
      child.kill('SIGSTOP')
      try {
        await sleep(ms)
      } finally {
        child.kill('SIGCONT')
      }
    }
  }
}
