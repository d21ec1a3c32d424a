import http from 'node:http'

// N streaming clients spread over C channels, in their own process. Reports
// { connected } once every stream is open, then, on { cmd: 'report' }, how many
// events arrived and the publish-to-receive latencies; { cmd: 'reset' } starts over.

const [port, count, channels] = process.argv.slice(2).map(Number)
const latencies: number[] = []
let received = 0
let lastAt = 0
let connected = 0
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity })

// Every 10th client parses frames and records latencies; the others only count
// them, so that this process (the load generator) is not what limits the figures.
const SAMPLE_EVERY = 10

for (let i = 0; i < count; i++) {
  const sampled = i % SAMPLE_EVERY === 0
  const req = http.get({ host: '127.0.0.1', port, path: `/events/public:bench${i % channels}`, agent, headers: { accept: 'text/event-stream' } }, (res) => {
    connected++
    if (connected === count) process.send?.({ connected })
    let buffer = ''
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => {
      buffer += chunk
      let end: number
      let start = 0
      while ((end = buffer.indexOf('\n\n', start)) >= 0) {
        const frame = buffer.slice(start, end)
        start = end + 2
        const at = frame.indexOf('data: ')
        if (at < 0) continue // retry: or a heartbeat comment
        received++
        lastAt = performance.timeOrigin + performance.now()
        if (sampled) latencies.push(lastAt - (JSON.parse(frame.slice(at + 6)) as { t: number }).t)
      }
      buffer = buffer.slice(start)
    })
  })
  req.on('error', (err) => process.send?.({ error: err.message }))
}

process.on('message', (message: { cmd: string }) => {
  if (message.cmd === 'reset') {
    latencies.length = 0
    received = 0
    process.send?.({ reset: true })
    return
  }
  if (message.cmd !== 'report') return
  const sorted = [...latencies].sort((a, b) => a - b)
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN
  process.send?.({ received, lastAt, p50: at(0.5), p99: at(0.99) })
})

process.on('disconnect', () => process.exit(0)) // the bench runner is gone: never linger
