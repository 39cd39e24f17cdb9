// The edge function's own logger: one JSON line per event, with every
// key-shaped run of text masked the way pg_byok's `byok.redact` masks it
// (core/src/redact.rs), and fields whose names say "secret" dropped. Nothing
// this function logs goes through console.* directly, so nothing it logs can
// carry a key, even an error message that quotes one.

/// What pg_byok masks in free text (core/src/redact.rs), as regular expressions:
/// from `sk-` on when 20+ key characters follow, and any stretch of 40+ key
/// characters (the rest of a key broken by a space, JWT parts, base64 secrets).
const SK_RUN = /sk-[A-Za-z0-9_-]{20,}/g;
const BARE_RUN = /[A-Za-z0-9_-]{40,}/g;
/// A 12+ character stretch right after a mask, separated only by whitespace,
/// quotes or `||`/`+`: the tail of a key pasted across lines.
const TAIL_RUN = /(…[A-Za-z0-9_-]{0,4})([\s'"|+]{1,8})([A-Za-z0-9_-]{12,})/g;

/// `…` and the last 4 characters (`…` alone for fewer than 8), as byok.mask.
export function mask(secret: string): string {
  const s = secret.trim();
  return s.length < 8 ? "…" : "…" + s.slice(-4);
}

/// `text` with every key-shaped run replaced by its mask.
export function redact(text: string): string {
  return text
    .replace(SK_RUN, mask)
    .replace(BARE_RUN, mask)
    .replace(TAIL_RUN, (_all, masked, gap, tail) => masked + gap + mask(tail));
}

/// Field names whose values are never written, whatever they hold.
const SECRET_FIELD = /^(api_?key|key|secret|password|authorization|x-api-key|token|parameters)$/i;

function scrub(value: unknown, depth = 0): unknown {
  if (typeof value === "string") return redact(value);
  if (value === null || typeof value !== "object" || depth > 4) {
    return typeof value === "object" && value !== null ? "[object]" : value;
  }
  if (value instanceof Error) {
    // Only the message and a code: driver errors also carry the query's bound
    // parameters (npm:postgres puts them on `.parameters`), which may be a key.
    const code = (value as { code?: unknown }).code;
    return { error: redact(value.message), ...(typeof code === "string" ? { code } : {}) };
  }
  if (Array.isArray(value)) return value.map((v) => scrub(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = SECRET_FIELD.test(k) ? "[redacted]" : scrub(v, depth + 1);
  }
  return out;
}

export type Fields = Record<string, unknown>;
export type Sink = (line: string) => void;

export class Logger {
  constructor(private readonly sink: Sink = (line) => console.log(line)) {}

  info(msg: string, fields: Fields = {}): void {
    this.write("info", msg, fields);
  }

  warn(msg: string, fields: Fields = {}): void {
    this.write("warn", msg, fields);
  }

  error(msg: string, fields: Fields = {}): void {
    this.write("error", msg, fields);
  }

  private write(level: string, msg: string, fields: Fields): void {
    const record = {
      at: new Date().toISOString(),
      level,
      msg: redact(msg),
      ...(scrub(fields) as Fields),
    };
    // Redact the serialised line once more: JSON escaping could have split
    // nothing, but a value built from several fields could join two halves.
    this.sink(redact(JSON.stringify(record)));
  }
}
