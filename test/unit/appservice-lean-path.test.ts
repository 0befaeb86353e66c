/**
 * The lean transaction path against the express app it stands in front of: every request below
 * goes to a server running the full listener (createAppserviceApp's `handle`) and to one running
 * the express app alone, and both must answer alike (status, headers that matter, body), hand the
 * handler the same txnId, events and raw body, count the same metrics and log the same lines.
 * Each case also says whether the lean path takes it or hands it to express, and what the answer is.
 */
import { connect } from "node:net";
import { createServer, type Server } from "node:http";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { createAppserviceApp } from "../../src/appservice/http";
import { RefusalLog } from "../../src/appservice/auth";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import type { MatrixEvent } from "../../src/store/transactions";
import { captureLogs } from "../support/logs";
import { until } from "../support/wait";

const HS_TOKEN = "t".repeat(64);
const LIMIT = 2000;

interface Call {
  txnId: string;
  events: MatrixEvent[];
  raw: string | undefined;
}

interface Target {
  server: Server;
  /** Requests answered on bare sockets (the socket-level target only). */
  socketAnswered: () => number;
  port: number;
  calls: Call[];
  logs: string[];
  metrics: Metrics;
  /** Requests the express app saw (the lean path handed them on, or they are not transactions). */
  expressSaw: number;
}

/** "socket": app.listen, as the service serves; "listener": the lean node:http listener; "express": the express app alone. */
async function startTarget(kind: "socket" | "listener" | "express"): Promise<Target> {
  const { lines, destination } = captureLogs();
  const { logger } = createLogger({ level: "debug", destination });
  const metrics = new Metrics();
  const calls: Call[] = [];
  const app = createAppserviceApp(
    {
      onTransaction: (txnId, events, raw) => {
        if (txnId === "explode") return Promise.reject(new Error("the disk is on fire"));
        if (txnId === "throw") throw new Error("a handler that throws before it returns a promise");
        calls.push({ txnId, events, raw: raw?.toString("base64") });
        return Promise.resolve("accepted");
      },
      onUserQuery: async () => false,
      onPing: () => undefined,
      health: () => ({ ready: true }),
      metrics: async () => ({ contentType: "text/plain", body: "" }),
    },
    { hsToken: HS_TOKEN, maxBodyBytes: LIMIT, logger, metrics, refusals: new RefusalLog(logger) },
  );
  const target = { calls, logs: lines, metrics, expressSaw: 0 } as Omit<Target, "server" | "port">;
  // express's app(req, res) calls app.handle: counting there shows which path answered.
  const inner = app.express as unknown as { handle: (...args: unknown[]) => void };
  const handle = inner.handle.bind(inner);
  inner.handle = (...args) => {
    target.expressSaw++;
    handle(...args);
  };
  let server: Server;
  let socketAnswered = (): number => 0;
  if (kind === "socket") {
    const lean = app.listen(0, "127.0.0.1");
    socketAnswered = () => lean.leanStats.answered;
    server = lean;
  } else server = createServer(kind === "listener" ? app.handle : app.express).listen(0, "127.0.0.1");
  await new Promise<void>((resolve) => (server.listening ? resolve() : server.once("listening", resolve)));
  return Object.assign(target, { server, socketAnswered, port: (server.address() as { port: number }).port });
}

interface RawRequest {
  method?: string;
  path: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Sends the body in chunks of this many bytes (Transfer-Encoding: chunked, no Content-Length). */
  chunked?: number;
  /** Leaves out Content-Length: a request without a body. */
  noBody?: boolean;
  /** Declares this Content-Length, sends part of the body and closes the connection. */
  abortAfter?: number;
}

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One request on its own connection, written byte for byte (fetch would normalise what is tested here). */
function send(port: number, r: RawRequest): Promise<RawResponse | undefined> {
  const body = Buffer.from(r.body ?? "");
  const headers: Record<string, string> = { Host: "127.0.0.1", Connection: "close", ...(r.headers ?? {}) };
  if (r.chunked) headers["Transfer-Encoding"] = "chunked";
  else if (r.abortAfter !== undefined) headers["Content-Length"] = String(body.length);
  else if (!r.noBody) headers["Content-Length"] = String(body.length);
  const head = [`${r.method ?? "PUT"} ${r.path} HTTP/1.1`, ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), "", ""].join("\r\n");
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1");
    const received: Buffer[] = [];
    socket.on("data", (d: Buffer) => received.push(d));
    socket.on("error", reject);
    // A server that never answers shows up as "no answer", not as a test hanging until jest's timeout.
    socket.setTimeout(5000, () => socket.destroy());
    socket.on("close", () => {
      const text = Buffer.concat(received).toString("utf8");
      if (text === "") return resolve(undefined);
      const [top, ...rest] = text.split("\r\n\r\n");
      const [statusLine, ...headerLines] = top.split("\r\n");
      const parsed: Record<string, string> = {};
      for (const line of headerLines) parsed[line.slice(0, line.indexOf(":")).toLowerCase()] = line.slice(line.indexOf(":") + 1).trim();
      resolve({ status: Number(statusLine.split(" ")[1]), headers: parsed, body: rest.join("\r\n\r\n") });
    });
    socket.write(head);
    if (r.abortAfter !== undefined) {
      socket.write(body.subarray(0, r.abortAfter));
      setTimeout(() => socket.destroy(), 50);
    } else if (r.chunked) {
      for (let i = 0; i < body.length; i += r.chunked) {
        const piece = body.subarray(i, i + r.chunked);
        socket.write(`${piece.length.toString(16)}\r\n`);
        socket.write(piece);
        socket.write("\r\n");
      }
      socket.write("0\r\n\r\n");
    } else socket.write(body);
  });
}

const event = (n: number): MatrixEvent => ({
  type: "m.room.message",
  event_id: `$e${n}`,
  room_id: "!r:hive.test",
  content: { body: `hi ${n}` },
});
const txn = (n: number): string => JSON.stringify({ events: [event(n)] });
const json = { "Content-Type": "application/json" };
const auth = { ...json, Authorization: `Bearer ${HS_TOKEN}` };
const encodedToken = encodeURIComponent(HS_TOKEN);
/** A body of exactly `size` bytes. */
const sized = (size: number): string => {
  const bare = JSON.stringify({ events: [{ type: "m.room.message", content: { body: "" } }] });
  return JSON.stringify({ events: [{ type: "m.room.message", content: { body: "x".repeat(size - bare.length) } }] });
};

let lean: Target;
let sockets: Target;
let reference: Target;
beforeAll(async () => {
  [lean, sockets, reference] = await Promise.all([startTarget("listener"), startTarget("socket"), startTarget("express")]);
});
afterAll(async () => {
  await Promise.all([lean, sockets, reference].map((t) => new Promise((r) => t.server.close(r))));
});

/** The transaction counters by result. */
async function counters(t: Target): Promise<Record<string, number>> {
  const text = await t.metrics.registry.metrics();
  return Object.fromEntries(
    [...text.matchAll(/^hive_matrix_transactions_total\{result="([^"]+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]),
  );
}

/** What a target did for one request, in terms a homeserver or an operator could see. */
async function observe(
  t: Target,
  r: RawRequest,
): Promise<{ response: unknown; calls: Call[]; logs: unknown[]; counted: Record<string, number>; expressSaw: number; onSocket: number }> {
  const before = {
    calls: t.calls.length,
    logs: t.logs.length,
    expressSaw: t.expressSaw,
    counters: await counters(t),
    onSocket: t.socketAnswered(),
  };
  const res = await send(t.port, r);
  // An aborted request gets no answer; give the server a moment to (not) act on it.
  if (!res) await new Promise((resolve) => setTimeout(resolve, 100));
  const response = res && {
    status: res.status,
    contentType: res.headers["content-type"],
    contentLength: res.headers["content-length"],
    connection: res.headers.connection,
    keepAlive: res.headers["keep-alive"],
    body: res.body,
  };
  const logs = t.logs.slice(before.logs).map((line) => {
    const { level, msg, txnId, status, path, err } = JSON.parse(line) as Record<string, unknown>;
    return { level, msg, txnId, status, path, err };
  });
  const counted = Object.fromEntries(
    Object.entries(await counters(t))
      .map(([result, n]) => [result, n - (before.counters[result] ?? 0)] as const)
      .filter(([, n]) => n !== 0),
  );
  return {
    response,
    calls: t.calls.slice(before.calls),
    logs,
    counted,
    expressSaw: t.expressSaw - before.expressSaw,
    onSocket: t.socketAnswered() - before.onSocket,
  };
}

interface Case {
  name: string;
  request: RawRequest;
  /** Whether the lean path answers it itself. */
  leanPath: boolean;
  status: number | "none";
  errcode?: string;
  /** The txnId the handler gets; undefined: the handler is not called. */
  txnId?: string;
  /** Whether the handler gets the raw body. */
  raw?: boolean;
  /** The transaction counters it moves, where the rule in the test does not give them. */
  counted?: Record<string, number>;
}

/** Accepted, refused for the token, or refused for the body (which the homeserver retries: counted and logged). */
function countedFor(c: Case): Record<string, number> {
  if (c.counted) return c.counted;
  if (c.status === 200 && c.txnId !== undefined) return { accepted: 1 };
  if (c.status === 401 || c.status === 403) return { unauthorized: 1 };
  if (c.status === 400 || c.status === 413 || c.status === 415) return { rejected: 1 };
  return {};
}

const cases: Case[] = [
  {
    name: "a transaction",
    request: { path: "/_matrix/app/v1/transactions/t1", headers: auth, body: txn(1) },
    leanPath: true,
    status: 200,
    txnId: "t1",
    raw: true,
  },
  {
    name: "the legacy path",
    request: { path: "/transactions/t2", headers: auth, body: txn(2) },
    leanPath: true,
    status: 200,
    txnId: "t2",
    raw: true,
  },
  {
    name: "a trailing slash",
    request: { path: "/_matrix/app/v1/transactions/t3/", headers: auth, body: txn(3) },
    leanPath: true,
    status: 200,
    txnId: "t3",
    raw: true,
  },
  {
    name: "a percent-encoded txnId",
    request: { path: "/_matrix/app/v1/transactions/a%2Fb%20%C3%A9", headers: auth, body: txn(4) },
    leanPath: true,
    status: 200,
    txnId: "a/b é",
    raw: true,
  },
  {
    name: "a path in other case",
    request: { path: "/_MATRIX/App/V1/TRANSACTIONS/t5", headers: auth, body: txn(5) },
    leanPath: true,
    status: 200,
    txnId: "t5",
    raw: true,
  },
  {
    name: "two trailing slashes",
    request: { path: "/_matrix/app/v1/transactions/t6//", headers: auth, body: txn(6) },
    leanPath: false,
    status: 405,
    errcode: "M_UNRECOGNIZED",
  },
  {
    name: "another method",
    request: { method: "POST", path: "/_matrix/app/v1/transactions/t7", headers: auth, body: txn(7) },
    leanPath: false,
    status: 405,
    errcode: "M_UNRECOGNIZED",
  },
  {
    name: "a malformed percent-encoding",
    request: { path: "/_matrix/app/v1/transactions/%E0%A4%A", headers: auth, body: txn(8) },
    leanPath: false,
    // express fails the route match and its error handler answers; the lean path keeps that.
    status: 500,
    errcode: "M_UNKNOWN",
  },
  {
    name: "the token as query parameter",
    request: { path: `/_matrix/app/v1/transactions/q1?access_token=${encodedToken}`, headers: json, body: txn(10) },
    leanPath: true,
    status: 200,
    txnId: "q1",
    raw: true,
  },
  {
    name: "the token in both places, and another parameter",
    request: { path: `/_matrix/app/v1/transactions/q2?x=1&access_token=${encodedToken}`, headers: auth, body: txn(11) },
    leanPath: true,
    status: 200,
    txnId: "q2",
    raw: true,
  },
  {
    name: "a wrong query token beside a right header",
    request: { path: "/_matrix/app/v1/transactions/q3?access_token=wrong", headers: auth, body: txn(12) },
    leanPath: true,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    name: "the query token twice",
    request: {
      path: `/_matrix/app/v1/transactions/q4?access_token=${encodedToken}&access_token=${encodedToken}`,
      headers: json,
      body: txn(13),
    },
    leanPath: true,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    name: "the query token as an array in disguise",
    request: { path: `/_matrix/app/v1/transactions/q5?access_token%5B%5D=${encodedToken}`, headers: json, body: txn(14) },
    leanPath: true,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    name: "an empty query",
    request: { path: "/_matrix/app/v1/transactions/q6?", headers: auth, body: txn(15) },
    leanPath: true,
    status: 200,
    txnId: "q6",
    raw: true,
  },
  {
    name: "no token",
    request: { path: "/_matrix/app/v1/transactions/a1", headers: json, body: txn(20) },
    leanPath: true,
    status: 401,
    errcode: "M_MISSING_TOKEN",
  },
  {
    name: "a wrong token",
    request: { path: "/_matrix/app/v1/transactions/a2", headers: { ...json, Authorization: "Bearer wrong" }, body: txn(21) },
    leanPath: true,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    name: "another auth scheme",
    request: { path: "/transactions/a3", headers: { ...json, Authorization: `Basic ${HS_TOKEN}` }, body: txn(22) },
    leanPath: true,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    name: "a wrong token with a body over the limit (refused before reading it)",
    request: { path: "/_matrix/app/v1/transactions/a4", headers: { ...json, Authorization: "Bearer wrong" }, body: sized(LIMIT + 500) },
    leanPath: true,
    status: 403,
    errcode: "M_FORBIDDEN",
  },
  {
    name: "a body that is not JSON",
    request: { path: "/_matrix/app/v1/transactions/b1", headers: auth, body: "{not json" },
    leanPath: true,
    status: 400,
    errcode: "M_NOT_JSON",
  },
  {
    name: "a JSON body that is no transaction",
    request: { path: "/_matrix/app/v1/transactions/b2", headers: auth, body: '{"events":[{"type":5}]}' },
    leanPath: true,
    status: 400,
    errcode: "M_BAD_JSON",
  },
  {
    name: "an empty body",
    request: { path: "/_matrix/app/v1/transactions/b3", headers: auth, body: "" },
    leanPath: true,
    status: 400,
    errcode: "M_BAD_JSON",
  },
  {
    name: "no body at all",
    request: { path: "/_matrix/app/v1/transactions/b4", headers: auth, noBody: true },
    leanPath: true,
    status: 400,
    errcode: "M_BAD_JSON",
  },
  {
    name: "a body after a byte order mark",
    request: {
      path: "/_matrix/app/v1/transactions/b5",
      headers: auth,
      body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(txn(30))]),
    },
    leanPath: true,
    status: 200,
    txnId: "b5",
    raw: true,
  },
  {
    name: "a chunked body",
    request: { path: "/_matrix/app/v1/transactions/b6", headers: auth, body: txn(31), chunked: 7 },
    leanPath: true,
    status: 200,
    txnId: "b6",
    raw: true,
  },
  {
    name: "no Content-Type",
    request: { path: "/_matrix/app/v1/transactions/b7", headers: { Authorization: `Bearer ${HS_TOKEN}` }, body: txn(32) },
    leanPath: true,
    status: 200,
    txnId: "b7",
    raw: true,
  },
  {
    name: "a body of exactly the limit",
    request: { path: "/_matrix/app/v1/transactions/l1", headers: auth, body: sized(LIMIT) },
    leanPath: true,
    status: 200,
    txnId: "l1",
    raw: true,
  },
  {
    name: "a declared body over the limit",
    request: { path: "/_matrix/app/v1/transactions/l2", headers: auth, body: sized(LIMIT + 1) },
    leanPath: true,
    status: 413,
    errcode: "M_TOO_LARGE",
  },
  {
    name: "a chunked body that grows over the limit",
    request: { path: "/_matrix/app/v1/transactions/l3", headers: auth, body: sized(LIMIT * 20), chunked: 1000 },
    leanPath: true,
    status: 413,
    errcode: "M_TOO_LARGE",
  },
  {
    name: "a body over the limit on the legacy path with a trailing slash",
    request: { path: "/transactions/l4/", headers: auth, body: sized(LIMIT + 1) },
    leanPath: true,
    status: 413,
    errcode: "M_TOO_LARGE",
    // The error handler finds no txnId in a path ending in a slash, so it does not count the refusal (as before).
    counted: {},
  },
  {
    name: "explicit charset=utf-8",
    request: {
      path: "/_matrix/app/v1/transactions/c1",
      headers: { ...auth, "Content-Type": "application/json; charset=UTF-8" },
      body: txn(40),
    },
    leanPath: true,
    status: 200,
    txnId: "c1",
    raw: true,
  },
  {
    name: "UTF-16 (express decodes it and keeps no raw body)",
    request: {
      path: "/_matrix/app/v1/transactions/c2",
      headers: { ...auth, "Content-Type": "application/json; charset=utf-16le" },
      body: Buffer.from(txn(41), "utf16le"),
    },
    leanPath: false,
    status: 200,
    txnId: "c2",
    raw: false,
  },
  {
    name: "a quoted charset",
    request: {
      path: "/_matrix/app/v1/transactions/c3",
      headers: { ...auth, "Content-Type": 'application/json; charset="utf-8"' },
      body: txn(42),
    },
    leanPath: false,
    status: 200,
    txnId: "c3",
    raw: false,
  },
  {
    name: "charset=utf8",
    request: {
      path: "/_matrix/app/v1/transactions/c4",
      headers: { ...auth, "Content-Type": "application/json; charset=utf8" },
      body: txn(43),
    },
    leanPath: false,
    status: 415,
    errcode: "M_UNKNOWN",
  },
  {
    name: "charset=latin1",
    request: {
      path: "/_matrix/app/v1/transactions/c5",
      headers: { ...auth, "Content-Type": "application/json; charset=latin1" },
      body: txn(44),
    },
    leanPath: false,
    status: 415,
    errcode: "M_UNKNOWN",
  },
  {
    name: "another media type",
    request: { path: "/_matrix/app/v1/transactions/c6", headers: { ...auth, "Content-Type": "text/plain" }, body: txn(45) },
    leanPath: false,
    status: 200,
    txnId: "c6",
    raw: true,
  },
  {
    name: "a gzip body",
    request: { path: "/_matrix/app/v1/transactions/z1", headers: { ...auth, "Content-Encoding": "gzip" }, body: gzipSync(txn(50)) },
    leanPath: false,
    status: 200,
    txnId: "z1",
    raw: true,
  },
  {
    name: "an unknown Content-Encoding",
    request: { path: "/_matrix/app/v1/transactions/z2", headers: { ...auth, "Content-Encoding": "br" }, body: txn(51) },
    leanPath: false,
    status: 415,
    errcode: "M_UNKNOWN",
  },
  {
    name: "Content-Encoding: identity",
    request: { path: "/_matrix/app/v1/transactions/z3", headers: { ...auth, "Content-Encoding": "Identity" }, body: txn(52) },
    leanPath: true,
    status: 200,
    txnId: "z3",
    raw: true,
  },
  {
    name: "a handler that fails",
    request: { path: "/_matrix/app/v1/transactions/explode", headers: auth, body: txn(60) },
    leanPath: true,
    status: 500,
    errcode: "M_UNKNOWN",
  },
  {
    name: "a handler that throws at once",
    request: { path: "/_matrix/app/v1/transactions/throw", headers: auth, body: txn(61) },
    leanPath: true,
    status: 500,
    errcode: "M_UNKNOWN",
  },
  {
    name: "a request aborted mid-body",
    request: { path: "/_matrix/app/v1/transactions/x1", headers: auth, body: txn(70), abortAfter: 10 },
    leanPath: true,
    status: "none",
  },
  { name: "a health check", request: { method: "GET", path: "/health", noBody: true }, leanPath: false, status: 200 },
];

/** Cases the socket-level server answered itself. */
const socketCases: string[] = [];

describe("the lean transaction path answers as the express app does", () => {
  it.each(cases)("$name", async (c) => {
    const [fromLean, fromSockets, fromExpress] = await Promise.all([
      observe(lean, c.request),
      observe(sockets, c.request),
      observe(reference, c.request),
    ]);
    expect({ ...fromLean, expressSaw: undefined }).toEqual({ ...fromExpress, expressSaw: undefined });
    expect({ ...fromSockets, expressSaw: undefined, onSocket: 0 }).toEqual({ ...fromExpress, expressSaw: undefined });
    expect(fromLean.expressSaw).toBe(c.leanPath ? 0 : 1);
    expect(fromSockets.expressSaw).toBe(c.leanPath ? 0 : 1);
    // On bare sockets only what the lean path takes, and then not by express as well.
    if (!c.leanPath) expect(fromSockets.onSocket).toBe(0);
    if (fromSockets.onSocket > 0) socketCases.push(c.name);
    expect(fromLean.counted).toEqual(countedFor(c));
    if (countedFor(c).rejected)
      expect(fromLean.logs).toContainEqual(
        expect.objectContaining({ level: 40, msg: expect.stringContaining("transaction refused") as string }),
      );

    const res = fromLean.response as { status: number; contentType: string; body: string } | undefined;
    if (c.status === "none") expect(res).toBeUndefined();
    else {
      expect(res?.status).toBe(c.status);
      expect(res?.contentType).toBe("application/json; charset=utf-8");
      const body = JSON.parse(res?.body ?? "") as Record<string, unknown>;
      if (c.status === 200 && c.request.path.includes("transactions")) expect(body).toEqual({});
      if (c.errcode) expect(body).toEqual({ errcode: c.errcode, error: expect.any(String) as string });
    }
    if (c.txnId === undefined) expect(fromLean.calls).toEqual([]);
    else {
      expect(fromLean.calls.map((call) => call.txnId)).toEqual([c.txnId]);
      expect(fromLean.calls[0].events).toHaveLength(1);
      expect(fromLean.calls[0].raw !== undefined).toBe(c.raw);
    }
  });

  it("counts and logs refusals alike, and keeps serving after them", async () => {
    // Every case above ran against all three and counted alike; the totals show refusals of both kinds.
    const totals = await counters(lean);
    expect(totals).toEqual(await counters(reference));
    expect(await counters(sockets)).toEqual(totals);
    // The socket level took the plain transactions (and refused bodies) itself, and handed on the
    // rest, requests without the right token among them.
    expect(socketCases).toEqual(expect.arrayContaining(["a transaction", "the legacy path", "a body that is not JSON"]));
    expect(socketCases).not.toContain("a wrong query token beside a right header");
    expect(socketCases.length).toBeLessThan(cases.filter((c) => c.leanPath).length);
    expect(totals.rejected).toBeGreaterThan(0);
    expect(totals.unauthorized).toBeGreaterThan(0);
    const oversize = await observe(lean, { path: "/_matrix/app/v1/transactions/big", headers: auth, body: sized(LIMIT + 1) });
    expect(oversize.logs).toEqual([
      expect.objectContaining({
        level: 40,
        txnId: "big",
        status: 413,
        msg: expect.stringContaining(`transaction refused: Body exceeds ${LIMIT} bytes`) as string,
      }),
    ]);
    expect((await send(lean.port, { path: "/_matrix/app/v1/transactions/after", headers: auth, body: txn(90) }))?.status).toBe(200);
  });

  it("answers random paths, queries, headers and bodies alike", async () => {
    const taken = { lean: 0, express: 0, socket: 0 };
    const piece = fc.string({
      unit: fc.constantFrom("a", "Z", "0", "-", ".", "/", "%", "2F", "E0", "?", "&", "=", "#", "[", "]", "+", "~", "é"),
    });
    const bodies = fc.oneof(
      fc.nat(1000).map((n) => txn(n)),
      fc.json(),
      fc.string({ unit: "binary", maxLength: 40 }),
      fc.constant(sized(LIMIT + 1)),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom("/_matrix/app/v1/transactions/", "/transactions/", "/_Matrix/app/v1/transactions/", "/_matrix/app/v1/transactions"),
        piece,
        fc.option(
          fc.oneof(
            piece,
            fc.constant(`access_token=${encodedToken}`),
            piece.map((p) => `access_token=${p}`),
          ),
        ),
        fc.constantFrom(
          undefined,
          "application/json",
          "application/json; charset=utf-8",
          "application/json;charset=UTF-8",
          "text/plain",
          "application/json; charset=utf-16",
        ),
        fc.constantFrom(undefined, `Bearer ${HS_TOKEN}`, "Bearer wrong"),
        bodies,
        async (prefix, segment, query, contentType, authorization, body) => {
          const headers: Record<string, string> = {};
          if (contentType) headers["Content-Type"] = contentType;
          if (authorization) headers.Authorization = authorization;
          const request: RawRequest = { path: `${prefix}${segment}${query === null ? "" : `?${query}`}`, headers, body };
          const [fromLean, fromSockets, fromExpress] = await Promise.all([
            observe(lean, request),
            observe(sockets, request),
            observe(reference, request),
          ]);
          expect({ ...fromLean, expressSaw: undefined }).toEqual({ ...fromExpress, expressSaw: undefined });
          expect({ ...fromSockets, expressSaw: undefined, onSocket: 0 }).toEqual({ ...fromExpress, expressSaw: undefined });
          expect(fromSockets.expressSaw).toBe(fromLean.expressSaw);
          expect(fromLean.response).toBeDefined();
          taken[fromLean.expressSaw === 0 ? "lean" : "express"]++;
          if (fromSockets.onSocket > 0) taken.socket++;
        },
      ),
      { numRuns: 150 },
    );
    // Both paths were exercised, not just the fallback.
    expect(taken.lean).toBeGreaterThan(15);
    expect(taken.express).toBeGreaterThan(15);
    // Fewer than the listener's: bodies over the limit and requests without the right token go to
    // node:http, whose listener refuses them.
    expect(taken.socket).toBeGreaterThan(0);
  });

  it("keeps the raw body byte for byte, byte order mark included", async () => {
    const body = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from(JSON.stringify({ events: [event(80), { type: "m.x", content: { s: "é💥" } }] })),
    ]);
    const { calls } = await observe(lean, { path: "/_matrix/app/v1/transactions/raw1", headers: auth, body });
    expect(calls).toHaveLength(1);
    expect(Buffer.from(calls[0].raw ?? "", "base64").equals(body)).toBe(true);
    expect(calls[0].events[1]).toEqual({ type: "m.x", content: { s: "é💥" } });
  });

  it("answers a refused body on a keep-alive connection that stays usable", async () => {
    const agentPort = lean.port;
    const put = (path: string, body: string): Promise<Response> =>
      fetch(`http://127.0.0.1:${agentPort}${path}`, { method: "PUT", headers: auth, body, keepalive: true });
    const big = await put("/_matrix/app/v1/transactions/k1", sized(LIMIT * 50));
    expect(big.status).toBe(413);
    expect(await big.json()).toEqual({ errcode: "M_TOO_LARGE", error: `Body exceeds ${LIMIT} bytes` });
    const next = await put("/_matrix/app/v1/transactions/k2", txn(91));
    expect(next.status).toBe(200);
    await until(() => lean.calls.some((c) => c.txnId === "k2"), 1000);
  });
});
