/**
 * The lean HTTP/1.1 client (src/matrix/lean-client.ts) on real sockets, against node:http's client
 * with a keep-alive Agent (what HomeserverTransport uses with `client: "node"`, kept as the
 * reference). The server side is a raw TCP server that reads requests and answers with scripted
 * bytes, split across TCP writes as a case asks, so that framing, splits and malformed answers are
 * exactly what is tested. Nothing of the client is mocked.
 */
import { spawn } from "node:child_process";
import { Agent, createServer as createHttpServer, request as httpRequest } from "node:http";
import { createServer as createNetServer, type AddressInfo, type Socket } from "node:net";
import { join } from "node:path";
import { inspect } from "node:util";
import fc from "fast-check";
import { LeanHttpClient, NetworkError, type LeanResponse } from "../../src/matrix/lean-client";
import { freePort } from "../../dev/server-process";

/** Per request: long enough for a 1 MB body on loopback, short enough that a hang fails quickly. */
const TIMEOUT_MS = 1000;

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 5 ms until it holds; fails after `timeoutMs`. */
async function until(check: () => boolean, timeoutMs = 1000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(5);
  }
}

// ---------------------------------------------------------------------------------------------
// The raw server
// ---------------------------------------------------------------------------------------------

interface RawRequest {
  /** Which connection it came on (0 for the first the server accepted). */
  connection: number;
  /** How many requests that connection carried before this one. */
  onConnection: number;
  method: string;
  target: string;
  /** The head as received, up to and without the empty line. */
  head: string;
  body: Buffer;
  /** The request's bytes as received. */
  raw: Buffer;
}

type Handler = (req: RawRequest, socket: Socket) => void | Promise<void>;

interface RawServer {
  url: URL;
  requests: RawRequest[];
  /** Every byte received, per connection. */
  bytes: Buffer[];
  connections: () => number;
  /** Connections the peer (or the server) closed. */
  closed: () => number;
  /** The most connections open at once. */
  maxOpen: () => number;
  sockets: Socket[];
}

/** A TCP server that reads requests (a head and a Content-Length body) and hands each to `handler`, which writes the answer. */
async function rawServer(handler: Handler, host = "127.0.0.1"): Promise<RawServer> {
  const requests: RawRequest[] = [];
  const bytes: Buffer[] = [];
  const sockets: Socket[] = [];
  let closed = 0;
  let open = 0;
  let maxOpen = 0;
  const server = createNetServer((socket) => {
    const connection = sockets.length;
    sockets.push(socket);
    bytes.push(Buffer.alloc(0));
    open++;
    maxOpen = Math.max(maxOpen, open);
    socket.setNoDelay(true);
    socket.on("error", () => undefined);
    socket.on("close", () => {
      open--;
      closed++;
    });
    let pending = Buffer.alloc(0);
    let onConnection = 0;
    socket.on("data", (data: Buffer) => {
      bytes[connection] = Buffer.concat([bytes[connection], data]);
      pending = Buffer.concat([pending, data]);
      for (;;) {
        const end = pending.indexOf("\r\n\r\n");
        if (end < 0) return;
        const head = pending.toString("latin1", 0, end);
        const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
        if (pending.length < end + 4 + length) return;
        const [method, target] = head.split(" ");
        const req: RawRequest = {
          connection,
          onConnection: onConnection++,
          method,
          target,
          head,
          body: pending.subarray(end + 4, end + 4 + length),
          raw: pending.subarray(0, end + 4 + length),
        };
        pending = pending.subarray(end + 4 + length);
        requests.push(req);
        void handler(req, socket);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return {
    url: new URL(`http://${host.includes(":") ? `[${host}]` : host}:${(server.address() as AddressInfo).port}`),
    requests,
    bytes,
    sockets,
    connections: () => sockets.length,
    closed: () => closed,
    maxOpen: () => maxOpen,
  };
}

/**
 * How an answer is cut into TCP writes (each after a turn of the event loop, so that the client
 * reads them apart): whole, byte by byte, at these offsets, or in pieces of this many bytes.
 */
type Split = "whole" | "bytes" | { at: number[] } | { every: number };

async function write(socket: Socket, data: Buffer | string, split: Split = "whole"): Promise<void> {
  const bytes = Buffer.from(data);
  const cuts =
    split === "whole"
      ? []
      : split === "bytes"
        ? Array.from({ length: bytes.length - 1 }, (_, i) => i + 1)
        : "at" in split
          ? [...new Set(split.at)].filter((c) => c > 0 && c < bytes.length).sort((a, b) => a - b)
          : Array.from({ length: Math.ceil(bytes.length / split.every) - 1 }, (_, i) => (i + 1) * split.every);
  let from = 0;
  for (const to of [...cuts, bytes.length]) {
    if (socket.destroyed) return;
    socket.write(bytes.subarray(from, to));
    from = to;
    if (to < bytes.length) await tick();
  }
}

const ok = (body = '{"ok":true}', extra = ""): string =>
  `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`;

// ---------------------------------------------------------------------------------------------
// The two clients
// ---------------------------------------------------------------------------------------------

function lean(server: RawServer | URL, options: Partial<{ maxSockets: number; idleMs: number }> = {}): LeanHttpClient {
  const client = new LeanHttpClient(server instanceof URL ? server : server.url, { maxSockets: Infinity, idleMs: 4000, ...options });
  cleanups.push(() => client.close());
  return client;
}

/** The reference: node:http's client as HomeserverTransport drives it (keep-alive agent, 4 s idle timeout). */
function nodeAgent(): Agent {
  const agent = new Agent({ keepAlive: true, timeout: 4000 });
  cleanups.push(() => agent.destroy());
  return agent;
}

/** One request through node:http, collecting what the lean client returns (headers: lower-case, repeated ones joined with ", "). */
function nodeSend(
  agent: Agent,
  url: URL,
  method: string,
  target: string,
  headers: Record<string, string>,
  payload: string | undefined,
  timeoutMs = TIMEOUT_MS,
): Promise<LeanResponse & { reusedSocket: boolean }> {
  return new Promise((resolve, reject) => {
    const all = { ...headers };
    if (payload !== undefined) all["Content-Length"] = String(Buffer.byteLength(payload));
    const req = httpRequest({ host: url.hostname, port: url.port, method, path: target, headers: all, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("error", reject);
      res.on("close", () => reject(new Error("closed before the end of the body")));
      res.on("end", () => {
        clearTimeout(timer);
        const flat: Record<string, string> = {};
        for (const [name, value] of Object.entries(res.headers)) if (value !== undefined) flat[name] = [value].flat().join(", ");
        resolve({
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? "",
          headers: flat,
          text: Buffer.concat(chunks).toString("utf8"),
          reusedSocket: req.reusedSocket,
        });
      });
    });
    const timer = setTimeout(() => {
      reject(new Error("timeout"));
      req.destroy();
    }, timeoutMs);
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(Object.assign(err, { reusedSocket: req.reusedSocket }));
    });
    req.end(payload);
  });
}

/** The NetworkError a request failed with (the test fails if it succeeded or failed otherwise). */
async function networkError(request: Promise<unknown>): Promise<{ reason: string; unsent: boolean; stale: boolean }> {
  const err = await request.then(
    (res) => res,
    (e: unknown) => e,
  );
  if (!(err instanceof NetworkError)) throw new Error(`expected a NetworkError, got ${inspect(err)}`);
  const { reason, unsent, stale } = err;
  return { reason, unsent, stale };
}

const fields = ({ status, statusText, headers, text }: LeanResponse): LeanResponse => ({ status, statusText, headers, text });

// ---------------------------------------------------------------------------------------------

describe("the lean client against node:http", () => {
  interface Script {
    name: string;
    method?: string;
    /** Writes the answer to the scripted request. */
    respond: (socket: Socket) => Promise<void>;
    /** What both clients must return. */
    expected: Partial<LeanResponse>;
  }

  /** What a client saw: the scripted answer, then a second request's, and how many connections the two took. */
  async function run(kind: "lean" | "node", script: Script): Promise<{ response: LeanResponse; again: LeanResponse; connections: number }> {
    const server = await rawServer(async (req, socket) => {
      if (req.target === "/again") await write(socket, ok('{"again":true}'));
      else await script.respond(socket);
    });
    const headers = { Accept: "application/json" };
    let send: (target: string, method: string) => Promise<LeanResponse>;
    if (kind === "lean") {
      const client = lean(server);
      send = (target, method) => client.send(method, target, headers, undefined, TIMEOUT_MS);
    } else {
      const agent = nodeAgent();
      send = (target, method) => nodeSend(agent, server.url, method, target, headers, undefined);
    }
    const response = fields(await send("/case", script.method ?? "GET"));
    const again = fields(await send("/again", "GET"));
    return { response, again, connections: server.connections() };
  }

  const json = '{"text":"é ✓ 😀 ünïcødé"}';
  const emojiAt = Buffer.from(json).indexOf(Buffer.from("😀"));
  const megabyte = JSON.stringify({ data: "x".repeat(1024 * 1024 - 11) });

  const scripts: Script[] = [
    {
      name: "a Content-Length body",
      respond: (s) => write(s, ok('{"a":1}', "X-Request-Id: r1\r\n")),
      expected: { status: 200, statusText: "OK", text: '{"a":1}' },
    },
    {
      name: "a chunked body with extensions and trailers, written byte by byte",
      respond: (s) =>
        write(
          s,
          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n" +
            "5;name=value\r\nhello\r\n1;flag\r\n \r\nA\r\n0123456789\r\n0\r\nX-Checksum: abc\r\n\r\n",
          "bytes",
        ),
      expected: { status: 200, text: "hello 0123456789" },
    },
    {
      name: "a chunked head and body written byte by byte, without trailers",
      respond: (s) => write(s, 'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n', "bytes"),
      expected: { status: 201, statusText: "Created", text: '{"a":1}' },
    },
    {
      name: "a body read until the connection closes",
      respond: async (s) => {
        await write(s, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\nall of it, ", "whole");
        await tick();
        await write(s, "until the end");
        s.end();
      },
      expected: { status: 200, text: "all of it, until the end" },
    },
    {
      name: "an HTTP/1.0 answer without Connection: keep-alive (not reused)",
      respond: (s) => write(s, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
      expected: { status: 200, text: "{}" },
    },
    {
      name: "an HTTP/1.0 answer with Connection: keep-alive (used again)",
      respond: (s) => write(s, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}"),
      expected: { status: 200, text: "{}" },
    },
    {
      name: "a Transfer-Encoding other than chunked (read until the connection closes)",
      respond: async (s) => {
        await write(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot really gzip", { at: [30] });
        s.end();
      },
      expected: { status: 200, text: "not really gzip" },
    },
    {
      name: "204 without a body",
      respond: (s) => write(s, "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
      expected: { status: 204, statusText: "No Content", text: "" },
    },
    {
      name: "304 with a Content-Length but no body",
      respond: (s) => write(s, 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n'),
      expected: { status: 304, text: "" },
    },
    {
      name: "interim 100 Continue and 103 Early Hints before the answer",
      respond: (s) =>
        write(s, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + ok('{"final":true}'), {
          at: [10, 25, 60],
        }),
      expected: { status: 200, text: '{"final":true}' },
    },
    {
      name: "repeated headers",
      respond: (s) => write(s, ok("{}", "X-Multi: a\r\nVary: Accept\r\nX-Multi: b\r\nvary: Origin\r\nX-Multi: c\r\n")),
      expected: {
        status: 200,
        headers: expect.objectContaining({ "x-multi": "a, b, c", vary: "Accept, Origin" }) as Record<string, string>,
      },
    },
    {
      name: "a UTF-8 JSON body split inside a multi-byte character",
      respond: async (s) => {
        const head = `HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(json)}\r\n\r\n`;
        const at = Buffer.byteLength(head) + emojiAt;
        await write(s, head + json, { at: [at + 1, at + 2, at + 3] });
      },
      expected: { status: 200, text: json },
    },
    {
      name: "a 1 MB body in many TCP writes",
      respond: (s) => write(s, ok(megabyte), { every: 16 * 1024 }),
      expected: { status: 200, text: megabyte },
    },
    {
      name: "a 1 MB chunked body in 4 KiB chunks",
      respond: async (s) => {
        let body = "";
        for (let i = 0; i < megabyte.length; i += 4096)
          body += `${Math.min(4096, megabyte.length - i).toString(16)}\r\n${megabyte.slice(i, i + 4096)}\r\n`;
        await write(s, `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${body}0\r\n\r\n`, { every: 50_000 });
      },
      expected: { status: 200, text: megabyte },
    },
    {
      name: "header names in mixed case",
      respond: (s) => write(s, "HTTP/1.1 200 OK\r\nCoNtEnT-TyPe: application/json\r\ncontent-LENGTH: 2\r\nRETRY-after: 7\r\n\r\n{}"),
      expected: { status: 200, headers: { "content-type": "application/json", "content-length": "2", "retry-after": "7" } },
    },
    {
      name: "a status line without a reason phrase",
      respond: (s) => write(s, "HTTP/1.1 429\r\nRetry-After: 2\r\nContent-Length: 2\r\n\r\n{}"),
      expected: { status: 429, statusText: "", text: "{}" },
    },
    {
      name: "Connection: close (a new connection next time)",
      respond: (s) => write(s, ok("{}", "Connection: close\r\n")),
      expected: { status: 200, text: "{}" },
    },
    {
      name: "Keep-Alive: timeout=1 (too short to use the connection again)",
      respond: (s) => write(s, ok("{}", "Connection: keep-alive\r\nKeep-Alive: timeout=1\r\n")),
      expected: { status: 200, text: "{}" },
    },
    {
      name: "Keep-Alive: timeout=5, max=100 (used again)",
      respond: (s) => write(s, ok("{}", "Keep-Alive: timeout=5, max=100\r\n")),
      expected: { status: 200, text: "{}" },
    },
    {
      // An answer to HEAD has no body, whatever its Content-Length says (RFC 9112 §6.3): node knows it.
      name: "a HEAD answer, whose Content-Length announces a body that is not sent",
      method: "HEAD",
      respond: (s) => write(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"),
      expected: { status: 200, text: "" },
    },
  ];

  it.each(scripts.map((s) => [s.name, s] as const))("%s", async (_name, script) => {
    const [viaLean, viaNode] = [await run("lean", script), await run("node", script)];
    expect(viaNode.response).toMatchObject(script.expected);
    expect(viaLean.response).toEqual(viaNode.response);
    // The answer leaves the connection as node leaves it: used again or not.
    expect(viaLean.again).toEqual(viaNode.again);
    expect(viaLean.again.text).toBe('{"again":true}');
    expect(viaLean.connections).toBe(viaNode.connections);
  });

  it("returns the same bytes as UTF-8 as node for any body, framing and split (property)", async () => {
    const agent = nodeAgent();
    let answer = Buffer.alloc(0);
    let split: Split = "whole";
    let closeAfter = false;
    const server = await rawServer(async (_req, socket) => {
      await write(socket, answer, split);
      if (closeAfter) socket.end();
    });
    const client = lean(server);
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)),
          fc.string({ unit: "binary", maxLength: 200 }).map((s) => Buffer.from(s)),
        ),
        fc.constantFrom("length", "chunked", "close"),
        fc.array(fc.integer({ min: 1, max: 70 }), { minLength: 1, maxLength: 8 }),
        fc.array(fc.nat({ max: 1200 }), { maxLength: 8 }),
        async (body, framing, chunkSizes, cuts) => {
          let framed: Buffer;
          if (framing === "length") framed = Buffer.concat([Buffer.from(`Content-Length: ${body.length}\r\n\r\n`), body]);
          else if (framing === "close") framed = Buffer.concat([Buffer.from("Connection: close\r\n\r\n"), body]);
          else {
            const parts = [Buffer.from("Transfer-Encoding: chunked\r\n\r\n")];
            for (let i = 0, n = 0; i < body.length; n++) {
              const size = chunkSizes[n % chunkSizes.length];
              const chunk = body.subarray(i, i + size);
              parts.push(Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from("\r\n"));
              i += chunk.length;
            }
            parts.push(Buffer.from("0\r\n\r\n"));
            framed = Buffer.concat(parts);
          }
          answer = Buffer.concat([Buffer.from("HTTP/1.1 200 OK\r\n"), framed]);
          split = { at: cuts };
          closeAfter = framing === "close";
          const viaLean = await client.send("GET", "/p", {}, undefined, TIMEOUT_MS);
          const viaNode = await nodeSend(agent, server.url, "GET", "/p", {}, undefined);
          expect(viaLean.text).toBe(body.toString("utf8"));
          expect(viaLean.text).toBe(viaNode.text);
          expect(viaLean.status).toBe(viaNode.status);
        },
      ),
      { numRuns: 60 },
    );
  });
});

// ---------------------------------------------------------------------------------------------

describe("the request on the wire", () => {
  async function captured(send: (client: LeanHttpClient) => Promise<LeanResponse>): Promise<{ wire: Buffer; port: string }> {
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    await send(lean(server));
    expect(server.requests).toHaveLength(1);
    // Nothing after the request.
    expect(server.bytes[0]).toEqual(server.requests[0].raw);
    return { wire: server.bytes[0], port: server.url.port };
  }

  it("GET: the request line, Host, the headers as given, no Content-Length and no body", async () => {
    const { wire, port } = await captured((c) =>
      c.send(
        "GET",
        "/_matrix/client/v3/sync?since=s1&user_id=%40a%3Ahive",
        { Accept: "application/json", Authorization: "Bearer tok" },
        undefined,
        TIMEOUT_MS,
      ),
    );
    expect(wire.toString("latin1")).toBe(
      "GET /_matrix/client/v3/sync?since=s1&user_id=%40a%3Ahive HTTP/1.1\r\n" +
        `Host: 127.0.0.1:${port}\r\nAccept: application/json\r\nAuthorization: Bearer tok\r\n\r\n`,
    );
  });

  it("POST with a non-ASCII JSON payload: Content-Length is its UTF-8 byte length, the body its UTF-8 bytes", async () => {
    const payload = JSON.stringify({ body: "é ✓ 😀" });
    expect(Buffer.byteLength(payload)).not.toBe(payload.length);
    const { wire, port } = await captured((c) => c.send("POST", "/send", { "Content-Type": "application/json" }, payload, TIMEOUT_MS));
    const expected = Buffer.concat([
      Buffer.from(
        `POST /send HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n`,
      ),
      Buffer.from(payload, "utf8"),
    ]);
    expect(wire).toEqual(expected);
  });

  it("POST without a payload: Content-Length: 0", async () => {
    const { wire, port } = await captured((c) => c.send("POST", "/leave", {}, undefined, TIMEOUT_MS));
    expect(wire.toString("latin1")).toBe(`POST /leave HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 0\r\n\r\n`);
  });

  it("Host is the base URL's host, whatever its path", async () => {
    const server = await rawServer((req, socket) => write(socket, ok(JSON.stringify(req.head))));
    const response = await lean(new URL(`http://127.0.0.1:${server.url.port}/some/base/`)).send("GET", "/x", {}, undefined, TIMEOUT_MS);
    expect(JSON.parse(response.text)).toBe(`GET /x HTTP/1.1\r\nHost: 127.0.0.1:${server.url.port}`);
  });

  it("an IPv6 base URL: connects to the address without brackets, Host with them", async () => {
    const server = await rawServer((req, socket) => write(socket, ok(JSON.stringify(req.head))), "::1");
    expect(server.url.host).toBe(`[::1]:${server.url.port}`);
    const response = await lean(server).send("GET", "/x", {}, undefined, TIMEOUT_MS);
    expect(JSON.parse(response.text)).toBe(`GET /x HTTP/1.1\r\nHost: [::1]:${server.url.port}`);
  });

  it("a body of the same bytes as node:http's, for the same payload", async () => {
    const payload = JSON.stringify({ msg: "ünïcødé ✓ \u2028 😀", n: [1, 2] });
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    await lean(server).send("PUT", "/x", { "Content-Type": "application/json" }, payload, TIMEOUT_MS);
    await nodeSend(nodeAgent(), server.url, "PUT", "/x", { "Content-Type": "application/json" }, payload);
    const [viaLean, viaNode] = server.requests;
    expect(viaLean.body).toEqual(viaNode.body);
    expect(/\r\ncontent-length: (\d+)/i.exec(viaLean.head)?.[1]).toBe(/\r\ncontent-length: (\d+)/i.exec(viaNode.head)?.[1]);
  });
});

// ---------------------------------------------------------------------------------------------

describe("requests it refuses to write", () => {
  const refused: Array<[string, { method?: string; target?: string; headers?: Record<string, string> }]> = [
    ["a header value with CR LF (header injection)", { headers: { Authorization: "Bearer x\r\nX-Injected: 1" } }],
    ["a header value with a bare LF", { headers: { "X-A": "a\nb" } }],
    ["a header value with a NUL", { headers: { "X-A": "a\0b" } }],
    ["a header name with a space", { headers: { "X A": "1" } }],
    ["a header name with CR LF", { headers: { "X-A\r\nX-Injected": "1" } }],
    ["a path with a space", { target: "/a b HTTP/1.1" }],
    ["a path with CR LF", { target: "/a\r\nX-Injected: 1" }],
    // node refuses a method that is not a token (ERR_INVALID_HTTP_TOKEN).
    ["a method with CR LF (request line injection)", { method: "GET / HTTP/1.1\r\nX-Injected: 1\r\nX-Tail:" }],
  ];

  it.each(refused)("%s: a TypeError before anything is written, as node:http", async (_name, r) => {
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    const method = r.method ?? "GET";
    const target = r.target ?? "/x";
    const headers = r.headers ?? {};
    // node's errors come from outside jest's realm: compared by name.
    await expect(nodeSend(nodeAgent(), server.url, method, target, headers, undefined)).rejects.toMatchObject({ name: "TypeError" });
    // Thrown or rejected: either way before any connection is made.
    const viaLean = Promise.resolve().then(() => lean(server).send(method, target, headers, undefined, 200));
    await expect(viaLean).rejects.toMatchObject({ name: "TypeError" });
    await sleep(30);
    expect(server.connections()).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------

describe("answers it cannot frame", () => {
  const bad: Array<[string, string]> = [
    ["a malformed status line", "HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n"],
    ["no status line at all", "<html>hello</html>\r\n\r\n"],
    ["two different Content-Length fields", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"],
    ["a Content-Length listing two values", "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"],
    ["a negative Content-Length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"],
    ["a bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"],
    ["a chunk longer than its size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n"],
    ["a header line without a colon", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nno colon here\r\n\r\n"],
    ["a head over 64 KiB", `HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(65 * 1024)}\r\nContent-Length: 0\r\n\r\n`],
    ["a head over 64 KiB that never ends", `HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(65 * 1024)}`],
  ];

  it.each(bad)("%s: fails with 'bad response', closes the connection, as node:http fails", async (_name, answer) => {
    const server = await rawServer(async (req, socket) => {
      if (req.target === "/again") await write(socket, ok("{}"));
      else await write(socket, answer, { every: 1000 });
    });
    await expect(nodeSend(nodeAgent(), server.url, "GET", "/bad", {}, undefined)).rejects.toThrow();
    const client = lean(server);
    const err = await networkError(client.send("GET", "/bad", {}, undefined, TIMEOUT_MS));
    expect(err.reason).toMatch(/^bad response/);
    expect(err.unsent).toBe(false);
    // The lean client's connection (the second the server accepted) is closed, and not used again.
    await until(() => server.sockets[1].destroyed);
    await expect(client.send("GET", "/again", {}, undefined, TIMEOUT_MS)).resolves.toMatchObject({ status: 200 });
    expect(server.requests.filter((r) => r.connection === 1).map((r) => r.target)).toEqual(["/bad"]);
  });
});

// ---------------------------------------------------------------------------------------------

describe("failures, as the transport's retries read them", () => {
  it("connection refused: ECONNREFUSED, unsent", async () => {
    const port = await freePort();
    const err = await networkError(lean(new URL(`http://127.0.0.1:${port}`)).send("POST", "/x", {}, "{}", TIMEOUT_MS));
    expect(err).toEqual({ reason: "ECONNREFUSED", unsent: true, stale: false });
  });

  /** Answers the first request on a connection; closes the connection on reading the second, without an answer. */
  async function dropsSecond(): Promise<RawServer> {
    return rawServer(async (req, socket) => {
      if (req.onConnection === 0 && req.target !== "/drop") await write(socket, ok("{}"));
      else socket.destroy();
    });
  }

  it("a pooled connection closed after the server read the request: stale, not unsent (node: reusedSocket)", async () => {
    const server = await dropsSecond();
    const client = lean(server);
    await client.send("GET", "/first", {}, undefined, TIMEOUT_MS);
    const err = await networkError(client.send("POST", "/second", {}, "{}", TIMEOUT_MS));
    expect(err).toMatchObject({ unsent: false, stale: true });
    expect(server.requests.map((r) => [r.connection, r.target])).toEqual([
      [0, "/first"],
      [0, "/second"],
    ]);
    // node:http says the same of the same exchange.
    const agent = nodeAgent();
    await nodeSend(agent, server.url, "GET", "/first", {}, undefined);
    await expect(nodeSend(agent, server.url, "POST", "/second", {}, "{}")).rejects.toMatchObject({
      code: "ECONNRESET",
      reusedSocket: true,
    });
  });

  it("a fresh connection closed without an answer: neither stale nor unsent", async () => {
    const server = await dropsSecond();
    const err = await networkError(lean(server).send("POST", "/drop", {}, "{}", TIMEOUT_MS));
    expect(err).toEqual({ reason: "ECONNRESET", unsent: false, stale: false });
    expect(server.requests.map((r) => r.target)).toEqual(["/drop"]);
  });

  it("a connection closed in the middle of a Content-Length body: a failure, not a short answer", async () => {
    const server = await rawServer(async (_req, socket) => {
      await write(socket, 'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"partial":');
      socket.end();
    });
    expect(await networkError(lean(server).send("GET", "/x", {}, undefined, TIMEOUT_MS))).toEqual({
      reason: "ECONNRESET",
      unsent: false,
      stale: false,
    });
  });

  it("a connection closed in the middle of a chunked body: a failure, not a short answer", async () => {
    const server = await rawServer(async (_req, socket) => {
      await write(socket, 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{"partial":\r\n');
      socket.end();
    });
    expect(await networkError(lean(server).send("GET", "/x", {}, undefined, TIMEOUT_MS))).toMatchObject({ unsent: false, stale: false });
  });

  // Without a length only a clean close ends the body: after a reset it may be cut short (node: "aborted").
  it("a read-until-close body cut by a connection reset: a failure, as with node:http", async () => {
    const server = await rawServer(async (_req, socket) => {
      await write(socket, 'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"partial":');
      await sleep(20);
      socket.resetAndDestroy();
    });
    await expect(nodeSend(nodeAgent(), server.url, "GET", "/x", {}, undefined)).rejects.toThrow();
    expect(await networkError(lean(server).send("GET", "/x", {}, undefined, TIMEOUT_MS))).toMatchObject({ unsent: false });
  });

  it("a server that never answers: timeout, not unsent, and the connection is closed", async () => {
    const server = await rawServer(() => undefined);
    const started = Date.now();
    const err = await networkError(lean(server).send("POST", "/x", {}, "{}", 100));
    expect(err).toEqual({ reason: "timeout", unsent: false, stale: false });
    expect(Date.now() - started).toBeLessThan(900);
    await until(() => server.closed() === 1);
  });

  it("a timeout while waiting for a connection at maxSockets: unsent, and the request is never written", async () => {
    let release: (() => void) | undefined;
    const server = await rawServer(async (req, socket) => {
      if (req.target === "/hang") await new Promise<void>((resolve) => (release = resolve));
      await write(socket, ok("{}"));
    });
    const client = lean(server, { maxSockets: 1 });
    const hanging = client.send("GET", "/hang", {}, undefined, 3000);
    const err = await networkError(client.send("POST", "/queued", {}, "{}", 100));
    expect(err).toEqual({ reason: "timeout", unsent: true, stale: false });
    await until(() => release !== undefined);
    release?.();
    await expect(hanging).resolves.toMatchObject({ status: 200 });
    // The freed connection serves the next request, not the one that timed out.
    await expect(client.send("GET", "/next", {}, undefined, TIMEOUT_MS)).resolves.toMatchObject({ status: 200 });
    await sleep(30);
    expect(server.requests.map((r) => r.target)).toEqual(["/hang", "/next"]);
    expect(server.connections()).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------

describe("keep-alive and the pool", () => {
  it("sends sequential requests on one connection", async () => {
    const server = await rawServer((req, socket) => write(socket, ok(JSON.stringify(req.target))));
    const client = lean(server);
    for (let i = 0; i < 5; i++) expect((await client.send("GET", `/${i}`, {}, undefined, TIMEOUT_MS)).text).toBe(`"/${i}"`);
    expect(server.connections()).toBe(1);
    expect(server.requests.map((r) => r.onConnection)).toEqual([0, 1, 2, 3, 4]);
  });

  it("does not use a connection idle for longer than idleMs, and closes it", async () => {
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    const client = lean(server, { idleMs: 50 });
    await client.send("GET", "/a", {}, undefined, TIMEOUT_MS);
    await client.send("GET", "/b", {}, undefined, TIMEOUT_MS);
    expect(server.connections()).toBe(1);
    await sleep(100);
    await client.send("GET", "/c", {}, undefined, TIMEOUT_MS);
    expect(server.requests.map((r) => r.connection)).toEqual([0, 0, 1]);
    await until(() => server.sockets[0].destroyed);
  });

  it("uses a connection idle longer than idleMs at maxSockets: 1 after closing the old one", async () => {
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    const client = lean(server, { idleMs: 50, maxSockets: 1 });
    await client.send("GET", "/a", {}, undefined, TIMEOUT_MS);
    await sleep(100);
    await expect(client.send("GET", "/b", {}, undefined, TIMEOUT_MS)).resolves.toMatchObject({ status: 200 });
    expect(server.requests.map((r) => r.connection)).toEqual([0, 1]);
    expect(server.maxOpen()).toBe(1);
  });

  it("does not use a connection again after Keep-Alive: timeout=1, nor after Connection: close", async () => {
    const answers = [ok("{}", "Keep-Alive: timeout=1\r\n"), ok("{}", "Connection: close\r\n"), ok("{}"), ok("{}")];
    const server = await rawServer((req, socket) => write(socket, answers[server.requests.indexOf(req)]));
    const client = lean(server);
    for (let i = 0; i < 4; i++) await client.send("GET", `/${i}`, {}, undefined, TIMEOUT_MS);
    expect(server.requests.map((r) => r.connection)).toEqual([0, 1, 2, 2]);
    await until(() => server.sockets[0].destroyed && server.sockets[1].destroyed);
  });

  it("does not use a connection again that carried bytes after the answer", async () => {
    const server = await rawServer((req, socket) =>
      write(socket, req.target === "/extra" ? ok('{"a":1}') + ok('{"unasked":true}') : ok('{"b":2}')),
    );
    const client = lean(server);
    expect((await client.send("GET", "/extra", {}, undefined, TIMEOUT_MS)).text).toBe('{"a":1}');
    expect((await client.send("GET", "/next", {}, undefined, TIMEOUT_MS)).text).toBe('{"b":2}');
    expect(server.requests.map((r) => r.connection)).toEqual([0, 1]);
    await until(() => server.sockets[0].destroyed);
  });

  it("closes an idle connection on which bytes arrive that nobody asked for", async () => {
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    const client = lean(server);
    await client.send("GET", "/a", {}, undefined, TIMEOUT_MS);
    server.sockets[0].write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    await until(() => server.sockets[0].destroyed);
    await client.send("GET", "/b", {}, undefined, TIMEOUT_MS);
    expect(server.requests.map((r) => r.connection)).toEqual([0, 1]);
  });

  it("with maxSockets: 2, runs 5 concurrent requests on at most 2 connections, the waiting ones in order", async () => {
    // Answers one request at a time, each 15 ms after the last: the order of answers is the order of arrival.
    let queue = Promise.resolve();
    const server = await rawServer((req, socket) => {
      queue = queue.then(async () => {
        await sleep(15);
        await write(socket, ok(JSON.stringify(req.target)));
      });
    });
    const client = lean(server, { maxSockets: 2 });
    const completed: number[] = [];
    const results = await Promise.all(
      [0, 1, 2, 3, 4].map(async (i) => {
        const response = await client.send("GET", `/${i}`, {}, undefined, 2000);
        completed.push(i);
        return response.text;
      }),
    );
    expect(results).toEqual(['"/0"', '"/1"', '"/2"', '"/3"', '"/4"']);
    expect(server.maxOpen()).toBe(2);
    expect(server.connections()).toBe(2);
    // The first two go out at once, on two connections; the waiting three in the order they were queued.
    expect(server.requests.slice(2).map((r) => r.target)).toEqual(["/2", "/3", "/4"]);
    expect(completed.slice(2)).toEqual([2, 3, 4]);
  });

  it("close() destroys idle connections", async () => {
    const server = await rawServer((_req, socket) => write(socket, ok("{}")));
    const client = lean(server);
    await Promise.all([0, 1].map((i) => client.send("GET", `/${i}`, {}, undefined, TIMEOUT_MS)));
    expect(server.connections()).toBe(2);
    await sleep(20);
    expect(server.closed()).toBe(0);
    client.close();
    await until(() => server.closed() === 2);
  });

  it("close() fails requests in progress and waiting ones, which are never written", async () => {
    const server = await rawServer(() => undefined);
    const client = lean(server, { maxSockets: 1 });
    const inProgress = client.send("GET", "/hang", {}, undefined, 3000);
    const waiting = client.send("POST", "/waiting", {}, "{}", 3000);
    await until(() => server.requests.length === 1);
    client.close();
    expect(await networkError(waiting)).toEqual({ reason: "closed", unsent: true, stale: false });
    expect(await networkError(inProgress)).toMatchObject({ unsent: false });
    await until(() => server.closed() === 1);
    await sleep(30);
    expect(server.requests.map((r) => r.target)).toEqual(["/hang"]);
  });
});

// ---------------------------------------------------------------------------------------------

describe("the process", () => {
  it("is not kept alive by an idle pooled connection", async () => {
    const server = createHttpServer((_req, res) => res.end('{"ok":true}'));
    // The server would keep the connection open far longer than the test waits.
    server.keepAliveTimeout = 60_000;
    let connections = 0;
    server.on("connection", () => connections++);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // Two requests (the second on the pooled connection), no close().
    const code =
      `const { LeanHttpClient } = require(${JSON.stringify(join(__dirname, "../../src/matrix/lean-client"))});` +
      `const client = new LeanHttpClient(new URL(${JSON.stringify(url)}), { maxSockets: 4, idleMs: 60000 });` +
      `client.send("GET", "/a", {}, undefined, 5000).then(() => client.send("GET", "/b", {}, undefined, 5000))` +
      `.then((r) => console.log(r.status, r.text), (e) => { console.error(e); process.exitCode = 1; });`;
    const child = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", "-e", code], {
      cwd: join(__dirname, "../.."),
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
    const [exitCode, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on("exit", (c, s) => resolve([c, s])));
    clearTimeout(killer);
    expect(signal).toBeNull();
    expect(exitCode).toBe(0);
    expect(out.trim()).toBe('200 {"ok":true}');
    expect(connections).toBe(1);
  });
});
