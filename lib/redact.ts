// Credentials must never leave the process: every URL, token and password is
// redacted here, at the boundary, before it reaches a log line, an error
// message or a health body. Library error text (ioredis, @upstash/redis,
// fetch) can carry URLs and command bodies, so messages are scrubbed too.

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

function scrubText (text: string): string {
  return text
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
