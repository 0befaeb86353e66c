/**
 * The one layer through which hive-matrix talks HTTP to the homeserver. It owns authentication
 * (the as_token, or an agent's own token), appservice impersonation (`user_id`), timeouts,
 * retries with backoff on network errors, 5xx and 429, metrics, and error mapping to the SDK's
 * `MatrixError`. Nothing else in the code base talks HTTP to the homeserver.
 *
 * A thousand agents make thousands of requests, so the client is the cheapest that does the job:
 * on bare sockets for an `http:` homeserver (lean-client.ts), node:https for an `https:` one; never
 * fetch, which costs several times node:http's CPU per request (measured in `npm run bench`).
 * Connections are kept alive and pooled (a connect and close per request cost hive-matrix and the
 * homeserver as much again).
 *
 * A failure after a request was written cannot tell whether the homeserver applied it: a homeserver
 * that restarts may have handled a request on a pooled connection and died before answering. So a
 * POST is sent again only when it cannot have reached the server (connection refused, 429) or when
 * its caller says that repeating it changes nothing (`idempotent`, e.g. /join).
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { MatrixError } from "matrix-bot-sdk";
import type { Logger } from "../logging";
import type { Metrics } from "../metrics";
import { LeanHttpClient, NetworkError } from "./lean-client";

export type QueryValue = string | number | boolean | undefined | null;

export interface RequestOptions {
  query?: Record<string, QueryValue>;
  body?: unknown;
  /** Act as this user of the appservice namespace (`?user_id=`). */
  asUser?: string;
  /** Authenticate with this token instead of the as_token (e.g. an agent's own access token). */
  accessToken?: string | null;
  timeoutMs?: number;
  /**
   * When to retry: "auto" retries idempotent requests on any transient failure and other POSTs only
   * when the request cannot have been applied (connection refused, 429); "never" makes one attempt.
   */
  retry?: "auto" | "never";
  /**
   * Whether sending the request again after it may already have been applied changes nothing.
   * True for every method but POST; a POST such as /join or /invite says so here.
   */
  idempotent?: boolean;
  /** Label for the writes metric; derived from the route when omitted. */
  kind?: string;
}

export class HomeserverUnreachableError extends Error {
  constructor(
    readonly url: string,
    readonly reason: string,
  ) {
    super(`homeserver unreachable (${reason})`);
    this.name = "HomeserverUnreachableError";
  }
}

export class OutsideNamespaceError extends Error {
  constructor(readonly userId: string) {
    super(`refusing to act as ${userId}: the user is outside the appservice's namespace`);
    this.name = "OutsideNamespaceError";
  }
}

export interface TransportOptions {
  baseUrl: string;
  asToken: string;
  timeoutMs: number;
  maxRetries: number;
  /** Most connections open to the homeserver at once; further requests wait for a free one. */
  maxSockets?: number;
  logger: Logger;
  metrics: Metrics;
  /**
   * The registration's user namespace. Acting as (`user_id=`) anyone outside it is refused before
   * a request leaves, so no bug elsewhere can make the service speak for a user it does not own.
   * A function, because a reloaded registration may change it while the service runs.
   */
  userNamespaces?: () => readonly RegExp[];
  /** Told whether the homeserver answered (any HTTP response) or could not be reached (after retries). */
  onReachability?: (reachable: boolean) => void;
  /** Injected in unit tests to avoid real waiting. */
  sleep?: (ms: number) => Promise<void>;
  /**
   * The HTTP client for an `http:` homeserver: "lean" (lean-client.ts, the default) or node:http
   * ("node", kept as the reference the lean client is tested against). `https:` always uses node:https.
   */
  client?: "lean" | "node";
}

const defaultSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Idle pooled connections are not used after this (node's agent closes them then; the lean client
 * closes them when it next looks for a connection, and they never keep the process alive): well
 * before the homeserver closes them (Synapse after 60 s, twisted's default; tuwunel after 30 s,
 * hyper's header-read timeout), so that a request seldom meets a connection the server is closing
 * at that moment.
 */
const IDLE_SOCKET_MS = 4000;

interface RawResponse {
  status: number;
  statusText: string;
  headers: IncomingHttpHeaders | Record<string, string>;
  text: string;
}

/** Replaces IDs in a path so that metric labels stay bounded: /rooms/!x:y/state/m.room.name/ → /rooms/:id/state/m.room.name/:key */
export function routeTemplate(path: string): string {
  const out: string[] = [];
  const segments = path.split("?")[0].split("/");
  segments.forEach((raw, i) => {
    let seg = raw;
    try {
      seg = decodeURIComponent(raw);
    } catch {
      /* keep the raw segment */
    }
    const twoBack = out[out.length - 2];
    if (/^[!@#$]/.test(seg)) out.push(":id");
    else if (twoBack === "send") out.push(":txn");
    else if (twoBack === "state" && i === segments.length - 1) out.push(":key");
    else out.push(seg);
  });
  return out.join("/");
}

function isTransientStatus(status: number): boolean {
  return status >= 500 || status === 429;
}

export class HomeserverTransport {
  readonly baseUrl: string;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly agent: HttpAgent;
  private readonly lean: LeanHttpClient | undefined;

  constructor(private readonly options: TransportOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.sleep = options.sleep ?? defaultSleep;
    // `timeout` closes idle pooled connections; a request in progress has its own timer (send()).
    const agentOptions = { keepAlive: true, timeout: IDLE_SOCKET_MS, maxSockets: options.maxSockets ?? Infinity };
    this.agent = this.baseUrl.startsWith("https:") ? new HttpsAgent(agentOptions) : new HttpAgent(agentOptions);
    const url = new URL(this.baseUrl);
    if (url.protocol === "http:" && (options.client ?? "lean") === "lean")
      this.lean = new LeanHttpClient(url, { maxSockets: options.maxSockets ?? Infinity, idleMs: IDLE_SOCKET_MS });
  }

  /** Closes idle connections (at shutdown). */
  close(): void {
    this.agent.destroy();
    this.lean?.close();
  }

  private send(
    url: URL,
    method: string,
    headers: Record<string, string>,
    payload: string | undefined,
    timeoutMs: number,
  ): Promise<RawResponse> {
    if (this.lean) return this.lean.send(method, url.pathname + url.search, headers, payload, timeoutMs);
    const requestFn = url.protocol === "https:" ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      let settled = false;
      let responded = false;
      const fail = (reason: string, unsent: boolean, stale = false): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(new NetworkError(reason, unsent, stale));
      };
      if (payload !== undefined) headers["Content-Length"] = String(Buffer.byteLength(payload));
      const req = requestFn(url, { method, headers, agent: this.agent }, (res) => {
        responded = true;
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("error", () => fail("ECONNRESET", false));
        // Closed before the end of the body (a no-op after "end").
        res.on("close", () => fail("ECONNRESET", false));
        res.on("end", () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          resolve({
            status: res.statusCode ?? 0,
            statusText: res.statusMessage ?? "",
            headers: res.headers,
            text: Buffer.concat(chunks).toString("utf8"),
          });
        });
      });
      const timer = setTimeout(() => {
        fail("timeout", false);
        req.destroy();
      }, timeoutMs);
      req.on("error", (err: NodeJS.ErrnoException) => {
        const code = err.code ?? err.message;
        // Refused: nothing reached the server. A reset on a reused connection before any answer is
        // no such proof: the server may have closed it while idle, before reading this request (node's
        // docs on `request.reusedSocket`), or read and applied the request and then gone away (a
        // homeserver restart; a /register repeated then answers M_USER_IN_USE for our own new user).
        fail(code, code === "ECONNREFUSED", req.reusedSocket && !responded);
      });
      req.end(payload);
    });
  }

  async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    if (opts.asUser && this.options.userNamespaces && !this.options.userNamespaces().some((r) => r.test(opts.asUser ?? ""))) {
      throw new OutsideNamespaceError(opts.asUser);
    }
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) {
      if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
    }
    if (opts.asUser) url.searchParams.set("user_id", opts.asUser);
    const token = opts.accessToken === undefined ? this.options.asToken : opts.accessToken;
    const headers: Record<string, string> = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let payload: string | undefined;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(opts.body);
    }
    const route = routeTemplate(path);
    const idempotent = opts.idempotent ?? method !== "POST";
    const retryMode = opts.retry ?? "auto";
    const started = process.hrtime.bigint();
    if (method !== "GET") this.options.metrics.homeserverWrites.inc({ kind: opts.kind ?? `${method} ${route}` });

    for (let attempt = 0; ; attempt++) {
      let response: RawResponse;
      try {
        response = await this.send(url, method, { ...headers }, payload, opts.timeoutMs ?? this.options.timeoutMs);
      } catch (err) {
        const reason = err instanceof NetworkError ? err.reason : networkReason(err);
        this.options.metrics.homeserverRequests.inc({ method, route, outcome: "network" });
        // A request that never reached the server is safe to repeat, even a POST.
        const safe = idempotent || (err instanceof NetworkError && err.unsent);
        if (retryMode === "auto" && safe && attempt < this.options.maxRetries) {
          this.options.metrics.homeserverRetries.inc({ reason: "network" });
          // A pooled connection the server had closed says nothing about the server: the first retry
          // goes out at once, on another connection. After that, the server is in trouble: back off.
          const delay = err instanceof NetworkError && err.stale && attempt === 0 ? 0 : backoff(attempt);
          this.options.logger.debug({ method, route, reason, attempt, delay }, "homeserver request failed, retrying");
          if (delay > 0) await this.sleep(delay);
          continue;
        }
        this.observe(method, route, started);
        this.options.onReachability?.(false);
        throw new HomeserverUnreachableError(this.baseUrl, reason);
      }
      const text = response.text;
      const ok = response.status >= 200 && response.status < 300;
      this.options.onReachability?.(true);
      this.options.metrics.homeserverRequests.inc({ method, route, outcome: String(response.status) });
      if (ok) {
        this.observe(method, route, started);
        return (text ? JSON.parse(text) : {}) as T;
      }
      let body: Record<string, unknown>;
      try {
        const parsed: unknown = JSON.parse(text);
        body = parsed && typeof parsed === "object" ? (parsed as Record<string, unknown>) : {};
      } catch {
        body = {};
      }
      if (typeof body.errcode !== "string") {
        body = { errcode: "M_UNKNOWN", error: `HTTP ${response.status} ${response.statusText}`.trim() };
      }
      const headerRecord: Record<string, string> = {};
      for (const [key, value] of Object.entries(response.headers)) {
        if (value !== undefined) headerRecord[key] = Array.isArray(value) ? value.join(", ") : value;
      }
      const transient = isTransientStatus(response.status);
      const safe = idempotent || response.status === 429;
      if (retryMode === "auto" && transient && safe && attempt < this.options.maxRetries) {
        const delay = response.status === 429 ? (retryAfter(body, headerRecord) ?? backoff(attempt)) : backoff(attempt);
        this.options.metrics.homeserverRetries.inc({ reason: response.status === 429 ? "429" : "5xx" });
        this.options.logger.debug(
          { method, route, status: response.status, attempt, delay },
          "homeserver answered with a transient error, retrying",
        );
        await this.sleep(delay);
        continue;
      }
      this.observe(method, route, started);
      throw new MatrixError(body as { errcode: string; error: string }, response.status, headerRecord);
    }
  }

  private observe(method: string, route: string, started: bigint): void {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    this.options.metrics.homeserverLatency.observe({ method, route }, seconds);
  }
}

/** Exponential backoff with jitter: 250 ms, 500 ms, 1 s … capped at 10 s. */
export function backoff(attempt: number): number {
  const base = Math.min(10_000, 250 * 2 ** attempt);
  return Math.round(base / 2 + Math.random() * (base / 2));
}

function retryAfter(body: Record<string, unknown>, headers: Record<string, string>): number | undefined {
  if (typeof body.retry_after_ms === "number") return Math.min(60_000, body.retry_after_ms);
  const header = headers["retry-after"];
  if (header) {
    const ms = MatrixError.parseRetryAfterHeader(header);
    if (Number.isFinite(ms)) return Math.min(60_000, Math.max(0, ms));
  }
  return undefined;
}

function networkReason(err: unknown): string {
  // Duck-typed: errors from undici may come from another realm (e.g. under jest), where instanceof fails.
  if (err && typeof err === "object") {
    const e = err as { name?: string; message?: string; cause?: { code?: string; errors?: { code?: string }[] } };
    if (e.name === "TimeoutError" || e.name === "AbortError") return "timeout";
    const code = e.cause?.code ?? e.cause?.errors?.find((x) => x.code)?.code;
    if (code) return code;
    if (e.message) return e.message;
  }
  return String(err);
}

export function isMatrixError(err: unknown, errcode?: string): err is MatrixError {
  return err instanceof MatrixError && (errcode === undefined || err.errcode === errcode);
}
