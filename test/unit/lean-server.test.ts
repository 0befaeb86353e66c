/**
 * The socket-level server (lean-server.ts) on real connections, byte for byte. Every test speaks
 * raw HTTP/1.1 over net.connect and asserts what the peer sees: the bytes of each answer (with the
 * Date header's value masked), their order, whether and when the server closes the connection,
 * and what the handlers were given. Most servers are the service's own, `createAppserviceApp(...)
 * .listen(...)`; the reference is a plain node:http server running the same app's `handle`. A few
 * tests use createLeanServer directly with a tiny route and a node:http listener that answers alike.
 * `leanStats` says which path answered: on the bare socket (answered) or after the connection went
 * to node:http (handedOff).
 */
import { Socket } from "node:net";
import { createServer, type RequestListener, type Server } from "node:http";
import fc from "fast-check";
import { createAppserviceApp } from "../../src/appservice/http";
import { RefusalLog } from "../../src/appservice/auth";
import { createLeanServer, type LeanServer, type SocketRoute } from "../../src/appservice/lean-server";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { captureLogs } from "../support/logs";

const HS_TOKEN = "t".repeat(64);
const LIMIT = 2000;

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 5 ms; false when it did not hold within `timeoutMs`. */
async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 3000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) return false;
    await delay(5);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Servers

interface Call {
  txnId: string;
  raw: Buffer | undefined;
}

interface Target {
  server: Server;
  port: number;
  /** leanStats of a lean server; always zero for the reference. */
  stats: () => { answered: number; handedOff: number };
  /** Transactions the handler was given, in order. */
  calls: Call[];
  pings: (string | undefined)[];
  /** Makes onTransaction for `txnId` wait until the returned function is called. */
  hold: (txnId: string) => () => void;
}

const servers: Server[] = [];
const peers: Peer[] = [];

function listening(server: Server): Promise<number> {
  return new Promise((resolve) => {
    const done = (): void => resolve((server.address() as { port: number }).port);
    if (server.listening) done();
    else server.once("listening", done);
  });
}

/**
 * The service's appservice API: "lean" is app.listen (connections start on bare sockets), as the
 * service serves it; "reference" is a plain node:http server running the same app's `handle`.
 */
async function startApp(kind: "lean" | "reference", keepAliveTimeout?: number): Promise<Target> {
  const { destination } = captureLogs();
  const { logger } = createLogger({ level: "debug", destination });
  const calls: Call[] = [];
  const pings: (string | undefined)[] = [];
  const holds = new Map<string, Promise<void>>();
  const app = createAppserviceApp(
    {
      onTransaction: async (txnId, _events, raw) => {
        calls.push({ txnId, raw });
        await holds.get(txnId);
        // A slow handler: an answer to a later request must still come after this one's.
        if (txnId.startsWith("slow")) await delay(30);
        return "accepted";
      },
      onUserQuery: async () => false,
      onPing: (tid) => void pings.push(tid),
      health: () => ({ ready: true }),
      metrics: async () => ({ contentType: "text/plain", body: "" }),
    },
    { hsToken: HS_TOKEN, maxBodyBytes: LIMIT, logger, metrics: new Metrics(), refusals: new RefusalLog(logger) },
  );
  let server: Server;
  let stats = (): { answered: number; handedOff: number } => ({ answered: 0, handedOff: 0 });
  if (kind === "lean") {
    const lean = app.listen(0, "127.0.0.1");
    stats = () => ({ ...lean.leanStats });
    server = lean;
  } else server = createServer(app.handle).listen(0, "127.0.0.1");
  if (keepAliveTimeout !== undefined) server.keepAliveTimeout = keepAliveTimeout;
  servers.push(server);
  const port = await listening(server);
  const hold = (txnId: string): (() => void) => {
    let release = (): void => undefined;
    holds.set(txnId, new Promise<void>((resolve) => (release = resolve)));
    return () => release();
  };
  return { server, port, stats, calls, pings, hold };
}

/** What the tiny route and listener below were given. */
interface TinyTarget {
  server: Server;
  port: number;
  stats: () => { answered: number; handedOff: number };
  seen: string[];
  /** The next request to /tiny/hold… waits until the returned function is called. */
  hold: () => { started: () => boolean; release: () => void };
}

/**
 * createLeanServer with a tiny route (`PUT /tiny/…`) and a node:http listener that answers every
 * request as the route does; "reference" is a plain node:http server running that listener.
 */
async function startTiny(kind: "lean" | "reference", configure?: (server: Server) => void): Promise<TinyTarget> {
  const seen: string[] = [];
  let pending: { started: boolean; release: () => void; wait: Promise<void> } | undefined;
  const answer = (url: string, body: Buffer, send: () => void): void => {
    seen.push(`${url} ${body.toString("latin1")}`);
    if (url.startsWith("/tiny/hold") && pending) {
      pending.started = true;
      void pending.wait.then(send);
    } else send();
  };
  const json = (url: string, body: Buffer): object => ({ url, length: body.length });
  const listener: RequestListener = (req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const url = req.url ?? "";
      answer(url, body, () => {
        const text = JSON.stringify(json(url, body));
        res.setHeader("Content-Type", "application/json; charset=utf-8");
        res.setHeader("Content-Length", Buffer.byteLength(text));
        res.end(text);
      });
    });
  };
  const route: SocketRoute = (method, url) =>
    method === "PUT" && url.startsWith("/tiny/") ? (raw, reply) => answer(url, raw, () => reply(200, json(url, raw))) : undefined;
  let server: Server;
  let stats = (): { answered: number; handedOff: number } => ({ answered: 0, handedOff: 0 });
  if (kind === "lean") {
    const lean: LeanServer = createLeanServer(listener, route, { maxBodyBytes: 100 });
    stats = () => ({ ...lean.leanStats });
    server = lean;
  } else server = createServer(listener);
  configure?.(server);
  server.listen(0, "127.0.0.1");
  servers.push(server);
  const port = await listening(server);
  const hold = (): { started: () => boolean; release: () => void } => {
    let release = (): void => undefined;
    const wait = new Promise<void>((resolve) => (release = resolve));
    const entry = { started: false, release, wait };
    pending = entry;
    return { started: () => entry.started, release: () => release() };
  };
  return { server, port, stats, seen, hold };
}

afterAll(async () => {
  for (const peer of peers) peer.socket.destroy();
  await Promise.all(
    servers.map(
      (server) =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          if (server.listening) server.close(() => resolve());
          else resolve();
        }),
    ),
  );
});

// ---------------------------------------------------------------------------------------------
// The peer: raw bytes in, raw bytes out

interface Answer {
  status: number;
  statusLine: string;
  headers: [string, string][];
  body: string;
  raw: Buffer;
}

/** Splits what arrived into whole answers (1xx included); one without Content-Length ends at close. */
function parseAnswers(bytes: Buffer, closed: boolean): Answer[] {
  const answers: Answer[] = [];
  let at = 0;
  while (at < bytes.length) {
    const end = bytes.indexOf("\r\n\r\n", at);
    if (end < 0) break;
    const [statusLine, ...lines] = bytes.toString("latin1", at, end).split("\r\n");
    const status = Number(statusLine.split(" ")[1]);
    const headers = lines.map((line): [string, string] => [line.slice(0, line.indexOf(":")), line.slice(line.indexOf(":") + 1).trim()]);
    const length = headers.find(([name]) => name.toLowerCase() === "content-length")?.[1];
    const bodyStart = end + 4;
    let bodyEnd: number;
    if (status < 200 || status === 204 || status === 304) bodyEnd = bodyStart;
    else if (length !== undefined) {
      bodyEnd = bodyStart + Number(length);
      if (bodyEnd > bytes.length) break;
    } else {
      if (!closed) break;
      bodyEnd = bytes.length;
    }
    answers.push({ status, statusLine, headers, body: bytes.toString("utf8", bodyStart, bodyEnd), raw: bytes.subarray(at, bodyEnd) });
    at = bodyEnd;
  }
  return answers;
}

class Peer {
  private readonly chunks: Buffer[] = [];
  closed = false;
  /** The server's FIN arrived. */
  ended = false;
  closedAt = 0;

  private constructor(readonly socket: Socket) {
    socket.on("data", (chunk: Buffer) => this.chunks.push(chunk));
    socket.on("end", () => (this.ended = true));
    // A reset shows up as the connection closing; what arrived before it stays readable.
    socket.on("error", () => undefined);
    socket.on("close", () => {
      this.closed = true;
      this.closedAt = Date.now();
    });
  }

  static open(port: number, options: { allowHalfOpen?: boolean } = {}): Promise<Peer> {
    const socket = new Socket({ allowHalfOpen: options.allowHalfOpen ?? false });
    socket.setNoDelay(true);
    const peer = new Peer(socket);
    peers.push(peer);
    return new Promise((resolve, reject) => {
      socket.once("connect", () => resolve(peer));
      socket.once("error", reject);
      socket.connect(port, "127.0.0.1");
    });
  }

  get bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Everything received, as text with Date values masked. */
  get text(): string {
    return masked(this.bytes);
  }

  write(data: Buffer | string): Promise<void> {
    const bytes = typeof data === "string" ? Buffer.from(data, "latin1") : data;
    return new Promise((resolve, reject) => this.socket.write(bytes, (err) => (err ? reject(err) : resolve())));
  }

  answers(): Answer[] {
    return parseAnswers(this.bytes, this.closed);
  }

  /** Final (non-1xx) answers. */
  finals(): Answer[] {
    return this.answers().filter((a) => a.status >= 200);
  }

  /** Waits for `n` final answers (or the connection closing, or `timeoutMs`) and returns them. */
  async waitForAnswers(n: number, timeoutMs = 3000): Promise<Answer[]> {
    await waitFor(() => this.finals().length >= n || this.closed, timeoutMs);
    return this.finals();
  }

  waitForClose(timeoutMs = 3000): Promise<boolean> {
    return waitFor(() => this.closed, timeoutMs);
  }
}

/** The answer text with each Date header's value masked; every Date must be a fresh IMF-fixdate. */
function masked(bytes: Buffer | string): string {
  const text = typeof bytes === "string" ? bytes : bytes.toString("latin1");
  return text.replace(/\r\nDate: ([^\r\n]*)/g, (_all, value: string) => {
    const when = Date.parse(value);
    const fresh = /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(value) && Math.abs(Date.now() - when) < 60_000;
    return fresh ? "\r\nDate: <date>" : `\r\nDate: <bad date ${value}>`;
  });
}

/** One connection: writes `bytes`, reads until one final answer (then `graceMs` more) or the server closes. */
async function exchange(port: number, bytes: Buffer, graceMs = 25): Promise<{ text: string; closedByServer: boolean }> {
  const peer = await Peer.open(port);
  await peer.write(bytes);
  const [answer] = await peer.waitForAnswers(1);
  const closing = answer === undefined || answer.headers.some(([n, v]) => n.toLowerCase() === "connection" && v === "close");
  if (closing) await peer.waitForClose(1000);
  else await delay(graceMs);
  const result = { text: peer.text, closedByServer: peer.closed };
  peer.socket.destroy();
  return result;
}

/**
 * node:http's answer as it comes on a connection handed over for one request the lean path does
 * not take: `Connection: close` instead of keep-alive, and the connection closed after it.
 */
function endingConnection(answer: { text: string; closedByServer: boolean }): { text: string; closedByServer: boolean } {
  return {
    text: answer.text.replace(/\r\nConnection: keep-alive\r\nKeep-Alive: timeout=\d+\r\n/, "\r\nConnection: close\r\n"),
    closedByServer: true,
  };
}

// ---------------------------------------------------------------------------------------------
// Requests

const body = (txnId: string): Buffer =>
  Buffer.from(
    JSON.stringify({ events: [{ type: "m.room.message", event_id: `$${txnId}`, room_id: "!r:hive.test", content: { body: "é💥" } }] }),
  );

/** A request from a head's lines (request line first) and a body, lines joined by CRLF. */
const request = (lines: string[], payload: Buffer | string = ""): Buffer =>
  Buffer.concat([Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "latin1"), typeof payload === "string" ? Buffer.from(payload) : payload]);

/** The head lines of a plain transaction the lean path takes. */
const plainLines = (txnId: string, length: number): string[] => [
  `PUT /_matrix/app/v1/transactions/${txnId} HTTP/1.1`,
  "Host: 127.0.0.1",
  `Authorization: Bearer ${HS_TOKEN}`,
  "Content-Type: application/json",
  `Content-Length: ${length}`,
];

/** A plain transaction, with `extra` header lines after the usual ones. */
function put(txnId: string, extra: string[] = [], payload: Buffer = body(txnId)): Buffer {
  return request([...plainLines(txnId, payload.length), ...extra], payload);
}

const health = request(["GET /health HTTP/1.1", "Host: 127.0.0.1"]);
const ping = (tid: string): Buffer => {
  const payload = Buffer.from(JSON.stringify({ transaction_id: tid }));
  return request(
    [
      "POST /_matrix/app/v1/ping HTTP/1.1",
      "Host: 127.0.0.1",
      `Authorization: Bearer ${HS_TOKEN}`,
      "Content-Type: application/json",
      `Content-Length: ${payload.length}`,
    ],
    payload,
  );
};

/** A transaction body of exactly `size` bytes. */
function sized(size: number): Buffer {
  const bare = JSON.stringify({ events: [{ type: "m.room.message", content: { body: "" } }] });
  return Buffer.from(JSON.stringify({ events: [{ type: "m.room.message", content: { body: "x".repeat(size - bare.length) } }] }));
}

const txnIds = (calls: Call[]): string[] => calls.map((c) => c.txnId);
const delta = (before: { answered: number; handedOff: number }, after: { answered: number; handedOff: number }) => ({
  answered: after.answered - before.answered,
  handedOff: after.handedOff - before.handedOff,
});

// ---------------------------------------------------------------------------------------------

describe("keep-alive connections on the socket path", () => {
  let lean: Target;
  let reference: Target;
  beforeAll(async () => {
    [lean, reference] = await Promise.all([startApp("lean"), startApp("reference")]);
  });

  it("answers several transactions on one connection itself, each exactly as node:http answers it", async () => {
    const ids = ["k1", "k2", "k3", "k4"];
    const run = async (t: Target): Promise<{ peer: Peer; answers: Answer[] }> => {
      const peer = await Peer.open(t.port);
      for (let i = 0; i < ids.length; i++) {
        await peer.write(put(ids[i]));
        expect(await peer.waitForAnswers(i + 1)).toHaveLength(i + 1);
      }
      return { peer, answers: peer.finals() };
    };
    const before = lean.stats();
    const fromLean = await run(lean);
    expect(delta(before, lean.stats())).toEqual({ answered: 4, handedOff: 0 });
    const fromReference = await run(reference);

    for (const answer of fromLean.answers) {
      expect(answer.statusLine).toBe("HTTP/1.1 200 OK");
      expect(answer.headers.map(([name]) => name)).toEqual(["Content-Type", "Content-Length", "Date", "Connection", "Keep-Alive"]);
      expect(Object.fromEntries(answer.headers.filter(([name]) => name !== "Date"))).toEqual({
        "Content-Type": "application/json; charset=utf-8",
        "Content-Length": "2",
        Connection: "keep-alive",
        "Keep-Alive": "timeout=5",
      });
      expect(answer.body).toBe("{}");
    }
    // Byte for byte what node:http sends for the same requests, Date's value aside.
    expect(fromLean.peer.text).not.toContain("bad date");
    expect(fromLean.peer.text).toBe(fromReference.peer.text);
    expect(fromLean.peer.closed).toBe(false);

    expect(txnIds(lean.calls.slice(-4))).toEqual(ids);
    expect(lean.calls.filter((c) => ids.includes(c.txnId))).toHaveLength(4);
    for (const call of lean.calls.slice(-4)) expect(call.raw?.equals(body(call.txnId))).toBe(true);
  });

  it("answers `Connection: close` on the socket path as node:http does, then closes", async () => {
    const bytes = put("kc", ["Connection: close"]);
    const before = lean.stats();
    const [fromLean, fromReference] = await Promise.all([exchange(lean.port, bytes), exchange(reference.port, bytes)]);
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
    expect(fromLean.text).toContain("\r\nConnection: close\r\n");
    expect(fromLean).toEqual(fromReference);
    expect(fromLean.closedByServer).toBe(true);
  });

  it("answers pipelined transactions in one write, in order", async () => {
    // slow1's handler takes 30 ms; p2 is refused at once (its body is not JSON): its answer must not overtake.
    const notJson = request(plainLines("p2", 5), "{nope");
    const bytes = Buffer.concat([put("slow1"), notJson, put("p3")]);
    const before = lean.stats();
    const lp = await Peer.open(lean.port);
    const rp = await Peer.open(reference.port);
    await Promise.all([lp.write(bytes), rp.write(bytes)]);
    const [fromLean, fromReference] = await Promise.all([lp.waitForAnswers(3), rp.waitForAnswers(3)]);
    expect(fromLean.map((a) => a.status)).toEqual([200, 400, 200]);
    expect(fromReference).toHaveLength(3);
    expect(JSON.parse(fromLean[1].body)).toEqual({ errcode: "M_NOT_JSON", error: expect.any(String) as string });
    expect(lp.text).toBe(rp.text);
    expect(delta(before, lean.stats())).toEqual({ answered: 3, handedOff: 0 });
    expect(txnIds(lean.calls.slice(-2))).toEqual(["slow1", "p3"]);
  });

  it("gives a request without the right token to node:http before reading its body, which refuses it at once and ends the connection", async () => {
    // Only the head, declaring a body of the largest size taken: nothing of it is ever sent.
    const head = request(plainLines("nt1", LIMIT).map((l) => l.replace(HS_TOKEN, "wrong")));
    const before = lean.stats();
    const [fromLean, fromReference] = await Promise.all([exchange(lean.port, head), exchange(reference.port, head)]);
    expect(fromReference.text).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(fromLean).toEqual(endingConnection(fromReference));
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 1 });
    expect(lean.calls.some((c) => c.txnId === "nt1")).toBe(false);
  });

  it("answers a transaction, GET /health and a transaction in one write; node:http answers the GET and ends the connection", async () => {
    const bytes = Buffer.concat([put("slowq1"), health, put("q2")]);
    const before = lean.stats();
    const lp = await Peer.open(lean.port);
    const rp = await Peer.open(reference.port);
    await Promise.all([lp.write(bytes), rp.write(bytes)]);
    const [fromLean, fromReference] = await Promise.all([lp.waitForAnswers(2), rp.waitForAnswers(3)]);
    expect(await lp.waitForClose()).toBe(true);
    expect(fromLean.map((a) => [a.status, a.body])).toEqual([
      [200, "{}"],
      [200, '{"ready":true}'],
    ]);
    // The first answer as node's; the GET's as node's but for the connection's end; none for the
    // transaction after it. node:http may have handed that one to the handler already, as it does
    // with any request pipelined behind one it answers with `Connection: close`: unanswered, the
    // homeserver sends it again on a new connection, and the service's de-duplication makes the
    // second delivery a replay.
    expect(lp.finals()).toHaveLength(2);
    expect(fromLean[0]).toEqual(fromReference[0]);
    expect(masked(fromLean[1].raw)).toBe(endingConnection({ text: masked(fromReference[1].raw), closedByServer: true }).text);
    expect(lp.text).toContain('\r\nConnection: close\r\n\r\n{"ready":true}');
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 1 });
    const again = await exchange(lean.port, put("q2"));
    expect(again.text).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(delta(before, lean.stats())).toEqual({ answered: 2, handedOff: 1 });
    expect(txnIds(lean.calls.slice(-1))).toEqual(["q2"]);
  });

  it("gives node:http one request at a time: transaction, GET /health, transaction, ping, transaction, reconnecting as a homeserver does", async () => {
    const steps = [put("s1"), health, put("s2"), ping("pp1"), put("s3")];
    const closes = (a: Answer): boolean => a.headers.some(([n, v]) => n.toLowerCase() === "connection" && v === "close");
    /** Sends the steps in order, each after the last answer, on a new connection whenever the server closed the last. */
    const run = async (t: Target): Promise<{ answers: string[]; connections: number }> => {
      const answers: string[] = [];
      let peer = await Peer.open(t.port);
      let connections = 1;
      for (const step of steps) {
        if (peer.closed) {
          peer = await Peer.open(t.port);
          connections++;
        }
        const seen = peer.finals().length;
        await peer.write(step);
        const answer = (await peer.waitForAnswers(seen + 1))[seen];
        answers.push(masked(answer.raw));
        if (closes(answer)) expect(await peer.waitForClose()).toBe(true);
      }
      peer.socket.destroy();
      return { answers, connections };
    };
    const before = lean.stats();
    const fromLean = await run(lean);
    const fromReference = await run(reference);
    // The GET and the ping each ended their connection; every transaction came on the socket path.
    expect(fromLean.connections).toBe(3);
    expect(fromReference.connections).toBe(1);
    expect(delta(before, lean.stats())).toEqual({ answered: 3, handedOff: 2 });
    expect(fromLean.answers).toEqual(
      fromReference.answers.map((text, i) => (i === 1 || i === 3 ? endingConnection({ text, closedByServer: true }).text : text)),
    );
    expect(fromLean.answers[1]).toContain("\r\nConnection: close\r\n");
    expect(txnIds(lean.calls.slice(-3))).toEqual(["s1", "s2", "s3"]);
    expect(lean.pings.slice(-1)).toEqual(["pp1"]);
  });

  it("does not read what follows a request answered with `Connection: close`", async () => {
    // A refusal (answered at once) with `Connection: close`, then a transaction in the same write.
    const refused = request(
      [...plainLines("c1", body("c1").length).map((l) => l.replace(HS_TOKEN, "wrong")), "Connection: close"],
      body("c1"),
    );
    const peer = await Peer.open(lean.port);
    const calls = lean.calls.length;
    await peer.write(Buffer.concat([refused, put("c2")]));
    expect(await peer.waitForClose()).toBe(true);
    expect(peer.finals().map((a) => a.status)).toEqual([403]);
    expect(peer.text).toContain("\r\nConnection: close\r\n");
    await delay(30);
    expect(lean.calls.length).toBe(calls);
  });
});

describe("a request arriving in pieces", () => {
  let lean: Target;
  /** 'data' events per connection on the server: the pieces did arrive apart. */
  const reads: number[] = [];
  const whole = put("split", [], Buffer.from(JSON.stringify({ events: [{ type: "m.x", content: { s: "é💥 x" } }] })));
  const payload = whole.subarray(whole.indexOf("\r\n\r\n") + 4);
  let baseline: string;
  beforeAll(async () => {
    lean = await startApp("lean");
    lean.server.on("connection", (socket: Socket) => {
      const index = reads.push(0) - 1;
      socket.on("data", () => reads[index]++);
    });
    const peer = await Peer.open(lean.port);
    await peer.write(whole);
    await peer.waitForAnswers(1);
    baseline = peer.text;
    peer.socket.destroy();
  });

  /** Writes `pieces` apart on a new connection; the answer's text. */
  async function inPieces(pieces: Buffer[], gapMs: number): Promise<string> {
    const peer = await Peer.open(lean.port);
    for (let i = 0; i < pieces.length; i++) {
      if (i > 0) await delay(gapMs);
      await peer.write(pieces[i]);
    }
    await peer.waitForAnswers(1);
    const text = peer.text;
    peer.socket.destroy();
    return text;
  }

  it("is answered identically on the socket path wherever it is cut in two", async () => {
    expect(baseline).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\n\{\}$/);
    const before = lean.stats();
    const calls = lean.calls.length;
    const firstRead = reads.length;
    const cuts = Array.from({ length: whole.length - 1 }, (_, i) => i + 1);
    for (let i = 0; i < cuts.length; i += 16) {
      const texts = await Promise.all(cuts.slice(i, i + 16).map((cut) => inPieces([whole.subarray(0, cut), whole.subarray(cut)], 4)));
      for (const text of texts) expect(text).toBe(baseline);
    }
    expect(delta(before, lean.stats())).toEqual({ answered: cuts.length, handedOff: 0 });
    const made = lean.calls.slice(calls);
    expect(made).toHaveLength(cuts.length);
    for (const call of made) {
      expect(call.txnId).toBe("split");
      expect(call.raw?.equals(payload)).toBe(true);
    }
    // Most connections did see the request in two reads (the test is not of one write seen whole).
    const split = reads.slice(firstRead).filter((n) => n >= 2).length;
    expect(split).toBeGreaterThan(cuts.length / 2);
  });

  it("is answered identically wherever it is cut in three (property)", async () => {
    const before = lean.stats();
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: whole.length - 1 }), fc.integer({ min: 1, max: whole.length - 1 }), async (a, b) => {
        const [x, y] = a <= b ? [a, b] : [b, a];
        const calls = lean.calls.length;
        const text = await inPieces([whole.subarray(0, x), whole.subarray(x, y), whole.subarray(y)], 3);
        runs++;
        expect(text).toBe(baseline);
        expect(lean.calls.slice(calls).map((c) => c.raw?.equals(payload))).toEqual([true]);
      }),
      { numRuns: 30 },
    );
    expect(delta(before, lean.stats())).toEqual({ answered: runs, handedOff: 0 });
  });

  it("is answered identically when it arrives one byte at a time", async () => {
    const before = lean.stats();
    const calls = lean.calls.length;
    const firstRead = reads.length;
    const text = await inPieces(
      Array.from({ length: whole.length }, (_, i) => whole.subarray(i, i + 1)),
      1,
    );
    expect(text).toBe(baseline);
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
    expect(lean.calls.slice(calls).map((c) => c.raw?.equals(payload))).toEqual([true]);
    expect(reads[firstRead]).toBeGreaterThan(whole.length / 2);
  });
});

describe("timeouts (keepAliveTimeout 200 ms)", () => {
  let lean: Target;
  let reference: Target;
  beforeAll(async () => {
    [lean, reference] = await Promise.all([startApp("lean", 200), startApp("reference", 200)]);
  });

  it.each([
    ["in the head", 40],
    ["in the body", put("st").indexOf("\r\n\r\n") + 10],
  ])("hands a request stalled %s to node:http, which answers it once the rest arrives", async (_where, cut) => {
    const bytes = put("st");
    const before = lean.stats();
    const calls = lean.calls.length;
    const peer = await Peer.open(lean.port);
    await peer.write(bytes.subarray(0, cut));
    await delay(300);
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 1 });
    expect(peer.closed).toBe(false);
    expect(peer.bytes.length).toBe(0);
    await peer.write(bytes.subarray(cut));
    const [answer] = await peer.waitForAnswers(1);
    expect(answer.status).toBe(200);
    const fromReference = await exchange(reference.port, bytes);
    expect(peer.text).toBe(fromReference.text);
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 1 });
    expect(lean.calls.slice(calls).map((c) => [c.txnId, c.raw?.equals(body("st"))])).toEqual([["st", true]]);
  });

  it("closes a connection left idle after an answer once keepAliveTimeout has passed", async () => {
    const peer = await Peer.open(lean.port);
    const before = lean.stats();
    await peer.write(put("idle1"));
    await peer.waitForAnswers(1);
    const answeredAt = Date.now();
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
    expect(peer.text).toContain("\r\nKeep-Alive: timeout=0\r\n");
    expect(await peer.waitForClose(1500)).toBe(true);
    const idle = peer.closedAt - answeredAt;
    expect(idle).toBeGreaterThanOrEqual(150);
    expect(idle).toBeLessThan(1500);
    expect(peer.finals()).toHaveLength(1);
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
  });

  it("gives a new connection that sends nothing to node:http, which still answers it", async () => {
    const peer = await Peer.open(lean.port);
    const before = lean.stats();
    await delay(300);
    expect(peer.closed).toBe(false);
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 1 });
    await peer.write(put("late"));
    const [answer] = await peer.waitForAnswers(1);
    expect([answer.status, answer.body]).toEqual([200, "{}"]);
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 1 });
  });
});

describe("heads compared with node:http's answers (keepAliveTimeout 200 ms)", () => {
  let lean: Target;
  let reference: Target;
  beforeAll(async () => {
    [lean, reference] = await Promise.all([startApp("lean", 200), startApp("reference", 200)]);
  });

  const std = (txnId: string): string[] => plainLines(txnId, body(txnId).length);
  const swap = (lines: string[], from: string, to: string): string[] => lines.map((l) => (l.startsWith(from) ? to : l));
  const chunked = (payload: Buffer): Buffer =>
    Buffer.concat([Buffer.from(`${payload.length.toString(16)}\r\n`), payload, Buffer.from("\r\n0\r\n\r\n")]);
  const cases: [string, (id: string) => Buffer][] = [
    ["Content-Length twice, same value", (id) => request([...std(id), `Content-Length: ${body(id).length}`], body(id))],
    ["Content-Length twice, other values", (id) => request([...std(id), "Content-Length: 3"], body(id))],
    ["Transfer-Encoding with Content-Length", (id) => request([...std(id), "Transfer-Encoding: chunked"], chunked(body(id)))],
    ["Transfer-Encoding: chunked alone", (id) => request(swap(std(id), "Content-Length", "Transfer-Encoding: chunked"), chunked(body(id)))],
    ["an obs-fold continuation line", (id) => request([...std(id), "X-Note: a", " folded"], body(id))],
    ["a bare LF inside a header line", (id) => request([...std(id), "X-Note: a\nb"], body(id))],
    ["a bare LF between two header lines", (id) => request([...std(id), "X-Note: a\nX-Other: b"], body(id))],
    ["a head whose lines all end in bare LF", (id) => Buffer.concat([Buffer.from(`${std(id).join("\n")}\n\n`), body(id)])],
    ["NUL in a header value", (id) => request([...std(id), "X-Note: a\0b"], body(id))],
    ["a trailing space in a header value", (id) => request([...std(id), "X-Note: a "], body(id))],
    ["a space before the colon", (id) => request([...std(id), "X-Note : a"], body(id))],
    ["an empty header name", (id) => request([...std(id), ": a"], body(id))],
    ["a lowercase method", (id) => request([std(id)[0].replace("PUT", "put"), ...std(id).slice(1)], body(id))],
    ["HTTP/1.0", (id) => request([std(id)[0].replace("HTTP/1.1", "HTTP/1.0"), ...std(id).slice(1)], body(id))],
    ["two spaces in the request line", (id) => request([std(id)[0].replace(" HTTP", "  HTTP"), ...std(id).slice(1)], body(id))],
    ["an absolute-form request target", (id) => request([std(id)[0].replace(" /", " http://127.0.0.1/"), ...std(id).slice(1)], body(id))],
    [
      "no Host",
      (id) =>
        request(
          std(id).filter((l) => !l.startsWith("Host")),
          body(id),
        ),
    ],
    ["Host twice", (id) => request([...std(id), "Host: 127.0.0.1"], body(id))],
    ["Authorization twice", (id) => request([...std(id), `Authorization: Bearer ${HS_TOKEN}`], body(id))],
    ["Expect: 100-continue", (id) => request([...std(id), "Expect: 100-continue"], body(id))],
    ["Upgrade: websocket", (id) => request([...std(id), "Connection: Upgrade", "Upgrade: websocket"], body(id))],
    ["a Connection list", (id) => request([...std(id), "Connection: keep-alive, TE", "TE: trailers"], body(id))],
    ["Content-Length with a sign", (id) => request(swap(std(id), "Content-Length", `Content-Length: +${body(id).length}`), body(id))],
    [
      "Content-Length in hex",
      (id) => request(swap(std(id), "Content-Length", `Content-Length: 0x${body(id).length.toString(16)}`), body(id)),
    ],
    [
      "Content-Length of 16 digits",
      (id) => request(swap(std(id), "Content-Length", `Content-Length: ${String(body(id).length).padStart(16, "0")}`), body(id)),
    ],
    ["a body over maxBodyBytes", (id) => put(id, [], sized(LIMIT + 1))],
    ["a head over 8 KiB", (id) => put(id, [`X-Pad: ${"p".repeat(8300)}`])],
    ["a header value with Latin-1 bytes", (id) => request([...std(id), "X-Note: caf\xe9"], body(id))],
    ["a header value in UTF-8", (id) => request([...std(id), `X-Note: ${Buffer.from("café💥").toString("latin1")}`], body(id))],
  ];

  /**
   * Well-formed heads the lean path does not take: node:http answers them on a connection it then
   * ends. The others it does not parse, and node:http keeps their connection (for most, node's
   * answer is a 400 that ends it anyway).
   */
  const declined = new Set([
    "Transfer-Encoding with Content-Length",
    "Transfer-Encoding: chunked alone",
    "an absolute-form request target",
    "no Host",
    "Expect: 100-continue",
    "Upgrade: websocket",
    "a Connection list",
    "Content-Length with a sign",
    "Content-Length in hex",
    "Content-Length of 16 digits",
    "a body over maxBodyBytes",
  ]);

  it.each(cases.map(([name, make], i) => ({ name, make, id: `m${i}` })))(
    "gives node:http a head with $name, answered as node:http answers it",
    async ({ name, make, id }) => {
      const bytes = make(id);
      const before = lean.stats();
      const [fromLean, fromReference] = await Promise.all([exchange(lean.port, bytes), exchange(reference.port, bytes)]);
      // node:http answers each of them somehow (else the comparison would prove nothing).
      expect(fromReference.text).toMatch(/^HTTP\/1\.1 \d{3} /);
      expect(fromLean).toEqual(declined.has(name) ? endingConnection(fromReference) : fromReference);
      const after = lean.stats();
      expect(after.answered).toBe(before.answered);
      expect(after.handedOff).toBe(before.handedOff + 1);
      const seen = (t: Target): unknown[] => t.calls.filter((c) => c.txnId === id).map((c) => c.raw?.toString("base64"));
      expect(seen(lean)).toEqual(seen(reference));
    },
  );

  const lower = (lines: string[]): string[] => lines.map((l, i) => (i === 0 ? l : l.replace(/^[^:]+/, (name) => name.toLowerCase())));
  const plainVariants: [string, (id: string) => Buffer][] = [
    ["a tab before a header value", (id) => request(swap(std(id), "Host", "Host:\t127.0.0.1"), body(id))],
    ["no space after the colon", (id) => request(swap(std(id), "Host", "Host:127.0.0.1"), body(id))],
    ["header names in lower case", (id) => request(lower(std(id)), body(id))],
    ["inner spaces and tabs in a value, and an empty value", (id) => request([...std(id), "X-Note: a \t b", "X-Empty:"], body(id))],
    ["an empty Host", (id) => request(swap(std(id), "Host", "Host:"), body(id))],
    ["Connection: keep-alive", (id) => request([...std(id), "Connection: keep-alive"], body(id))],
    ["Connection: Keep-Alive", (id) => request([...std(id), "Connection: Keep-Alive"], body(id))],
    ["Connection: CLOSE", (id) => request([...std(id), "Connection: CLOSE"], body(id))],
    [
      "Content-Length with leading zeros",
      (id) => request(swap(std(id), "Content-Length", `Content-Length: 000${body(id).length}`), body(id)),
    ],
    [
      "no Content-Type",
      (id) =>
        request(
          std(id).filter((l) => !l.startsWith("Content-Type")),
          body(id),
        ),
    ],
    ["the legacy path", (id) => request([std(id)[0].replace("/_matrix/app/v1", ""), ...std(id).slice(1)], body(id))],
    [
      "the token as a query parameter",
      (id) =>
        request(
          [
            std(id)[0].replace(` HTTP`, `?access_token=${HS_TOKEN} HTTP`),
            ...std(id)
              .slice(1)
              .filter((l) => !l.startsWith("Authorization")),
          ],
          body(id),
        ),
    ],
    ["a body that is not JSON (400)", (id) => request(swap(std(id), "Content-Length", "Content-Length: 5"), "{nope")],
    ["an empty body (400)", (id) => request(swap(std(id), "Content-Length", "Content-Length: 0"))],
  ];

  it.each(plainVariants.map(([name, make], i) => ({ name, make, id: `v${i}` })))(
    "answers a plain variant on the socket path as node:http does: $name",
    async ({ make, id }) => {
      const bytes = make(id);
      const before = lean.stats();
      const [fromLean, fromReference] = await Promise.all([exchange(lean.port, bytes), exchange(reference.port, bytes)]);
      expect(fromReference.text).toMatch(/^HTTP\/1\.1 \d{3} /);
      expect(fromLean).toEqual(fromReference);
      expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
      const seen = (t: Target): unknown[] => t.calls.filter((c) => c.txnId === id).map((c) => c.raw?.toString("base64"));
      expect(seen(lean)).toEqual(seen(reference));
    },
  );

  it("takes a head of exactly 8 KiB itself and gives one byte more to node:http", async () => {
    const pad = (id: string, headBytes: number): Buffer => {
      const base = put(id, ["X-Pad: "]);
      const headLength = base.indexOf("\r\n\r\n");
      return put(id, [`X-Pad: ${"p".repeat(headBytes - headLength)}`]);
    };
    const exact = pad("h8k", 8192);
    expect(exact.indexOf("\r\n\r\n")).toBe(8192);
    const over = pad("h8k1", 8193);
    expect(over.indexOf("\r\n\r\n")).toBe(8193);
    let before = lean.stats();
    const [a, ra] = await Promise.all([exchange(lean.port, exact), exchange(reference.port, exact)]);
    expect(a).toEqual(ra);
    expect(a.text).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
    before = lean.stats();
    const [b, rb] = await Promise.all([exchange(lean.port, over), exchange(reference.port, over)]);
    expect(b).toEqual(rb);
    expect(b.text).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 1 });
  });

  it("takes a body of exactly maxBodyBytes itself and gives one byte more to node:http (413), which ends that connection", async () => {
    const before = lean.stats();
    const exact = put("l1", [], sized(LIMIT));
    const [fromLean, fromReference] = await Promise.all([exchange(lean.port, exact), exchange(reference.port, exact)]);
    expect(fromLean).toEqual(fromReference);
    expect(fromLean.text).toMatch(/^HTTP\/1\.1 200 OK[^]*\r\n\r\n\{\}$/);
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
    expect(lean.calls.filter((c) => c.txnId === "l1").map((c) => c.raw?.equals(sized(LIMIT)))).toEqual([true]);

    const over = put("l2", [], sized(LIMIT + 1));
    const [tooLarge, tooLargeReference] = await Promise.all([exchange(lean.port, over), exchange(reference.port, over)]);
    expect(tooLarge).toEqual(endingConnection(tooLargeReference));
    expect(tooLarge.text).toMatch(/^HTTP\/1\.1 413 Payload Too Large\r\n/);
    expect(tooLarge.text).toContain(JSON.stringify({ errcode: "M_TOO_LARGE", error: `Body exceeds ${LIMIT} bytes` }));
    // The homeserver's next transaction, on a new connection, is on the socket path again.
    const next = await exchange(lean.port, put("l3"));
    expect(next.text).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(delta(before, lean.stats())).toEqual({ answered: 2, handedOff: 1 });
    expect(lean.calls.filter((c) => c.txnId === "l2")).toEqual([]);
    expect(txnIds(lean.calls.filter((c) => c.txnId === "l3"))).toEqual(["l3"]);
  });
});

describe("closing the server", () => {
  /** A new service whose handler holds transaction `txnId` until `release()`, and a connection waiting for its answer. */
  async function busyConnection(txnId: string): Promise<{ lean: Target; release: () => void; busy: Peer }> {
    const lean = await startApp("lean");
    const release = lean.hold(txnId);
    const busy = await Peer.open(lean.port);
    await busy.write(put(txnId));
    expect(await waitFor(() => lean.calls.some((c) => c.txnId === txnId))).toBe(true);
    return { lean, release, busy };
  }

  it("closes idle lean connections at once, fresh or after an answer, and calls back", async () => {
    const lean = await startApp("lean");
    const answered = await Peer.open(lean.port);
    await answered.write(put("i1"));
    await answered.waitForAnswers(1);
    const fresh = await Peer.open(lean.port);
    await delay(20);
    let calledBack = false;
    const started = Date.now();
    lean.server.close(() => (calledBack = true));
    expect(await answered.waitForClose(1000)).toBe(true);
    expect(await fresh.waitForClose(1000)).toBe(true);
    // Well within keepAliveTimeout (5 s): closed by close(), not by the idle timer.
    expect(Math.max(answered.closedAt, fresh.closedAt) - started).toBeLessThan(500);
    expect(await waitFor(() => calledBack, 1000)).toBe(true);
    expect(answered.finals()).toHaveLength(1);
    expect(fresh.bytes.length).toBe(0);
    expect(lean.stats()).toEqual({ answered: 1, handedOff: 0 });
  });

  it("lets a busy lean connection finish its answer with `Connection: close`, then calls back", async () => {
    const { lean, release, busy } = await busyConnection("busy1");
    const idle = await Peer.open(lean.port);
    await idle.write(put("i2"));
    await idle.waitForAnswers(1);

    let calledBack = false;
    lean.server.close(() => (calledBack = true));
    expect(await idle.waitForClose(1000)).toBe(true);
    await delay(100);
    expect(busy.closed).toBe(false);
    expect(busy.bytes.length).toBe(0);
    expect(calledBack).toBe(false);

    release();
    const [answer] = await busy.waitForAnswers(1);
    expect(answer.statusLine).toBe("HTTP/1.1 200 OK");
    expect(answer.body).toBe("{}");
    expect(answer.headers.map(([n]) => n)).toEqual(["Content-Type", "Content-Length", "Date", "Connection"]);
    expect(answer.headers.find(([n]) => n === "Connection")?.[1]).toBe("close");
    expect(await busy.waitForClose(1000)).toBe(true);
    expect(busy.finals()).toHaveLength(1);
    expect(await waitFor(() => calledBack, 1000)).toBe(true);
    expect(lean.stats()).toEqual({ answered: 2, handedOff: 0 });
  });

  it("closeAllConnections() closes a busy lean connection without an answer", async () => {
    const { lean, release, busy } = await busyConnection("busy2");
    lean.server.closeAllConnections();
    expect(await busy.waitForClose(1000)).toBe(true);
    release();
    await delay(20);
    expect(busy.bytes.length).toBe(0);
    expect(lean.stats()).toEqual({ answered: 0, handedOff: 0 });
  });
});

describe("peers that close", () => {
  let lean: Target;
  beforeAll(async () => {
    lean = await startApp("lean");
  });

  it("answers a peer that half-closes after a whole transaction, with `Connection: close`", async () => {
    const peer = await Peer.open(lean.port);
    const before = lean.stats();
    await peer.write(put("slowend"));
    peer.socket.end();
    expect(await peer.waitForClose()).toBe(true);
    const [answer] = peer.finals();
    expect(answer.statusLine).toBe("HTTP/1.1 200 OK");
    expect(answer.body).toBe("{}");
    expect(answer.headers.find(([n]) => n === "Connection")?.[1]).toBe("close");
    expect(delta(before, lean.stats())).toEqual({ answered: 1, handedOff: 0 });
    expect(txnIds(lean.calls.filter((c) => c.txnId === "slowend"))).toEqual(["slowend"]);
  });

  it.each([
    ["half-closes", (s: Socket) => void s.end()],
    ["closes", (s: Socket) => void s.destroy()],
  ])("gives a peer that %s mid-body no answer, and the handler nothing", async (_how, close) => {
    const bytes = put("cut");
    const peer = await Peer.open(lean.port);
    const before = lean.stats();
    await peer.write(bytes.subarray(0, bytes.indexOf("\r\n\r\n") + 20));
    await delay(20);
    close(peer.socket);
    expect(await peer.waitForClose()).toBe(true);
    await delay(50);
    expect(peer.bytes.length).toBe(0);
    expect(lean.calls.filter((c) => c.txnId === "cut")).toEqual([]);
    expect(delta(before, lean.stats())).toEqual({ answered: 0, handedOff: 0 });
  });
});

// ---------------------------------------------------------------------------------------------
// Divergences from node:http these tests found in the first version, now fixed. Each case shows
// what node:http does (the control test), then requires the same of the lean server.

describe("where the lean path once differed from node:http", () => {
  describe("`Proxy-Connection: close` (llhttp takes it as `Connection`)", () => {
    const tinyPut = (extra: string[]): Buffer => request(["PUT /tiny/pc HTTP/1.1", "Host: x", ...extra, "Content-Length: 2"], "hi");

    it("control: node:http answers it with `Connection: close` and closes", async () => {
      const reference = await startTiny("reference");
      const answer = await exchange(reference.port, tinyPut(["Proxy-Connection: close"]));
      expect(answer.text).toContain("\r\nConnection: close\r\n");
      expect(answer.closedByServer).toBe(true);
    });

    it("the lean path answers it as node:http does", async () => {
      const [lean, reference] = await Promise.all([startTiny("lean"), startTiny("reference")]);
      const bytes = tinyPut(["Proxy-Connection: close"]);
      const [fromLean, fromReference] = await Promise.all([exchange(lean.port, bytes), exchange(reference.port, bytes)]);
      expect(fromLean).toEqual(fromReference);
    });
  });

  describe("a peer that keeps its side open after an answer with `Connection: close`", () => {
    async function openAfterClose(t: TinyTarget): Promise<{ peer: Peer; connections: () => Promise<number> }> {
      const peer = await Peer.open(t.port, { allowHalfOpen: true });
      await peer.write(request(["PUT /tiny/ho HTTP/1.1", "Host: x", "Connection: close", "Content-Length: 2"], "hi"));
      await peer.waitForAnswers(1);
      expect(await waitFor(() => peer.ended, 1000)).toBe(true);
      const connections = (): Promise<number> => new Promise((resolve) => t.server.getConnections((_e, n) => resolve(n)));
      return { peer, connections };
    }

    it("control: node:http closes the connection after the answer", async () => {
      const reference = await startTiny("reference");
      const { peer, connections } = await openAfterClose(reference);
      expect(await waitFor(async () => (await connections()) === 0, 300)).toBe(true);
      peer.socket.destroy();
    });

    it("the lean server closes it too (it ended only its side, with no timer left to close it)", async () => {
      const lean = await startTiny("lean");
      const { peer, connections } = await openAfterClose(lean);
      try {
        expect(await waitFor(async () => (await connections()) === 0, 300)).toBe(true);
      } finally {
        peer.socket.destroy();
      }
    });
  });

  describe("server.close() while a peer that sent far ahead waits for an answer", () => {
    /** A held request, then more than 8 KiB + maxBodyBytes of pipelined requests in two writes; close(); release; the peer closes. */
    async function closeWhileFarAhead(t: TinyTarget): Promise<() => boolean> {
      const held = t.hold();
      const peer = await Peer.open(t.port);
      await peer.write(request(["PUT /tiny/hold HTTP/1.1", "Host: x", "Content-Length: 2"], "hi"));
      expect(await waitFor(held.started, 1000)).toBe(true);
      const ahead = request(["PUT /tiny/a HTTP/1.1", "Host: x", "Content-Length: 2"], "hi");
      const burst = Buffer.concat(Array.from({ length: Math.ceil(12_000 / ahead.length) }, () => ahead));
      await peer.write(burst);
      await delay(30);
      await peer.write(burst);
      await delay(30);
      let calledBack = false;
      t.server.close(() => (calledBack = true));
      held.release();
      const [answer] = await peer.waitForAnswers(1);
      expect(answer.status).toBe(200);
      peer.socket.destroy();
      return () => calledBack;
    }

    it("control: node:http calls back once the peer has gone", async () => {
      const reference = await startTiny("reference");
      const calledBack = await closeWhileFarAhead(reference);
      expect(await waitFor(calledBack, 1000)).toBe(true);
    });

    it("the lean server calls back too (the paused socket never saw the peer's end)", async () => {
      const lean = await startTiny("lean");
      const calledBack = await closeWhileFarAhead(lean);
      try {
        expect(await waitFor(calledBack, 500)).toBe(true);
      } finally {
        lean.server.closeAllConnections();
      }
    });
  });

  describe("a head trickled in, a byte at a time, slower than headersTimeout allows", () => {
    // keepAliveTimeout 100 ms, headersTimeout 150 ms (checked every 25 ms); one byte every 10 ms, for 0.8 s.
    const configure = (server: Server): void => {
      Object.assign(server, { connectionsCheckingInterval: 25 });
      server.headersTimeout = 150;
      server.requestTimeout = 5000;
      server.keepAliveTimeout = 100;
    };
    const bytes = request(["PUT /tiny/trickle HTTP/1.1", "Host: x", `X-Pad: ${"p".repeat(20)}`, "Content-Length: 2"], "hi");
    async function trickle(port: number): Promise<string> {
      const peer = await Peer.open(port);
      for (let i = 0; i < bytes.length && !peer.closed && peer.bytes.length === 0; i++) {
        await peer.write(bytes.subarray(i, i + 1)).catch(() => undefined);
        await delay(10);
      }
      await peer.waitForAnswers(1, 1000);
      peer.socket.destroy();
      return peer.text;
    }
    let fromLean: Promise<string>;
    let fromReference: Promise<string>;
    beforeAll(async () => {
      const [lean, reference] = await Promise.all([startTiny("lean", configure), startTiny("reference", configure)]);
      fromLean = trickle(lean.port);
      fromReference = trickle(reference.port);
      // Neither rejects; awaited in the tests.
      await Promise.all([fromLean, fromReference]);
    });

    it("control: node:http refuses it with 408 once headersTimeout has passed", async () => {
      expect(await fromReference).toBe("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n");
    });

    it("the lean server hands it to node:http, which refuses it alike (the idle timer restarts on every byte)", async () => {
      expect(await fromLean).toBe(await fromReference);
    });
  });
});
