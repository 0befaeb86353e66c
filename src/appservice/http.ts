/**
 * The appservice HTTP API the homeserver calls. Thin by design: authenticate, de-duplicate,
 * make the transaction durable, answer per the Application Service API spec; events are
 * handled later by the event queue, detached from the request. Transactions, the one hot route,
 * are served by a lean path in front of the express app where it can: on bare sockets
 * (lean-server.ts), else on node:http (lean-transactions.ts); every path goes through the same
 * TransactionSteps, defined here.
 */
import type { RequestListener } from "node:http";
import express, { type ErrorRequestHandler, type Request, type Response, type NextFunction } from "express";
import type { Logger } from "../logging";
import type { Metrics } from "../metrics";
import type { MatrixEvent } from "../store/transactions";
import { RefusalLog, authenticate, tokensEqual } from "./auth";
import { createLeanServer, type LeanServer, type SocketRoute } from "./lean-server";
import { leanTransactionListener, receiveBody, takeTransaction, type Reply, type TransactionSteps } from "./lean-transactions";

export interface AppserviceHandlers {
  /**
   * Durably accepts a transaction; resolves "duplicate" for a replay (txnId and events seen before,
   * not handled again) and "reused_id" for a known txnId with other events (handled as new). `raw`
   * is the body as received (UTF-8 JSON), so it can be stored without serialising the events again.
   */
  onTransaction(txnId: string, events: MatrixEvent[], raw?: Buffer): Promise<"accepted" | "duplicate" | "reused_id">;
  /** Whether the user exists or was just created (user query). */
  onUserQuery(userId: string): Promise<boolean>;
  /** Called when the homeserver pings us (POST /ping). */
  onPing(transactionId: string | undefined): void;
  /** Health document for /health; `ready` decides 200 or 503. Details only for a caller with the metrics token. */
  health(detailed: boolean): { ready: boolean } & Record<string, unknown>;
  metrics(): Promise<{ contentType: string; body: string }>;
}

export interface HttpOptions {
  hsToken: string;
  maxBodyBytes: number;
  logger: Logger;
  metrics: Metrics;
  /**
   * Bearer token that /metrics requires (and that unlocks the details of /health); undefined
   * turns /metrics off. Every agent container reaches this port over loopback.
   */
  metricsToken?: string;
  /** Where refused homeserver requests are counted; default: a one-minute summary on this logger. */
  refusals?: RefusalLog;
}

/** The appservice API, ready to serve. */
export interface AppserviceApp {
  /** Serves a request: transactions on the lean path where it can, everything else on the express app. */
  handle: RequestListener;
  /** The express app alone: every route, transactions included (the lean path's fallback). */
  express: express.Express;
  /**
   * Like express's app.listen: a node:http server running `handle`, whose connections start on
   * bare sockets for the transactions the lean path takes (lean-server.ts).
   */
  listen(port: number, host: string, onListening?: () => void): LeanServer;
}

function matrixError(res: Response, status: number, errcode: string, error: string): void {
  res.status(status).json({ errcode, error });
}

const replyTo =
  (res: Response): Reply =>
  (status, body) =>
    res.status(status).json(body);

const MATRIX_ID = /^[@#!][^\s]+:[^\s]+$/;

export function validateTransactionBody(body: unknown): { ok: true; events: MatrixEvent[] } | { ok: false; error: string } {
  if (!body || typeof body !== "object" || Array.isArray(body)) return { ok: false, error: "Body must be a JSON object" };
  const events = (body as { events?: unknown }).events;
  if (!Array.isArray(events)) return { ok: false, error: "'events' must be an array" };
  for (let i = 0; i < events.length; i++) {
    const ev: unknown = events[i];
    if (!ev || typeof ev !== "object" || Array.isArray(ev)) return { ok: false, error: `events[${i}] must be an object` };
    if (typeof (ev as { type?: unknown }).type !== "string") return { ok: false, error: `events[${i}].type must be a string` };
  }
  return { ok: true, events: events as MatrixEvent[] };
}

export function createAppserviceApp(handlers: AppserviceHandlers, options: HttpOptions): AppserviceApp {
  const app = express();
  app.disable("x-powered-by");
  app.set("etag", false);
  const log = options.logger.child({ module: "appservice-http" });

  const refusals = options.refusals ?? new RefusalLog(log);
  const metricsToken = options.metricsToken;
  /** Only the header: a token in a query string ends up in access logs and shell history. */
  const hasMetricsToken = (req: Request): boolean => {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
    return metricsToken !== undefined && match !== null && tokensEqual(match[1], metricsToken);
  };

  app.get("/health", (req, res) => {
    const doc = handlers.health(hasMetricsToken(req));
    res.status(doc.ready ? 200 : 503).json(doc);
  });
  app.get("/live", (_req, res) => {
    res.json({ live: true });
  });
  app.get("/metrics", (req, res, next) => {
    if (metricsToken === undefined) return matrixError(res, 404, "M_NOT_FOUND", "Metrics are off: set appservice.metricsTokenFile");
    if (!req.headers.authorization) return matrixError(res, 401, "M_MISSING_TOKEN", "Missing token");
    if (!hasMetricsToken(req)) return matrixError(res, 403, "M_FORBIDDEN", "Bad token supplied");
    handlers
      .metrics()
      .then(({ contentType, body }) => res.type(contentType).send(body))
      .catch(next);
  });

  /** A transaction refused after authentication: the homeserver keeps it and retries, so it must not go unseen. */
  const refused = (txnId: string | undefined, status: number, why: string): void => {
    options.metrics.transactions.inc({ result: "rejected" });
    log.warn({ txnId, status }, `transaction refused: ${why}; the homeserver keeps retrying it, and later ones may wait behind it`);
  };
  const steps: TransactionSteps = {
    authorize: (req, path, reply) => {
      const result = authenticate(req, options.hsToken);
      if (result.ok) return true;
      options.metrics.transactions.inc({ result: "unauthorized" });
      refusals.note(result.status, path.split("/").slice(0, 5).join("/"));
      reply(result.status, { errcode: result.errcode, error: result.error });
      return false;
    },
    receive: (txnId, body, raw, reply, fail) => {
      const checked = validateTransactionBody(body);
      if (!checked.ok) {
        refused(txnId, 400, checked.error);
        return reply(400, { errcode: "M_BAD_JSON", error: checked.error });
      }
      handlers
        .onTransaction(txnId, checked.events, raw)
        .then((result) => {
          options.metrics.transactions.inc({ result });
          reply(200, {});
        })
        .catch(fail);
    },
    fail: (err, path, reply) => {
      const { type, message } = (err ?? {}) as { type?: string; message?: string };
      const txnId = /\/transactions\/([^/]+)$/.exec(path)?.[1];
      const refuse = (status: number, errcode: string, error: string): void => {
        if (txnId !== undefined) refused(txnId, status, error);
        reply(status, { errcode, error });
      };
      if (type === "entity.too.large") return refuse(413, "M_TOO_LARGE", `Body exceeds ${options.maxBodyBytes} bytes`);
      if (type === "entity.parse.failed") return refuse(400, "M_NOT_JSON", "Body is not valid JSON");
      if (type === "encoding.unsupported" || type === "charset.unsupported") return refuse(415, "M_UNKNOWN", "Unsupported encoding");
      if (type === "request.aborted") return;
      log.error({ err: message }, "appservice request failed");
      reply(500, { errcode: "M_UNKNOWN", error: "Internal error; the homeserver will retry" });
    },
  };

  const requireToken = (req: Request, res: Response, next: NextFunction): void => {
    if (steps.authorize(req, req.path, replyTo(res))) next();
  };
  const json = express.json({
    limit: options.maxBodyBytes,
    type: () => true,
    strict: false,
    // Kept for the transaction journal (only UTF-8, which is what homeservers send).
    verify: (req, _res, buf) => {
      const charset = /charset=([^;]+)/i
        .exec(String(req.headers["content-type"] ?? ""))?.[1]
        ?.trim()
        .toLowerCase();
      if (!charset || charset === "utf-8" || charset === "utf8") (req as Request & { rawBody?: Buffer }).rawBody = buf;
    },
  });

  const transaction = (req: Request, res: Response, next: NextFunction): void => {
    steps.receive(req.params.txnId, req.body, (req as Request & { rawBody?: Buffer }).rawBody, replyTo(res), next);
  };
  const userQuery = (req: Request, res: Response, next: NextFunction): void => {
    const userId = req.params.userId;
    if (!MATRIX_ID.test(userId) || !userId.startsWith("@")) return matrixError(res, 400, "M_INVALID_PARAM", "Not a user ID");
    handlers
      .onUserQuery(userId)
      .then((exists) => (exists ? res.status(200).json({}) : matrixError(res, 404, "M_NOT_FOUND", "No such user in this namespace")))
      .catch(next);
  };
  const roomQuery = (_req: Request, res: Response): void => {
    // hive-matrix creates its rooms itself; it never provisions rooms on alias lookup.
    matrixError(res, 404, "M_NOT_FOUND", "This appservice does not provide rooms by alias");
  };
  const ping = (req: Request, res: Response): void => {
    const body: unknown = req.body;
    const tid = body && typeof body === "object" ? (body as { transaction_id?: unknown }).transaction_id : undefined;
    handlers.onPing(typeof tid === "string" ? tid : undefined);
    res.status(200).json({});
  };

  for (const prefix of ["/_matrix/app/v1", ""]) {
    app.put(`${prefix}/transactions/:txnId`, requireToken, json, transaction);
    app.get(`${prefix}/users/:userId`, requireToken, userQuery);
    app.get(`${prefix}/rooms/:alias`, requireToken, roomQuery);
  }
  app.post("/_matrix/app/v1/ping", requireToken, json, ping);
  app.all("/_matrix/*", (req, res) => {
    const known = /^\/_matrix\/app\/v1\/(transactions|users|rooms|ping)(\/|$)/.test(req.path);
    if (known) matrixError(res, 405, "M_UNRECOGNIZED", "Method not allowed");
    else matrixError(res, 404, "M_UNRECOGNIZED", "Unrecognized request");
  });

  const errors: ErrorRequestHandler = (err: unknown, req, res, _next) => {
    void _next;
    steps.fail(err, req.path, replyTo(res));
  };
  app.use(errors);

  const parseQuery: unknown = app.get("query parser fn");
  if (typeof parseQuery !== "function") throw new Error("express has no query parser");
  const lean = { maxBodyBytes: options.maxBodyBytes, parseQuery: parseQuery as (query: string) => Request["query"] };
  const handle = leanTransactionListener(steps, lean, app);
  const route: SocketRoute = (method, url, headers) => {
    const take = takeTransaction(method, url, headers, lean);
    // The token is checked from the head, before a byte of the body is kept: a request without the
    // right one goes to node:http, whose listener refuses it (counted and logged there) without
    // reading its body into memory, so nobody but the homeserver makes the socket level buffer.
    if (!take || !authenticate({ headers, query: take.query }, options.hsToken).ok) return undefined;
    return (raw, reply) => receiveBody(steps, take, raw, reply);
  };
  return {
    handle,
    express: app,
    listen: (port, host, onListening) => {
      const server = createLeanServer(handle, route, { maxBodyBytes: options.maxBodyBytes });
      return onListening ? server.listen(port, host, onListening) : server.listen(port, host);
    },
  };
}
