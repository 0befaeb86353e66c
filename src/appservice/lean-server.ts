/**
 * The appservice's listener: a node:http server whose connections start on bare sockets. Requests
 * the lean transaction path takes are read and answered here, without node:http's per-request
 * objects, streams and events. A transaction arriving alone on an idle process (one per
 * membership while agents join) costs about half the CPU it costs through node:http: 210–260 µs
 * against 430–570 on a 2-core VM, measured apart.
 *
 * The first request the lean path does not take goes to node:http's own connection handling, from
 * its first byte. A well-formed one (another route, such as the ping the service asks for at
 * start, or a chunked body) is answered there with `Connection: close`, so that the homeserver,
 * which keeps one connection for everything, sends its next transaction on a new connection that
 * starts here again. A head the lean path does not parse stays with node:http for good.
 *
 * Only what is plain is taken here: `PUT`, HTTP/1.1, a head of at most 8 KiB that has arrived
 * whole, header lines of visible ASCII, no header named twice, a Host, a Content-Length of digits
 * within the body limit, no Transfer-Encoding, Expect or Upgrade, a Connection of `keep-alive` or
 * `close`, and whatever the route itself asks (http.ts: a transaction lean-transactions.ts takes,
 * with the right hs_token, so no one else makes this buffer a body). Everything else (other
 * routes, chunked bodies, a request too large, a malformed one) is node:http's, with its own
 * parser, limits and timeouts, so nothing outside that plain subset depends on the code here.
 *
 * Answers are those of node:http: the same status line, `Date`, `Connection` and `Keep-Alive`
 * headers; an idle connection is closed after the server's `keepAliveTimeout`; a request that has
 * not arrived whole by then goes to node:http, which then applies its headers and request timeouts.
 */
import { STATUS_CODES, createServer, type IncomingHttpHeaders, type RequestListener, type Server } from "node:http";
import type { Socket } from "node:net";
import type { Reply } from "./lean-transactions";

/** Answers a request read whole: `raw` is its body; `reply` writes the answer (once). */
export type BodyHandler = (raw: Buffer, reply: Reply) => void;

/** Decides from the request line and headers: a handler for the body, or undefined to hand the connection to node:http. */
export type SocketRoute = (method: string, url: string, headers: IncomingHttpHeaders) => BodyHandler | undefined;

export interface LeanServerOptions {
  /** Bodies above this go to node:http, which refuses them as the route there does. */
  maxBodyBytes: number;
}

/** A node:http server (listen, close, closeIdleConnections, keepAliveTimeout as usual) with the counts of its lean path. */
export interface LeanServer extends Server {
  /** Requests answered on bare sockets; connections handed to node:http. */
  readonly leanStats: { answered: number; handedOff: number };
}

/** Heads larger than this go to node:http (whose own limit is 16 KiB). */
const MAX_HEAD = 8192;
const HEAD_END = Buffer.from("\r\n\r\n");
const REQUEST_LINE = /^([A-Z]+) ([\x21-\x7e]+) HTTP\/1\.1$/;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** A header value as taken here: visible ASCII and inner spaces or tabs, nothing at its end to trim. */
const VALUE = /^(?:[\x21-\x7e][\t\x20-\x7e]*)?$/;
const TRAILING_SPACE = /[\t ]$/;
const DIGITS = /^[0-9]{1,15}$/;

let dateSecond = -1;
let dateText = "";
/** The Date header node:http sends, computed once a second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(now).toUTCString();
  }
  return dateText;
}

interface ParsedHead {
  handler: BodyHandler;
  close: boolean;
  bodyLength: number;
}

/** A parsed head whose body is being read: `bodyStart` is the head's length with its blank line. */
type Head = ParsedHead & { bodyStart: number };

/**
 * Parses a head (request line and header lines, without the blank line); linear in its length.
 * "declined": a well-formed head the lean path does not take (another route, no Content-Length, a
 * chunked body...), for node:http to answer on this connection, which it then closes. Undefined:
 * a head the lean path does not parse; the connection is node:http's for good.
 */
function parseHead(text: string, route: SocketRoute, maxBodyBytes: number): ParsedHead | "declined" | undefined {
  const lines = text.split("\r\n");
  const request = REQUEST_LINE.exec(lines[0]);
  if (!request) return undefined;
  const headers: IncomingHttpHeaders = {};
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(":");
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon);
    let start = colon + 1;
    while (start < line.length && (line.charCodeAt(start) === 32 || line.charCodeAt(start) === 9)) start++;
    const value = line.slice(start);
    if (!TOKEN.test(name) || !VALUE.test(value) || TRAILING_SPACE.test(value)) return undefined;
    const key = name.toLowerCase();
    if (Object.hasOwn(headers, key)) return undefined;
    headers[key] = value;
  }
  const length = headers["content-length"];
  const connection = headers.connection?.toLowerCase();
  if (
    headers.host === undefined ||
    length === undefined ||
    !DIGITS.test(length) ||
    Number(length) > maxBodyBytes ||
    headers["transfer-encoding"] !== undefined ||
    headers.expect !== undefined ||
    headers.upgrade !== undefined ||
    // llhttp reads it as Connection.
    headers["proxy-connection"] !== undefined ||
    (connection !== undefined && connection !== "keep-alive" && connection !== "close")
  ) {
    return "declined";
  }
  const handler = route(request[1], request[2], headers);
  if (!handler) return "declined";
  return { handler, close: connection === "close", bodyLength: Number(length) };
}

/** One connection while it is on the lean path. */
class LeanConnection {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private head: Head | undefined;
  private busy = false;
  private parsing = false;
  private paused = false;
  private ended = false;
  private closeAfter = false;
  private gone = false;
  /** The answer said `Connection: close`: nothing more is read or answered. */
  private finished = false;
  private answeredOne = false;
  /** When the first byte of the request being read arrived. */
  private requestStarted = 0;

  constructor(
    private readonly socket: Socket,
    private readonly server: Server,
    private readonly route: SocketRoute,
    private readonly maxBodyBytes: number,
    private readonly handOff: (socket: Socket, once: boolean) => void,
    private readonly answered: () => void,
    private readonly forget: (connection: LeanConnection) => void,
  ) {
    socket.on("data", this.onData);
    socket.on("end", this.onEnd);
    socket.on("error", this.onError);
    socket.on("close", this.onClose);
    socket.on("timeout", this.onTimeout);
    socket.setTimeout(idleTimeout(server));
  }

  /** Closes the connection if it is between requests (the server is closing). */
  closeIfIdle(): void {
    if (!this.busy && this.buffered === 0) this.socket.destroy();
    else this.closeAfter = true;
  }

  /** Closes the connection now, answer pending or not. */
  destroy(): void {
    this.socket.destroy();
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.finished) return;
    if (this.buffered === 0 && !this.busy) this.requestStarted = Date.now();
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.busy) {
      // A client that sends ahead while an answer is pending waits for it: read no further than one request.
      if (this.buffered > MAX_HEAD + this.maxBodyBytes && !this.paused) {
        this.paused = true;
        this.socket.pause();
      }
      return;
    }
    this.parse();
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    if (this.busy) return;
    // A request cut short: the peer is gone, nobody to answer (node:http's route does the same).
    if (this.buffered > 0) this.socket.destroy();
    else this.socket.end();
  };

  private readonly onError = (): void => {
    this.socket.destroy();
  };

  private readonly onClose = (): void => {
    this.gone = true;
    this.forget(this);
  };

  private readonly onTimeout = (): void => {
    if (this.busy) return;
    // Idle after an answer: closed, as node:http closes a keep-alive connection. A request not
    // here whole (or none yet on a new connection): node:http's, with its own timeouts.
    if ((this.buffered === 0 && this.answeredOne) || this.ended) this.socket.destroy();
    else this.release();
  };

  /**
   * A request trickling in (data often enough that the idle timer never fires) goes to node:http
   * once it has taken longer than the idle timeout, so its headers and request timeouts apply.
   */
  private checkDeadline(): void {
    if (Date.now() - this.requestStarted > idleTimeout(this.server)) this.release();
  }

  /** Takes every whole request buffered, one at a time: the next only after the answer to this one. */
  private parse(): void {
    this.parsing = true;
    try {
      while (!this.busy && !this.gone && !this.finished && this.buffered > 0) {
        if (!this.head) {
          const start = this.peek(MAX_HEAD + HEAD_END.length);
          const end = start.indexOf(HEAD_END);
          if (end < 0) {
            if (start.length >= MAX_HEAD + HEAD_END.length) return this.release();
            return this.checkDeadline();
          }
          const parsed = parseHead(start.toString("latin1", 0, end), this.route, this.maxBodyBytes);
          if (parsed === undefined || parsed === "declined") return this.release(parsed === "declined");
          this.head = { ...parsed, bodyStart: end + HEAD_END.length };
        }
        const head = this.head;
        const total = head.bodyStart + head.bodyLength;
        if (this.buffered < total) return this.checkDeadline();
        const request = this.take(total);
        this.head = undefined;
        this.busy = true;
        this.socket.setTimeout(0);
        head.handler(request.subarray(head.bodyStart), this.replier(head.close));
      }
      if (this.ended && !this.busy && !this.gone && !this.finished) {
        if (this.buffered > 0) this.socket.destroy();
        else this.socket.end();
      }
    } finally {
      this.parsing = false;
    }
  }

  private replier(close: boolean): Reply {
    let done = false;
    return (status, body) => {
      if (done || this.gone || this.socket.destroyed) return;
      done = true;
      const text = JSON.stringify(body);
      const closing = close || this.closeAfter || this.ended || !this.server.listening;
      const keepAlive = closing ? "Connection: close\r\n" : `Connection: keep-alive\r\n${keepAliveHint(this.server)}`;
      this.socket.write(
        `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? "unknown"}\r\n` +
          "Content-Type: application/json; charset=utf-8\r\n" +
          `Content-Length: ${Buffer.byteLength(text)}\r\n` +
          `Date: ${httpDate()}\r\n${keepAlive}\r\n${text}`,
      );
      this.answered();
      this.answeredOne = true;
      this.busy = false;
      if (closing) {
        // Like node:http: requests sent after one answered with `Connection: close` are not read,
        // and the connection is closed once the answer is out, whether or not the peer ends its side.
        this.finished = true;
        this.socket.destroySoon();
        return;
      }
      this.socket.setTimeout(idleTimeout(this.server));
      this.requestStarted = Date.now();
      if (this.paused) {
        this.paused = false;
        this.socket.resume();
      }
      if (!this.parsing) this.parse();
    };
  }

  /** Every buffered byte in one buffer, which then stands for them in `chunks` (a copy only when there were several). */
  private joined(): Buffer {
    if (this.chunks.length > 1) this.chunks.splice(0, this.chunks.length, Buffer.concat(this.chunks, this.buffered));
    return this.chunks[0];
  }

  /** The first `n` buffered bytes (fewer when fewer arrived). */
  private peek(n: number): Buffer {
    const first = this.chunks[0].length >= n ? this.chunks[0] : this.joined();
    return first.length > n ? first.subarray(0, n) : first;
  }

  /** Removes the first `n` bytes (n ≤ buffered) from the buffer and returns them. */
  private take(n: number): Buffer {
    const joined = this.joined();
    this.chunks.length = 0;
    if (joined.length > n) this.chunks.push(joined.subarray(n));
    this.buffered -= n;
    return joined.subarray(0, n);
  }

  /**
   * Gives the connection to node:http, the unread bytes first; `once`: for the request that starts
   * them only (node:http answers it with `Connection: close`).
   */
  private release(once = false): void {
    const socket = this.socket;
    // The peer's end was read here already, and node:http cannot be given it again: a client that
    // half-closes gets answers from the lean path only.
    if (this.ended) {
      socket.destroy();
      return;
    }
    socket.off("data", this.onData);
    socket.off("end", this.onEnd);
    socket.off("error", this.onError);
    socket.off("close", this.onClose);
    socket.off("timeout", this.onTimeout);
    socket.setTimeout(0);
    this.gone = true;
    this.forget(this);
    socket.pause();
    if (this.buffered > 0) socket.unshift(this.joined());
    this.chunks.length = 0;
    this.buffered = 0;
    this.handOff(socket, once);
    // node:http reads the socket's handle directly from here on; what was unshifted reaches it as data first.
    socket.resume();
  }
}

/** How long a connection may wait here between requests; 0 (keep-alive timeout off) still hands a stalled request on. */
function idleTimeout(server: Server): number {
  return server.keepAliveTimeout || 5000;
}

function keepAliveHint(server: Server): string {
  return server.keepAliveTimeout ? `Keep-Alive: timeout=${Math.floor(server.keepAliveTimeout / 1000)}\r\n` : "";
}

/**
 * A node:http server running `listener` whose connections start on the lean path of `route`.
 * node:http's own connection handling stays attached, and takes every connection the lean path
 * gives up.
 */
export function createLeanServer(listener: RequestListener, route: SocketRoute, options: LeanServerOptions): LeanServer {
  // A connection handed over at a well-formed request the lean path does not take (the ping the
  // service asks for at start, a user query, a chunked body) is closed after node:http's answer:
  // homeservers keep one connection for everything, and their next transaction should not stay on
  // node:http for the life of that connection. It comes on a new one, which starts here.
  const once = new WeakSet<Socket>();
  const server = createServer((req, res) => {
    // What node:http does itself for a request that ends its connection: `Connection: close` where
    // node puts it, and the socket closed once the answer is out.
    if (once.has(req.socket)) res.shouldKeepAlive = false;
    listener(req, res);
  }) as LeanServer;
  const nodeListeners = server.listeners("connection");
  // node:http's constructor adds exactly one: its connection listener. Anything else is a node
  // this code does not know; it then serves plainly.
  if (nodeListeners.length !== 1) return Object.assign(server, { leanStats: { answered: 0, handedOff: 0 } });
  const nodeConnection = nodeListeners[0] as (socket: Socket) => void;
  server.removeListener("connection", nodeConnection);
  const stats = { answered: 0, handedOff: 0 };
  const connections = new Set<LeanConnection>();
  const handOff = (socket: Socket, onlyThisRequest: boolean): void => {
    stats.handedOff++;
    if (onlyThisRequest) once.add(socket);
    nodeConnection.call(server, socket);
  };
  server.on("connection", (socket: Socket) => {
    connections.add(
      new LeanConnection(
        socket,
        server,
        route,
        options.maxBodyBytes,
        handOff,
        () => stats.answered++,
        (c) => connections.delete(c),
      ),
    );
  });
  // server.close() calls this too: idle lean connections close now, busy ones after their answer.
  const closeIdle = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {
    closeIdle();
    for (const connection of connections) connection.closeIfIdle();
  };
  const closeAll = server.closeAllConnections.bind(server);
  server.closeAllConnections = () => {
    closeAll();
    for (const connection of connections) connection.destroy();
  };
  return Object.assign(server, { leanStats: stats });
}
