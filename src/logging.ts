/**
 * pino logging with two layers of secret protection: key-based redaction for the fields that
 * carry tokens, and a scrubber that replaces every registered secret value wherever it appears
 * in a log line (a URL, an error message from a library), so a token cannot leak by accident.
 */
import pino, { type Logger } from "pino";

export type { Logger };

const REDACTED = "[redacted]";

const SECRET_KEYS = [
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
];

export class SecretScrubber {
  private readonly secrets = new Set<string>();
  private pattern: RegExp | null = null;

  /** Remembers a secret so that it is replaced in every later log line. Short values are refused. */
  add(secret: string | undefined | null): void {
    if (!secret || secret.length < 8 || this.secrets.has(secret)) return;
    this.secrets.add(secret);
    const escaped = [...this.secrets].sort((a, b) => b.length - a.length).map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    this.pattern = new RegExp(escaped.join("|"), "g");
  }

  scrub(line: string): string {
    return this.pattern ? line.replace(this.pattern, REDACTED) : line;
  }
}

export interface LoggerOptions {
  level?: string;
  pretty?: boolean;
  /** Where lines go; defaults to stdout. Tests pass a stream to capture and inspect them. */
  destination?: NodeJS.WritableStream;
  scrubber?: SecretScrubber;
}

export function createLogger(options: LoggerOptions = {}): { logger: Logger; scrubber: SecretScrubber } {
  const scrubber = options.scrubber ?? new SecretScrubber();
  const redact = {
    paths: [...SECRET_KEYS, ...SECRET_KEYS.map((k) => `*.${k}`), ...SECRET_KEYS.map((k) => `*.*.${k}`)],
    censor: REDACTED,
  };
  const hooks = { streamWrite: (line: string) => scrubber.scrub(line) };
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
    { level: options.level ?? "info", redact, hooks, base: { name: "hive-matrix" } },
    (destination ?? pino.destination({ sync: false })) as pino.DestinationStream,
  );
  return { logger, scrubber };
}

/** Errors as short log fields: message and code, no stack for expected failures. */
export function errorFields(err: unknown): { err: string; errcode?: string; status?: number } {
  if (err && typeof err === "object") {
    const e = err as { message?: string; errcode?: string; statusCode?: number; code?: string };
    return { err: e.message ?? String(err), errcode: e.errcode ?? e.code, status: e.statusCode };
  }
  return { err: String(err) };
}
