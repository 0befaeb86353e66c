/**
 * pino logging with two layers of secret protection: key-based redaction for the fields that
 * carry tokens, and a scrubber that replaces every registered secret value wherever it appears
 * in a log line (a URL, an error message from a library), so a token cannot leak by accident.
 */
import pino, { type Logger } from "pino";

export type { Logger };

const REDACTED = "[redacted]";

const SECRET_KEYS = new Set([
  "as_token",
  "hs_token",
  "access_token",
  "accessToken",
  "asToken",
  "hsToken",
  "token",
  "password",
  "registration_shared_secret",
  "authorization",
  "Authorization",
]);

/**
 * The fields a log line may carry, with every value under a secret key replaced, at the top level
 * and two levels down (where a request's options or an error's details put them). The caller's
 * objects are never changed: a level holding a secret key is copied. pino's `redact` option would
 * do the same with wildcard paths (`*.*.token`), at seven times the cost of a whole log line.
 */
export function redactSecretKeys(fields: Record<string, unknown>, depth = 0): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const key of Object.keys(fields)) {
    const value = fields[key];
    let next = value;
    if (SECRET_KEYS.has(key)) next = REDACTED;
    else if (depth < 2 && value !== null && typeof value === "object" && !(value instanceof Date) && !Buffer.isBuffer(value)) {
      next = redactSecretKeys(value as Record<string, unknown>, depth + 1);
    }
    if (next !== value) {
      out ??= Array.isArray(fields) ? ([...fields] as unknown as Record<string, unknown>) : { ...fields };
      out[key] = next;
    }
  }
  return out ?? fields;
}

/** Secrets shorter than this are refused: they would match ordinary words. */
const MIN_SECRET = 8;

/** Multiplier of the rolling hash over MIN_SECRET characters, and its (MIN_SECRET - 1)th power mod 2^32. */
const HASH_BASE = 0x01000193;
const HASH_TOP = Array.from({ length: MIN_SECRET - 1 }).reduce<number>((p) => Math.imul(p, HASH_BASE), 1);

/** The rolling hash of `text.slice(end - MIN_SECRET, end)`, computed directly. */
function windowHash(text: string, end: number): number {
  let h = 0;
  for (let i = end - MIN_SECRET; i < end; i++) h = (Math.imul(h, HASH_BASE) + text.charCodeAt(i)) | 0;
  return h;
}

/**
 * Replaces every registered secret wherever it appears in a line. A hive registers one access
 * token per agent, so both costs are independent of how many there are: `add` is O(1) (no pattern
 * to rebuild), and `scrub` looks up the last MIN_SECRET characters ending at each position of the
 * line, comparing whole secrets only where such a tail matches. Every log line goes through it,
 * and hardly any holds a secret: the tails are screened by a rolling hash (a number updated per
 * character, no substring made), and only a hash that some secret's tail has is looked up.
 */
export class SecretScrubber {
  /** Secrets by their last MIN_SECRET characters (random in every token format we meet). */
  private readonly byTail = new Map<string, string[]>();
  /** The rolling hashes of those tails. */
  private readonly tailHashes = new Set<number>();

  /** Remembers a secret so that it is replaced in every later log line. Short values are refused. */
  add(secret: string | undefined | null): void {
    if (!secret || secret.length < MIN_SECRET) return;
    const tail = secret.slice(-MIN_SECRET);
    const list = this.byTail.get(tail);
    if (!list) {
      this.byTail.set(tail, [secret]);
      this.tailHashes.add(windowHash(tail, MIN_SECRET));
    } else if (!list.includes(secret)) {
      list.push(secret);
      // Longest first: a secret that ends another one is replaced whole.
      list.sort((a, b) => b.length - a.length);
    }
  }

  scrub(line: string): string {
    if (this.byTail.size === 0 || line.length < MIN_SECRET) return line;
    // Matches as [start, end), found by their end; the longest wins where two overlap.
    const found: [number, number][] = [];
    let h = windowHash(line, MIN_SECRET);
    for (let end = MIN_SECRET; end <= line.length; end++) {
      if (end > MIN_SECRET) {
        h = (Math.imul(h - Math.imul(line.charCodeAt(end - MIN_SECRET - 1), HASH_TOP), HASH_BASE) + line.charCodeAt(end - 1)) | 0;
      }
      if (!this.tailHashes.has(h)) continue;
      const candidates = this.byTail.get(line.slice(end - MIN_SECRET, end));
      if (!candidates) continue;
      const secret = candidates.find((s) => s.length <= end && line.startsWith(s, end - s.length));
      if (!secret) continue;
      const start = end - secret.length;
      while (found.length > 0 && found[found.length - 1][0] >= start) found.pop();
      if (found.length > 0 && found[found.length - 1][1] > start) found[found.length - 1][1] = end;
      else found.push([start, end]);
    }
    if (found.length === 0) return line;
    let out = "";
    let at = 0;
    for (const [start, end] of found) {
      out += line.slice(at, start) + REDACTED;
      at = end;
    }
    return out + line.slice(at);
  }
}

/** pino's numeric levels of the lines the ring keeps. */
export const LOG_LEVELS = { warn: 40, error: 50, fatal: 60 } as const;

/**
 * The last warnings and errors, for `!hive log`: the very lines the log destination gets, after
 * redaction and scrubbing, so the room never shows more than the log file does. Bounded, so a
 * flood of warnings costs a fixed amount of memory.
 */
export class LogRing {
  private readonly lines: string[] = [];
  private next = 0;

  constructor(readonly capacity = 200) {}

  /** Keeps `line` when it is a warning or worse; called with every scrubbed line. */
  offer(line: string): void {
    // pino writes the level first: no need to parse every line to know.
    const m = /^\{"level":(\d+)/.exec(line);
    if (!m || Number(m[1]) < LOG_LEVELS.warn) return;
    if (this.lines.length < this.capacity) this.lines.push(line);
    else this.lines[this.next] = line;
    this.next = (this.next + 1) % this.capacity;
  }

  /** The last `n` lines at `minLevel` or above, oldest first. */
  recent(minLevel: number, n: number): string[] {
    const ordered = this.lines.length < this.capacity ? this.lines : [...this.lines.slice(this.next), ...this.lines.slice(0, this.next)];
    const wanted = ordered.filter((line) => Number(/^\{"level":(\d+)/.exec(line)?.[1] ?? 0) >= minLevel);
    return n > 0 ? wanted.slice(-n) : [];
  }
}

/**
 * The ring of each logger made by createLogger. Looked up by the service from the logger it is
 * given, so that every embedder (CLI, dev hive, benchmarks, tests) gets `!hive log` without
 * passing one more object around.
 */
const rings = new WeakMap<Logger, LogRing>();

export function logRingOf(logger: Logger): LogRing | undefined {
  return rings.get(logger);
}

export interface LoggerOptions {
  level?: string;
  pretty?: boolean;
  /** Where lines go; defaults to stdout. Tests pass a stream to capture and inspect them. */
  destination?: NodeJS.WritableStream;
  scrubber?: SecretScrubber;
  ring?: LogRing;
}

export function createLogger(options: LoggerOptions = {}): { logger: Logger; scrubber: SecretScrubber; ring: LogRing } {
  const scrubber = options.scrubber ?? new SecretScrubber();
  const ring = options.ring ?? new LogRing();
  const hooks = {
    streamWrite: (line: string) => {
      const scrubbed = scrubber.scrub(line);
      ring.offer(scrubbed);
      return scrubbed;
    },
  };
  let destination = options.destination;
  if (!destination && options.pretty) {
    try {
      // pino-pretty is a dev dependency: in production builds JSON lines are the fallback.
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const pretty = require("pino-pretty") as (opts: object) => NodeJS.WritableStream;
      destination = pretty({ colorize: process.stdout.isTTY, translateTime: "SYS:HH:MM:ss.l", ignore: "pid,hostname" });
    } catch {
      destination = undefined;
    }
  }
  const logger = pino(
    {
      level: options.level ?? "info",
      // Top-level keys by pino's redact, which also covers child loggers' bindings (cheap without
      // wildcards); the fields of each line, nested ones included, by redactSecretKeys.
      redact: { paths: [...SECRET_KEYS], censor: REDACTED },
      formatters: { log: (fields: Record<string, unknown>) => redactSecretKeys(fields) },
      hooks,
      base: { name: "hive-matrix" },
    },
    // Synchronous: one write(2) per line on the event loop. The service logs a few lines a second at
    // most; an asynchronous destination would hand each line to a worker thread and wake the loop
    // again when it is written (two thread switches a line, measured in `npm run bench` fleet), and
    // a crash could lose the last lines.
    (destination ?? pino.destination({ sync: true })) as pino.DestinationStream,
  );
  rings.set(logger, ring);
  return { logger, scrubber, ring };
}

/** Errors as short log fields: message and code, no stack for expected failures. */
export function errorFields(err: unknown): { err: string; errcode?: string; status?: number } {
  if (err && typeof err === "object") {
    const e = err as { message?: string; errcode?: string; statusCode?: number; code?: string };
    return { err: e.message ?? String(err), errcode: e.errcode ?? e.code, status: e.statusCode };
  }
  return { err: String(err) };
}

export interface LogEntry {
  /** Milliseconds since the epoch. */
  at: number;
  level: keyof typeof LOG_LEVELS;
  message: string;
  /** The line's other fields (module, err, roomId, …), as logged: redacted and scrubbed. */
  fields: Record<string, unknown>;
}

const BASE_FIELDS = new Set(["level", "time", "msg", "pid", "hostname", "name"]);

/** A JSON log line as an entry; undefined for anything else. */
export function parseLogLine(line: string): LogEntry | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return undefined;
  const record = raw as Record<string, unknown>;
  const n = typeof record.level === "number" ? record.level : 0;
  const level = n >= LOG_LEVELS.fatal ? "fatal" : n >= LOG_LEVELS.error ? "error" : n >= LOG_LEVELS.warn ? "warn" : undefined;
  if (!level) return undefined;
  const fields = Object.fromEntries(Object.entries(record).filter(([k]) => !BASE_FIELDS.has(k)));
  return {
    at: typeof record.time === "number" ? record.time : 0,
    level,
    message: typeof record.msg === "string" ? record.msg : "",
    fields,
  };
}
