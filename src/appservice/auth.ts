/** hs_token authentication of homeserver → appservice requests. */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import type { Request } from "express";
import type { Logger } from "../logging";

export type AuthResult = { ok: true } | { ok: false; status: 401 | 403; errcode: "M_MISSING_TOKEN" | "M_FORBIDDEN"; error: string };

/** The expected token's digest, computed once per token (it changes only with a reloaded registration). */
let expectedDigest: { token: string; digest: Buffer } | undefined;

/** Constant-time comparison: hashing first makes the lengths equal, so length leaks nothing either. */
export function tokensEqual(presented: string, expected: string): boolean {
  if (expectedDigest?.token !== expected) expectedDigest = { token: expected, digest: createHash("sha256").update(expected).digest() };
  return timingSafeEqual(createHash("sha256").update(presented).digest(), expectedDigest.digest);
}

/**
 * The spec's `Authorization: Bearer` header, the legacy `access_token` query parameter, or both
 * (tuwunel sends both). Every token presented must match: a request carrying one right and one
 * wrong token is refused.
 */
export function authenticate(req: Pick<Request, "headers" | "query">, hsToken: string): AuthResult {
  const presented: string[] = [];
  const header = req.headers.authorization;
  if (typeof header === "string" && header.length > 0) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) return { ok: false, status: 403, errcode: "M_FORBIDDEN", error: "Malformed Authorization header" };
    presented.push(match[1]);
  }
  const query = req.query.access_token;
  if (query !== undefined) {
    if (typeof query !== "string") return { ok: false, status: 403, errcode: "M_FORBIDDEN", error: "Malformed access_token" };
    presented.push(query);
  }
  if (presented.length === 0) return { ok: false, status: 401, errcode: "M_MISSING_TOKEN", error: "Missing token" };
  // Compare every token even after a mismatch, so timing does not tell which one was wrong.
  const results = presented.map((token) => tokensEqual(token, hsToken));
  if (results.every(Boolean)) return { ok: true };
  return { ok: false, status: 403, errcode: "M_FORBIDDEN", error: "Bad token supplied" };
}

export interface RefusalLogOptions {
  /** Length of one summary window; default one minute. */
  intervalMs?: number;
  now?: () => number;
}

/**
 * Warnings about refused homeserver requests, summarised: anything on the host can send requests
 * to the appservice port, and one line per request would let it fill the disk. The first refusal
 * of a window is logged as it happens (so a misconfigured homeserver shows up at once); the rest
 * are counted and logged as one line when the window ends.
 */
export class RefusalLog {
  private readonly intervalMs: number;
  private readonly now: () => number;
  private windowStart: number | undefined;
  private counts = { missing: 0, wrong: 0 };
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Pick<Logger, "warn">,
    options: RefusalLogOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 60_000;
    this.now = options.now ?? Date.now;
  }

  /** Notes one refused request (401: no token; 403: a wrong one). */
  note(status: 401 | 403, path: string): void {
    if (this.windowStart === undefined) {
      this.windowStart = this.now();
      this.log.warn(
        { path, status },
        status === 401
          ? "homeserver request without a token refused"
          : "homeserver request with a wrong hs_token refused: the homeserver's copy of the registration differs from ours",
      );
      this.timer = setTimeout(() => this.flush(), this.intervalMs);
      this.timer.unref();
      return;
    }
    if (status === 401) this.counts.missing++;
    else this.counts.wrong++;
  }

  /** Logs the count of the window (if any was refused after its first) and closes it. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const { missing, wrong } = this.counts;
    const start = this.windowStart;
    this.windowStart = undefined;
    this.counts = { missing: 0, wrong: 0 };
    if (start === undefined || missing + wrong === 0) return;
    this.log.warn(
      { missingToken: missing, wrongToken: wrong, seconds: Math.round((this.now() - start) / 1000) },
      `${missing + wrong} more homeserver request(s) refused for a missing or wrong hs_token since the last warning`,
    );
  }
}

/** Shortest metrics token accepted: it guards an endpoint every local process can reach. */
export const MIN_METRICS_TOKEN_LENGTH = 16;

/**
 * Reads `appservice.metricsTokenFile` (one line). Throws with the file's name and the fix when it
 * cannot be read, is too short, or is readable by every user on the host.
 */
export function loadMetricsToken(path: string): string {
  let text: string;
  try {
    if ((statSync(path).mode & 0o004) !== 0) {
      throw new Error(`metrics token file ${path} is readable by every user; make it 0600 or 0640`);
    }
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!code) throw err;
    throw new Error(`cannot read the metrics token file ${path} (${code}); fix appservice.metricsTokenFile or leave it empty`);
  }
  const token = text.trim();
  if (token.length < MIN_METRICS_TOKEN_LENGTH || /\s/.test(token)) {
    throw new Error(`metrics token file ${path} must hold one token of at least ${MIN_METRICS_TOKEN_LENGTH} characters without spaces`);
  }
  return token;
}
