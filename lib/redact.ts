// Credentials must never leave the process: every URL, token and password is
// redacted here, at the boundary, before it reaches a log line, an error
// message or a health body. Library error text (ioredis, @upstash/redis,
// fetch) can carry URLs and command bodies, so messages are scrubbed too.
//
// Commands carry what users sent (cache values, job data, user ids) and our
// Lua source: an error about a command leaves with Redis's own words only.
// The tier adapters reduce errors as they come out of the client libraries
// (reduceRedisError); redactError and redactText strip the same text again as
// a safety net for any error that reached us another way.

const MASK = '***'

/** `redis://user:secret@host:6379/0` -> `redis://user:***@host:6379/0`; query strings are dropped. */
export function redactUrl (raw: string): string {
  try {
    const url = new URL(raw)
    if (url.password) url.password = MASK
    else if (url.username && url.protocol.startsWith('redis')) url.username = MASK // `redis://:token@` puts the secret first
    url.search = ''
    url.hash = ''
    return url.toString()
  } catch {
    return scrubText(raw)
  }
}

/**
 * Remove every known secret from free text, then anything that looks like a
 * credential even when we did not know it (userinfo in URLs, bearer tokens,
 * token query parameters).
 */
export function redactText (text: string, secrets: readonly string[] = []): string {
  let out = text
  for (const secret of secrets) {
    if (secret.length >= 3) out = out.split(secret).join(MASK)
  }
  return scrubText(out)
}

// @upstash/redis ends its message with `, command was: [...]` (the whole command as JSON);
// Redis quotes the first arguments of an unknown command (`, with args beginning with: ...`).
// Everything from there to the end goes: a JSON string may hold any character.
const COMMAND_TEXT = /,? ?(?:command was:|with args beginning with:)[\s\S]*$/i

/** Redis's words about a failed command without the command: no argument, key, script or payload. */
export function withoutCommand (text: string): string {
  return text.replace(COMMAND_TEXT, '')
}

/** The innermost error code (fetch wraps socket errors in `cause`). */
function codeOf (err: Error): string | undefined {
  let current: unknown = err
  let code: string | undefined
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    const c = (current as { code?: unknown }).code
    if (typeof c === 'string' && c !== '') code = c
    current = (current as { cause?: unknown }).cause
  }
  return code
}

/**
 * An error from a Redis client reduced to what Redis said: name, code and message. Dropped: the
 * command text in the message, ioredis's `command` property ({ name, args }, which a logger's
 * error serializer would print), `cause` and the original stack (ioredis's friendly stacks).
 */
export function reduceRedisError (err: unknown): Error & { code?: string } {
  const source = err instanceof Error ? err : new Error(String(err))
  const code = codeOf(source)
  const message = withoutCommand(source.message)
  const reduced: Error & { code?: string } = new Error(code !== undefined && !message.includes(code) ? `${message} (${code})` : message)
  reduced.name = source.name
  if (code !== undefined) reduced.code = code
  return reduced
}

function scrubText (text: string): string {
  return withoutCommand(text)
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/)([^\s/@:]*):([^\s/@]*)@/gi, (_m, scheme: string, user: string) => `${scheme}${user}:${MASK}@`)
    .replace(/(\b[a-z][a-z0-9+.-]*:\/\/)([^\s/@:]+)@/gi, (_m, scheme: string) => `${scheme}${MASK}@`)
    .replace(/\b(bearer)\s+[^\s"',]+/gi, `$1 ${MASK}`)
    .replace(/([?&](?:_token|token|password)=)[^&\s]+/gi, `$1${MASK}`)
}

/** An Error whose message is safe to log and return; keeps `code` for diagnosis. */
export function redactError (err: unknown, secrets: readonly string[] = []): Error & { code?: string } {
  const source = err instanceof Error ? err : new Error(String(err))
  const safe: Error & { code?: string } = new Error(redactText(source.message, secrets))
  safe.name = source.name
  const code = (source as { code?: unknown }).code
  if (typeof code === 'string') safe.code = code
  return safe
}

/**
 * `text` without the address of a Redis (`endpoint`, the redacted address that `variable` holds):
 * the endpoint, its host:port and its host become "the Redis in <variable>". For what is said to
 * callers who may not know where the database is (a host's /health, 503 bodies, feature reasons).
 */
export function concealEndpoint (text: string, endpoint: string | null, variable: string | null): string {
  if (endpoint === null || endpoint === '') return text
  const named = `the Redis in ${variable ?? 'its variable'}`
  const forms = [`${endpoint} (${variable ?? ''})`, endpoint]
  try {
    const { hostname, port } = new URL(endpoint)
    if (hostname !== '') forms.push(...(port !== '' ? [`${hostname}:${port}`] : []), hostname)
  } catch { /* not a URL: the endpoint itself is all there is to hide */ }
  return forms.reduce((out, form) => out.split(form).join(named), text)
}
