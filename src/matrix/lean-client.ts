/**
 * HTTP/1.1 to a homeserver on plain `http:` (the hive's tuwunel on loopback), on bare sockets.
 * node:http's client builds a ClientRequest, an IncomingMessage, two streams and an agent's
 * bookkeeping for every request: 60–200 µs of CPU each on a 2-core VM, where this client needs
 * 17–60 µs (a loop of keep-alive POSTs, 8 and 1 in flight). A thousand agents make five thousand
 * requests to be onboarded. `https:` homeservers keep node:https (see transport.ts).
 *
 * What it does, and no more: one request at a time per connection (no pipelining), keep-alive with
 * a bounded pool, `Content-Length`, chunked and read-until-close response bodies, interim 1xx
 * answers skipped. What it refuses, as node:http does: a method that is not a token, a path or a
 * header value with a control character or a byte outside ASCII (no header injection), and a
 * response it cannot frame (malformed status line or headers, a bad chunk, a repeated
 * Content-Length or one next to Transfer-Encoding, a head over 64 KiB), which fails the request
 * and closes the connection; so does a read-until-close body cut by a reset.
 *
 * Failures keep node:http's meaning for the transport's retries: `unsent` when the request cannot
 * have reached the server (connection refused, or still waiting for a connection when it timed
 * out), `stale` when a pooled connection failed before any byte of the answer (the server had
 * closed it while idle, or went away after reading the request).
 */
import { connect, type Socket } from "node:net";

export interface LeanResponse {
  status: number;
  statusText: string;
  /** Lower-case names; repeated fields joined with ", ". */
  headers: Record<string, string>;
  text: string;
}

/**
 * A failure before a whole response: `reason` is a code for logs and metrics; `unsent` when the
 * request cannot have been applied; `stale` when it failed on a pooled connection before any answer.
 */
export class NetworkError extends Error {
  constructor(
    readonly reason: string,
    readonly unsent: boolean,
    readonly stale = false,
  ) {
    super(reason);
  }
}

/** A header value it writes: tab and printable ASCII (node:http also takes latin1 bytes; nothing here sends them). */
const INVALID_HEADER_VALUE = /[^\t\x20-\x7e]/;
/** A request target: printable ASCII, no spaces (a URL's pathname and search are percent-encoded). */
const VALID_TARGET = /^\/[\x21-\x7e]*$/;
/** An HTTP token: a header name, or a method. */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Methods whose requests node:http sends without a length when they have no body. */
const NO_BODY_METHODS = new Set(["GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"]);
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/;
const MAX_HEAD_BYTES = 64 * 1024;
const MAX_CHUNK_LINE_BYTES = 4096;
const CRLF = Buffer.from("\r\n");
const HEAD_END = Buffer.from("\r\n\r\n");

class ProtocolError extends Error {}

interface Head {
  status: number;
  statusText: string;
  headers: Record<string, string>;
  keepAlive: boolean;
}

/**
 * Parses one response at a time from the bytes of a connection. `push` returns the response once
 * it is whole; `finish` is called when the connection closed (a read-until-close body ends there).
 */
class ResponseParser {
  private pending: Buffer = Buffer.alloc(0);
  private head: Head | undefined;
  private body: Buffer[] = [];
  /** Body framing once the head is read: bytes left (length), chunked, or until the connection closes. */
  private framing: "length" | "chunked" | "close" = "length";
  private remaining = 0;
  private chunkState: "size" | "data" | "data-end" | "trailers" = "size";
  /** Bytes after the response (a server that sends more than it was asked): the connection is not reused. */
  trailing = false;
  /** The answer to a HEAD request has no body, whatever its Content-Length says. */
  private headRequest = false;

  reset(headRequest: boolean): void {
    this.headRequest = headRequest;
    this.pending = Buffer.alloc(0);
    this.head = undefined;
    this.body = [];
    this.trailing = false;
  }

  push(data: Buffer): (LeanResponse & { keepAlive: boolean }) | undefined {
    this.pending = this.pending.length === 0 ? data : Buffer.concat([this.pending, data]);
    while (!this.head) {
      const end = this.pending.indexOf(HEAD_END);
      if (end < 0) {
        if (this.pending.length > MAX_HEAD_BYTES) throw new ProtocolError("response head too large");
        return undefined;
      }
      if (end > MAX_HEAD_BYTES) throw new ProtocolError("response head too large");
      const head = parseHead(this.pending.toString("latin1", 0, end));
      this.pending = this.pending.subarray(end + 4);
      // Interim answers (100 Continue, 103 Early Hints) precede the real one.
      if (head.status >= 100 && head.status < 200) continue;
      this.head = head;
      this.frame(head);
    }
    if (this.framing === "length") return this.takeBody() ? this.complete() : undefined;
    if (this.framing === "chunked") return this.chunked() ? this.complete() : undefined;
    if (this.pending.length > 0) this.body.push(this.pending);
    this.pending = Buffer.alloc(0);
    return undefined;
  }

  /** The connection closed: the response, when its body was to end there. */
  finish(): (LeanResponse & { keepAlive: boolean }) | undefined {
    if (this.head && this.framing === "close") return this.complete();
    return undefined;
  }

  private frame(head: Head): void {
    const te = head.headers["transfer-encoding"];
    const cl = head.headers["content-length"];
    this.body = [];
    if (te !== undefined && cl !== undefined) throw new ProtocolError("both Transfer-Encoding and Content-Length");
    if (this.headRequest || head.status === 204 || head.status === 304) {
      this.framing = "length";
      this.remaining = 0;
    } else if (te !== undefined) {
      // Chunked only as the last coding; anything else is read until the connection closes.
      const codings = te.split(",").map((c) => c.trim().toLowerCase());
      if (codings[codings.length - 1] === "chunked") {
        this.framing = "chunked";
        this.chunkState = "size";
      } else {
        this.framing = "close";
        head.keepAlive = false;
      }
    } else if (cl !== undefined) {
      // A repeated field was joined with ", " (parseHead): not digits any more, refused like a bad one.
      if (!/^\d{1,15}$/.test(cl)) throw new ProtocolError("bad Content-Length");
      this.framing = "length";
      this.remaining = Number(cl);
    } else {
      this.framing = "close";
      head.keepAlive = false;
    }
  }

  /** Moves up to `remaining` body bytes from what was read into the body; true once none remain. */
  private takeBody(): boolean {
    const take = Math.min(this.remaining, this.pending.length);
    if (take > 0) this.body.push(this.pending.subarray(0, take));
    this.remaining -= take;
    this.pending = this.pending.subarray(take);
    return this.remaining === 0;
  }

  /** Consumes chunked body bytes; true once the last chunk and the trailers are read. */
  private chunked(): boolean {
    for (;;) {
      if (this.chunkState === "data") {
        if (!this.takeBody()) return false;
        this.chunkState = "data-end";
      }
      const eol = this.pending.indexOf(CRLF);
      if (eol < 0) {
        if (this.pending.length > MAX_CHUNK_LINE_BYTES) throw new ProtocolError("bad chunk");
        return false;
      }
      const line = this.pending.toString("latin1", 0, eol);
      this.pending = this.pending.subarray(eol + 2);
      if (this.chunkState === "data-end") {
        if (line !== "") throw new ProtocolError("bad chunk");
        this.chunkState = "size";
      } else if (this.chunkState === "size") {
        const size = line.split(";")[0].trim();
        if (!/^[0-9a-fA-F]{1,12}$/.test(size)) throw new ProtocolError("bad chunk");
        this.remaining = parseInt(size, 16);
        this.chunkState = this.remaining === 0 ? "trailers" : "data";
      } else if (line === "") {
        // trailers end with an empty line
        return true;
      }
    }
  }

  private complete(): LeanResponse & { keepAlive: boolean } {
    const head = this.head as Head;
    const text = this.body.length === 1 ? this.body[0].toString("utf8") : Buffer.concat(this.body).toString("utf8");
    this.trailing = this.pending.length > 0;
    this.head = undefined;
    this.body = [];
    this.pending = Buffer.alloc(0);
    return { status: head.status, statusText: head.statusText, headers: head.headers, text, keepAlive: head.keepAlive };
  }
}

function parseHead(text: string): Head {
  const lines = text.split("\r\n");
  const status = STATUS_LINE.exec(lines[0]);
  if (!status) throw new ProtocolError("bad status line");
  const headers: Record<string, string> = {};
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    // Obsolete line folding (a line starting with whitespace) and nameless lines are refused.
    if (!HEADER_NAME.test(name)) throw new ProtocolError("bad header line");
    const key = name.toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[key] = key in headers ? `${headers[key]}, ${value}` : value;
  }
  const connection = (headers.connection ?? "").toLowerCase();
  const keepAlive = status[1] === "1" ? !/(?:^|,)\s*close\s*(?:,|$)/.test(connection) : /(?:^|,)\s*keep-alive\s*(?:,|$)/.test(connection);
  return { status: Number(status[2]), statusText: status[3] ?? "", headers, keepAlive };
}

/**
 * How long the server keeps an idle connection, less a second, from `Keep-Alive: timeout=N` (as
 * node's http.Agent reads it: a connection the server is about to close is not used again).
 */
function serverKeepAliveMs(hint: string | undefined): number {
  const seconds = hint === undefined ? undefined : /^timeout=(\d+)/.exec(hint)?.[1];
  return seconds === undefined ? Infinity : Math.max(0, Number(seconds) * 1000 - 1000);
}

function withoutKeepAlive(response: LeanResponse & { keepAlive: boolean }): LeanResponse {
  return { status: response.status, statusText: response.statusText, headers: response.headers, text: response.text };
}

interface Exchange {
  resolve: (response: LeanResponse) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | undefined;
  settled: boolean;
  /** Written on a connection that had served a request before. */
  reused: boolean;
  /** Any byte of the answer arrived. */
  answered: boolean;
  /** A HEAD request (its answer has no body). */
  head: boolean;
  conn: Conn | undefined;
}

interface Conn {
  socket: Socket;
  parser: ResponseParser;
  exchange: Exchange | undefined;
  served: number;
  idleSince: number;
  /** How long it may stay idle and still be used: idleMs, or less when the server announces a shorter keep-alive. */
  maxIdleMs: number;
  closed: boolean;
  /** The error the socket reported before closing (its code names the failure). */
  error: string | undefined;
}

export interface LeanClientOptions {
  /** Most connections open at once; further requests wait for a free one. */
  maxSockets: number;
  /** A connection idle for longer is not used again, but closed (the server may be closing it). */
  idleMs: number;
}

export class LeanHttpClient {
  private readonly host: string;
  private readonly port: number;
  private readonly hostHeader: string;
  /** Idle connections, the most recently used last. */
  private readonly idle: Conn[] = [];
  private readonly busy = new Set<Conn>();
  private open = 0;
  /** Requests waiting for a connection (at maxSockets), in order. */
  private readonly waiting: Array<{ exchange: Exchange; data: string }> = [];

  constructor(
    baseUrl: URL,
    private readonly options: LeanClientOptions,
  ) {
    if (baseUrl.protocol !== "http:") throw new Error(`the lean client speaks plain http only, not ${baseUrl.protocol}`);
    this.host = baseUrl.hostname.replace(/^\[(.*)\]$/, "$1");
    this.port = baseUrl.port ? Number(baseUrl.port) : 80;
    this.hostHeader = baseUrl.host;
  }

  /**
   * Sends one request (`target`: the path and query, already encoded) and resolves with the whole
   * response; rejects with a NetworkError, or a TypeError for a request it refuses to write.
   */
  send(
    method: string,
    target: string,
    headers: Record<string, string>,
    payload: string | undefined,
    timeoutMs: number,
  ): Promise<LeanResponse> {
    if (!HEADER_NAME.test(method)) throw new TypeError(`invalid HTTP method`);
    if (!VALID_TARGET.test(target)) throw new TypeError(`request path contains unescaped characters`);
    let data = `${method} ${target} HTTP/1.1\r\nHost: ${this.hostHeader}\r\n`;
    for (const name in headers) {
      const value = headers[name];
      if (!HEADER_NAME.test(name) || INVALID_HEADER_VALUE.test(value)) throw new TypeError(`invalid character in header "${name}"`);
      data += `${name}: ${value}\r\n`;
    }
    if (payload !== undefined) data += `Content-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`;
    else data += NO_BODY_METHODS.has(method) ? "\r\n" : "Content-Length: 0\r\n\r\n";
    return new Promise<LeanResponse>((resolve, reject) => {
      const exchange: Exchange = {
        resolve,
        reject,
        timer: undefined,
        settled: false,
        reused: false,
        answered: false,
        head: method === "HEAD",
        conn: undefined,
      };
      exchange.timer = setTimeout(() => {
        const conn = exchange.conn;
        // Still waiting for a connection: nothing was written.
        this.settle(exchange, new NetworkError("timeout", conn === undefined));
        if (conn) conn.socket.destroy();
      }, timeoutMs);
      const conn = this.take();
      if (conn) this.start(conn, exchange, data);
      else this.waiting.push({ exchange, data });
    });
  }

  /** Closes every connection (at shutdown): requests in progress and waiting fail. Later requests open new ones. */
  close(): void {
    for (const { exchange } of this.waiting.splice(0)) this.settle(exchange, new NetworkError("closed", true));
    for (const conn of this.idle.splice(0)) conn.socket.destroy();
    for (const conn of this.busy) conn.socket.destroy();
  }

  /** The first waiting request that has not timed out meanwhile. */
  private nextWaiting(): { exchange: Exchange; data: string } | undefined {
    for (let next = this.waiting.shift(); next; next = this.waiting.shift()) if (!next.exchange.settled) return next;
    return undefined;
  }

  /** An idle connection fresh enough to use, or a new one while under maxSockets. */
  private take(): Conn | undefined {
    const now = Date.now();
    for (let conn = this.idle.pop(); conn; conn = this.idle.pop()) {
      if (conn.closed) continue;
      if (now - conn.idleSince < conn.maxIdleMs) return conn;
      conn.socket.destroy();
    }
    if (this.open >= this.options.maxSockets) return undefined;
    return this.connect();
  }

  private connect(): Conn {
    const socket = connect({ host: this.host, port: this.port });
    // As node's http.Agent sets them.
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 1000);
    const conn: Conn = {
      socket,
      parser: new ResponseParser(),
      exchange: undefined,
      served: 0,
      idleSince: 0,
      maxIdleMs: this.options.idleMs,
      closed: false,
      error: undefined,
    };
    this.open++;
    socket.on("data", (data: Buffer) => this.onData(conn, data));
    socket.on("error", (err: NodeJS.ErrnoException) => {
      conn.error ??= err.code ?? err.message;
    });
    socket.on("close", () => this.onClose(conn));
    return conn;
  }

  private start(conn: Conn, exchange: Exchange, data: string): void {
    exchange.conn = conn;
    exchange.reused = conn.served > 0;
    conn.served++;
    conn.exchange = exchange;
    conn.parser.reset(exchange.head);
    this.busy.add(conn);
    conn.socket.ref();
    conn.socket.write(data);
  }

  private onData(conn: Conn, data: Buffer): void {
    const exchange = conn.exchange;
    if (!exchange) {
      // Bytes nobody asked for: the connection cannot be trusted with the next request.
      conn.socket.destroy();
      return;
    }
    exchange.answered = true;
    let response: ReturnType<ResponseParser["push"]>;
    try {
      response = conn.parser.push(data);
    } catch (err) {
      this.settle(exchange, new NetworkError(`bad response (${(err as Error).message})`, false));
      conn.socket.destroy();
      return;
    }
    if (!response) return;
    conn.exchange = undefined;
    this.busy.delete(conn);
    this.settle(exchange, withoutKeepAlive(response));
    conn.maxIdleMs = Math.min(this.options.idleMs, serverKeepAliveMs(response.headers["keep-alive"]));
    if (response.keepAlive && conn.maxIdleMs > 0 && !conn.parser.trailing) this.release(conn);
    else conn.socket.destroy();
  }

  private release(conn: Conn): void {
    const next = this.nextWaiting();
    if (next) {
      this.start(conn, next.exchange, next.data);
      return;
    }
    conn.idleSince = Date.now();
    conn.socket.unref();
    this.idle.push(conn);
  }

  private onClose(conn: Conn): void {
    conn.closed = true;
    this.open--;
    this.busy.delete(conn);
    const exchange = conn.exchange;
    conn.exchange = undefined;
    if (exchange && !exchange.settled) {
      // A body read until the close ends there, unless a reset cut it.
      const response = conn.error === undefined ? conn.parser.finish() : undefined;
      if (response) this.settle(exchange, withoutKeepAlive(response));
      else {
        const reason = conn.error ?? "ECONNRESET";
        this.settle(exchange, new NetworkError(reason, reason === "ECONNREFUSED", exchange.reused && !exchange.answered));
      }
    }
    // A slot is free: the first waiting request gets a new connection.
    if (this.open >= this.options.maxSockets) return;
    const next = this.nextWaiting();
    if (next) this.start(this.take() as Conn, next.exchange, next.data);
  }

  private settle(exchange: Exchange, outcome: LeanResponse | Error): void {
    if (exchange.settled) return;
    exchange.settled = true;
    clearTimeout(exchange.timer);
    if (outcome instanceof Error) exchange.reject(outcome);
    else exchange.resolve(outcome);
  }
}
