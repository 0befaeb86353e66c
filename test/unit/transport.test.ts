import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { MatrixError } from "matrix-bot-sdk";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { HomeserverTransport, HomeserverUnreachableError, OutsideNamespaceError, routeTemplate } from "../../src/matrix/transport";
import { freePort } from "../../dev/server-process";

/** A server that answers each request with the next scripted status. */
async function scripted(
  statuses: number[],
  body: (status: number) => unknown,
): Promise<{ url: string; hits: () => number; server: Server }> {
  let hits = 0;
  const server = createServer((_req, res) => {
    const status = statuses[Math.min(hits, statuses.length - 1)];
    hits++;
    res.writeHead(status, { "Content-Type": "application/json" });
    res.end(JSON.stringify(body(status)));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits: () => hits, server };
}

type Client = "lean" | "node";

function makeTransport(url: string, sleeps: number[] = [], client: Client = "lean"): HomeserverTransport {
  return new HomeserverTransport({
    client,
    baseUrl: url,
    asToken: "as-token-secret-value",
    timeoutMs: 2000,
    maxRetries: 3,
    logger: createLogger({ level: "silent" }).logger,
    metrics: new Metrics(),
    sleep: async (ms) => {
      sleeps.push(ms);
    },
  });
}

const errBody = (status: number): unknown =>
  status === 429
    ? { errcode: "M_LIMIT_EXCEEDED", error: "slow down", retry_after_ms: 1234 }
    : status >= 400
      ? { errcode: "M_UNKNOWN", error: "boom" }
      : { ok: true };

// Both clients an http: homeserver can be spoken to with: the lean one (the default) and node:http's,
// which is also what https: homeservers go through.
describe.each(["lean", "node"] as const)("homeserver transport (%s client)", (client) => {
  const transport = (url: string, sleeps: number[] = []): HomeserverTransport => makeTransport(url, sleeps, client);

  it("retries GET on 5xx and honours retry_after_ms on 429", async () => {
    const s = await scripted([502, 429, 200], errBody);
    const sleeps: number[] = [];
    await expect(transport(s.url, sleeps).request("GET", "/x")).resolves.toEqual({ ok: true });
    expect(s.hits()).toBe(3);
    expect(sleeps[1]).toBe(1234);
    s.server.close();
  });

  it("does not repeat a POST that may have been applied (5xx), but does on 429", async () => {
    const s = await scripted([500, 200], errBody);
    await expect(transport(s.url).request("POST", "/x", { body: {} })).rejects.toBeInstanceOf(MatrixError);
    expect(s.hits()).toBe(1);
    s.server.close();
    const r = await scripted([429, 200], errBody);
    await expect(transport(r.url).request("POST", "/x", { body: {} })).resolves.toEqual({ ok: true });
    expect(r.hits()).toBe(2);
    r.server.close();
  });

  it("gives up after maxRetries with the homeserver's error", async () => {
    const s = await scripted([503], errBody);
    const err = (await transport(s.url)
      .request("GET", "/x")
      .catch((e: unknown) => e)) as MatrixError;
    expect(err).toBeInstanceOf(MatrixError);
    expect(err.statusCode).toBe(503);
    expect(s.hits()).toBe(4);
    s.server.close();
  });

  it("reports an unreachable homeserver after retrying, without the token in the error", async () => {
    const port = await freePort();
    const err = (await transport(`http://127.0.0.1:${port}`)
      .request("GET", "/x")
      .catch((e: unknown) => e)) as Error;
    expect(err).toBeInstanceOf(HomeserverUnreachableError);
    expect(err.message).toBe("homeserver unreachable (ECONNREFUSED)");
  });

  it("keeps connections alive across requests, sends the body and the Retry-After header's delay", async () => {
    let connections = 0;
    const bodies: string[] = [];
    let hits = 0;
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (chunk: Buffer) => (body += chunk.toString()));
      req.on("end", () => {
        bodies.push(body);
        hits++;
        if (hits === 1) {
          res.writeHead(429, { "Content-Type": "application/json", "Retry-After": "2" });
          res.end(JSON.stringify({ errcode: "M_LIMIT_EXCEEDED", error: "slow down" }));
        } else {
          res.writeHead(200, { "Content-Type": "application/json" });
          res.end(JSON.stringify({ n: hits }));
        }
      });
    });
    server.on("connection", () => connections++);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const sleeps: number[] = [];
    const t = transport(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, sleeps);
    await expect(t.request("PUT", "/x", { body: { text: "é ✓" } })).resolves.toEqual({ n: 2 });
    for (let i = 0; i < 5; i++) await t.request("GET", "/y");
    expect(sleeps).toEqual([2000]);
    expect(bodies.slice(0, 2)).toEqual(['{"text":"é ✓"}', '{"text":"é ✓"}']);
    expect(connections).toBe(1);
    t.close();
    server.close();
  });

  it("takes a new connection when the server closed the pooled one between two requests", async () => {
    const server = createServer((_req, res) => res.end("{}"));
    server.keepAliveTimeout = 20;
    let connections = 0;
    server.on("connection", () => connections++);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const sleeps: number[] = [];
    const t = transport(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, sleeps);
    try {
      await t.request("GET", "/x");
      await new Promise((r) => setTimeout(r, 200));
      await expect(t.request("POST", "/x", { body: {} })).resolves.toEqual({});
      expect(connections).toBe(2);
      expect(sleeps).toEqual([]);
    } finally {
      t.close();
      server.close();
    }
  });

  describe("a pooled connection that drops a request without answering", () => {
    // The server reads the request, counts it as handled, and cuts the connection: what a client
    // sees both when a server closes an idle connection under it and when a homeserver that
    // applied the request goes away before answering.
    async function dropping(): Promise<{
      t: HomeserverTransport;
      sleeps: number[];
      handled: string[];
      connections: () => number;
      server: Server;
    }> {
      const handled: string[] = [];
      let connections = 0;
      const server = createServer((req, res) => {
        handled.push(`${req.method} ${req.url}`);
        if (handled.length === 2) req.socket.destroy();
        else res.end('{"ok":true}');
      });
      server.on("connection", () => connections++);
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      const sleeps: number[] = [];
      const t = transport(`http://127.0.0.1:${(server.address() as AddressInfo).port}`, sleeps);
      await t.request("GET", "/first");
      return { t, sleeps, handled, connections: () => connections, server };
    }

    it("sends a GET again at once, on a new connection", async () => {
      const d = await dropping();
      try {
        await expect(d.t.request("GET", "/x")).resolves.toEqual({ ok: true });
        expect(d.handled).toEqual(["GET /first", "GET /x", "GET /x"]);
        expect(d.connections()).toBe(2);
        expect(d.sleeps).toEqual([]);
      } finally {
        d.t.close();
        d.server.close();
      }
    });

    it("does not send a POST again, which may have been applied", async () => {
      const d = await dropping();
      try {
        await expect(d.t.request("POST", "/register", { body: {} })).rejects.toThrow("homeserver unreachable (ECONNRESET)");
        expect(d.handled).toEqual(["GET /first", "POST /register"]);
      } finally {
        d.t.close();
        d.server.close();
      }
    });

    it("sends a POST the caller marked idempotent again", async () => {
      const d = await dropping();
      try {
        await expect(d.t.request("POST", "/join", { body: {}, idempotent: true })).resolves.toEqual({ ok: true });
        expect(d.handled).toEqual(["GET /first", "POST /join", "POST /join"]);
        expect(d.sleeps).toEqual([]);
      } finally {
        d.t.close();
        d.server.close();
      }
    });
  });

  it("gives up on a request the homeserver does not answer within the timeout", async () => {
    const server = createServer(() => undefined);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const t = new HomeserverTransport({
      client,
      baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      asToken: "as-token-secret-value",
      timeoutMs: 100,
      maxRetries: 0,
      logger: createLogger({ level: "silent" }).logger,
      metrics: new Metrics(),
    });
    await expect(t.request("POST", "/x", { body: {} })).rejects.toThrow("homeserver unreachable (timeout)");
    t.close();
    server.closeAllConnections();
    server.close();
  });

  it("keeps metric labels bounded by replacing IDs", () => {
    expect(routeTemplate("/_matrix/client/v3/rooms/!abc%3Ahive/state/m.room.name/")).toBe(
      "/_matrix/client/v3/rooms/:id/state/m.room.name/:key",
    );
    expect(routeTemplate("/_matrix/client/v3/rooms/!a:b/send/m.room.message/txn123")).toBe(
      "/_matrix/client/v3/rooms/:id/send/m.room.message/:txn",
    );
    expect(routeTemplate("/_matrix/client/v3/profile/%40hive%3Ax/displayname")).toBe("/_matrix/client/v3/profile/:id/displayname");
  });
});

describe("acting as users", () => {
  it("refuses to act as a user outside the namespace before any request leaves", async () => {
    const s = await scripted([200], () => ({}));
    try {
      const t = new HomeserverTransport({
        baseUrl: s.url,
        asToken: "as-token-secret-value",
        timeoutMs: 2000,
        maxRetries: 0,
        logger: createLogger({ level: "silent" }).logger,
        metrics: new Metrics(),
        userNamespaces: () => [/^@agent-[a-z0-9-]+:hive\.test$/],
      });
      await expect(t.request("PUT", "/_matrix/client/v3/profile/x/displayname", { asUser: "@alice:hive.test", body: {} })).rejects.toThrow(
        OutsideNamespaceError,
      );
      await expect(t.request("GET", "/x", { asUser: "@agent-a:hive.test.evil" })).rejects.toThrow(/outside the appservice's namespace/);
      expect(s.hits()).toBe(0);
      await t.request("GET", "/x", { asUser: "@agent-a:hive.test" });
      expect(s.hits()).toBe(1);
    } finally {
      s.server.close();
    }
  });
});
