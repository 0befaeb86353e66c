/**
 * Hostile input against the appservice HTTP API: random and malformed bodies, odd transaction IDs,
 * user IDs with path tricks, wrong tokens. Every request gets a Matrix error or 200 — never a 500,
 * never a hang — and a handler only ever sees input that passed validation.
 */
import type { Server } from "node:http";
import fc from "fast-check";
import pino from "pino";
import { createAppserviceApp } from "../../src/appservice/http";
import { Metrics } from "../../src/metrics";
import type { MatrixEvent } from "../../src/store/transactions";

const HS_TOKEN = "h".repeat(64);
const calls: { txn: [string, MatrixEvent[]][]; users: string[] } = { txn: [], users: [] };
let server: Server;
let base: string;

beforeAll(async () => {
  const app = createAppserviceApp(
    {
      onTransaction: (txnId, events) => {
        calls.txn.push([txnId, events]);
        return Promise.resolve("accepted");
      },
      onUserQuery: (userId) => {
        calls.users.push(userId);
        return Promise.resolve(false);
      },
      onPing: () => undefined,
      health: () => ({ ready: true }),
      metrics: () => Promise.resolve({ contentType: "text/plain", body: "" }),
    },
    { hsToken: HS_TOKEN, maxBodyBytes: 64 * 1024, logger: pino({ level: "silent" }), metrics: new Metrics() },
  );
  await new Promise<void>((resolve) => {
    server = app.listen(0, "127.0.0.1", () => resolve());
  });
  const address = server.address();
  base = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
beforeEach(() => {
  calls.txn.length = 0;
  calls.users.length = 0;
});

const ALLOWED = new Set([200, 400, 401, 403, 404, 405, 413]);

async function send(
  method: string,
  path: string,
  body: string | undefined,
  token: string | null,
): Promise<{ status: number; json: unknown }> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(token === null ? {} : { Authorization: `Bearer ${token}` }), "Content-Type": "application/json" },
    body,
  });
  const text = await res.text();
  let json: unknown = undefined;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: res.status, json };
}

const hostileString = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.constantFrom("../../etc/passwd", "..%2F..%2Fetc", "%00", "%2e%2e", "a/b", "\u202e", "💥", "<script>", "' OR 1=1", "a".repeat(5000)),
);
const jsonish = fc.oneof(
  fc.json(),
  fc.string({ unit: "binary", maxLength: 200 }),
  fc.constantFrom("{", '{"events":', '{"events": [1,2]}', '{"events": [{"type": 5}]}', '{"events": {}}', "null", "[]", '"x"'),
  fc.record({ events: fc.array(fc.anything(), { maxLength: 5 }) }).map((v) => JSON.stringify(v)),
);

describe("appservice HTTP API under hostile input", () => {
  it("transactions: random bodies and txnIds get 200 or a Matrix error; only valid ones reach the handler", async () => {
    await fc.assert(
      fc.asyncProperty(hostileString, jsonish, async (txnId, body) => {
        calls.txn.length = 0;
        const res = await send("PUT", `/_matrix/app/v1/transactions/${encodeURIComponent(txnId)}`, body, HS_TOKEN);
        expect(ALLOWED.has(res.status)).toBe(true);
        if (res.status === 200) {
          expect(calls.txn).toHaveLength(1);
          const [, events] = calls.txn[0];
          expect(Array.isArray(events)).toBe(true);
          for (const e of events) expect(typeof e.type).toBe("string");
        } else {
          expect(calls.txn).toHaveLength(0);
          expect((res.json as { errcode?: unknown }).errcode).toMatch(/^M_/);
        }
      }),
      { numRuns: 200 },
    );
  });

  it("wrong or missing tokens never reach a handler, whatever the body", async () => {
    await fc.assert(
      fc.asyncProperty(fc.option(hostileString.filter((t) => t !== HS_TOKEN && /^[\x21-\x7e]*$/.test(t))), jsonish, async (token, body) => {
        const res = await send("PUT", "/_matrix/app/v1/transactions/t1", body, token);
        expect([401, 403]).toContain(res.status);
        expect(calls.txn).toHaveLength(0);
      }),
      { numRuns: 100 },
    );
  });

  it("user queries with path tricks and unicode: a Matrix error, and the handler only sees user IDs", async () => {
    await fc.assert(
      fc.asyncProperty(hostileString, async (raw) => {
        calls.users.length = 0;
        const res = await send("GET", `/_matrix/app/v1/users/${encodeURIComponent(raw)}`, undefined, HS_TOKEN);
        expect([400, 404, 405]).toContain(res.status);
        expect((res.json as { errcode?: unknown }).errcode).toMatch(/^M_/);
        for (const u of calls.users) expect(u).toMatch(/^@[^\s]+:[^\s]+$/);
      }),
      { numRuns: 150 },
    );
  });

  it("a body over the limit gets 413 and reaches no handler", async () => {
    const res = await send(
      "PUT",
      "/_matrix/app/v1/transactions/big",
      JSON.stringify({ events: [{ type: "x", pad: "a".repeat(70 * 1024) }] }),
      HS_TOKEN,
    );
    expect(res.status).toBe(413);
    expect(calls.txn).toHaveLength(0);
  });
});
