import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { RefusalLog } from "../../src/appservice/auth";
import { createAppserviceApp } from "../../src/appservice/http";
import { parseConfig } from "../../src/config/load";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { buildRegistration, newToken, type Registration } from "../../src/registration";
import { HiveMatrixService } from "../../src/service";
import type { MatrixEvent } from "../../src/store/transactions";
import { FakeHomeserver, type Flavour } from "../support/fake-homeserver";
import { freePort } from "../../dev/server-process";
import { captureLogs } from "../support/logs";
import { startRecordedService } from "../support/service";
import { tempDir } from "../support/tmp";
import { until } from "../support/wait";

interface Harness {
  hs: FakeHomeserver;
  service: HiveMatrixService;
  registration: Registration;
  seen: MatrixEvent[];
  logs: string[];
  url: string;
  stateDir: string;
}

async function startService(
  flavour: Flavour,
  opts: {
    stateDir?: string;
    hsTokenSentByHomeserver?: string;
    maxBodyBytes?: number;
    registration?: Registration;
    port?: number;
    metricsToken?: string;
  } = {},
): Promise<Harness> {
  const port = opts.port ?? (await freePort());
  const stateDir = opts.stateDir ?? tempDir();
  const url = `http://127.0.0.1:${port}`;
  const registration =
    opts.registration ??
    buildRegistration(parseConfig({ homeserver: { url: "http://x", domain: "hive.test" } }), { asToken: newToken(), hsToken: newToken() });
  const hs = new FakeHomeserver({
    flavour,
    asToken: registration.as_token,
    hsToken: opts.hsTokenSentByHomeserver ?? registration.hs_token,
    domain: "hive.test",
    namespace: /^(hive|agent-[a-z0-9-]+)$/,
    appserviceUrl: url,
  });
  await hs.start();
  let metricsTokenFile = "";
  if (opts.metricsToken !== undefined) {
    metricsTokenFile = join(tempDir(), "metrics-token");
    writeFileSync(metricsTokenFile, `${opts.metricsToken}\n`, { mode: 0o600 });
  }
  const config = parseConfig({
    homeserver: { url: hs.url, domain: "hive.test", maxRetries: 0 },
    appservice: { port, url, maxBodyBytes: opts.maxBodyBytes ?? 20_000_000, metricsTokenFile },
    stateDir,
    logging: { level: "debug" },
  });
  const { service, logs, seen } = await startRecordedService(config, registration);
  return { hs, service, registration, seen, logs, url, stateDir };
}

async function stopAll(h: Harness): Promise<void> {
  await h.service.stop();
  await h.hs.stop();
}

const event = (n: number): MatrixEvent => ({
  type: "m.room.message",
  event_id: `$e${n}`,
  room_id: "!r:hive.test",
  sender: "@u:hive.test",
  content: { body: `hi ${n}` },
});

async function put(
  url: string,
  path: string,
  init: { token?: string; query?: string; body?: string; headers?: Record<string, string> },
): Promise<{ status: number; body: Record<string, unknown> }> {
  const headers: Record<string, string> = { "Content-Type": "application/json", ...(init.headers ?? {}) };
  if (init.token) headers.Authorization = `Bearer ${init.token}`;
  const r = await fetch(`${url}${path}${init.query ? `?${init.query}` : ""}`, {
    method: "PUT",
    headers,
    body: init.body ?? JSON.stringify({ events: [] }),
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

describe.each<Flavour>(["synapse", "tuwunel"])("appservice HTTP API with a %s-like homeserver", (flavour) => {
  let h: Harness;
  const metricsToken = newToken();
  beforeAll(async () => {
    h = await startService(flavour, { metricsToken });
  });
  afterAll(async () => stopAll(h));

  it("becomes ready after registering the bot and a successful ping", async () => {
    expect(h.service.isReady()).toBe(true);
    expect(h.hs.users.has("@hive:hive.test")).toBe(true);
    expect(h.service.lastPing).toMatchObject({ ok: true });
    expect(h.service.lastPingReceived).toBeDefined();
    const health = await fetch(`${h.url}/health`, { headers: { Authorization: `Bearer ${metricsToken}` } });
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ ready: true, ping: { ok: true } });
  });

  it("accepts the hs_token as header, as query parameter, and as both", async () => {
    const token = h.registration.hs_token;
    expect((await put(h.url, "/_matrix/app/v1/transactions/h1", { token })).status).toBe(200);
    expect((await put(h.url, "/_matrix/app/v1/transactions/h2", { query: `access_token=${token}` })).status).toBe(200);
    expect((await put(h.url, "/_matrix/app/v1/transactions/h3", { token, query: `access_token=${token}` })).status).toBe(200);
  });

  it("refuses missing and wrong tokens with the spec's codes, and changes nothing", async () => {
    const before = h.seen.length;
    const missing = await put(h.url, "/_matrix/app/v1/transactions/x1", { body: JSON.stringify({ events: [event(900)] }) });
    expect(missing).toEqual({ status: 401, body: { errcode: "M_MISSING_TOKEN", error: "Missing token" } });
    const wrong = await put(h.url, "/_matrix/app/v1/transactions/x2", { token: "wrong", body: JSON.stringify({ events: [event(901)] }) });
    expect(wrong).toEqual({ status: 403, body: { errcode: "M_FORBIDDEN", error: "Bad token supplied" } });
    const mixed = await put(h.url, "/_matrix/app/v1/transactions/x3", {
      token: h.registration.hs_token,
      query: "access_token=wrong",
      body: JSON.stringify({ events: [event(902)] }),
    });
    expect(mixed.status).toBe(403);
    await h.service.events.idle();
    expect(h.seen.length).toBe(before);
    // Refused txnIds were not recorded: the real transaction with that id is still processed.
    expect(
      (
        await put(h.url, "/_matrix/app/v1/transactions/x1", {
          token: h.registration.hs_token,
          body: JSON.stringify({ events: [event(903)] }),
        })
      ).status,
    ).toBe(200);
    await h.service.events.idle();
    expect(h.seen.map((e) => e.event_id)).toContain("$e903");
  });

  it("handles a transaction's events once, however often it is replayed", async () => {
    const body = { events: [event(1), event(2)] };
    for (let i = 0; i < 3; i++) expect(await h.hs.pushTransaction("dup-1", body)).toEqual({ status: 200, body: {} });
    await h.service.events.idle();
    expect(h.seen.filter((e) => e.event_id === "$e1")).toHaveLength(1);
    expect(h.seen.filter((e) => e.event_id === "$e2")).toHaveLength(1);
  });

  it("answers malformed bodies with M_NOT_JSON / M_BAD_JSON and queues nothing", async () => {
    const token = h.registration.hs_token;
    const before = h.seen.length;
    expect(await put(h.url, "/_matrix/app/v1/transactions/b1", { token, body: "{not json" })).toEqual({
      status: 400,
      body: { errcode: "M_NOT_JSON", error: "Body is not valid JSON" },
    });
    expect((await put(h.url, "/_matrix/app/v1/transactions/b2", { token, body: JSON.stringify({ events: "no" }) })).body.errcode).toBe(
      "M_BAD_JSON",
    );
    expect((await put(h.url, "/_matrix/app/v1/transactions/b3", { token, body: JSON.stringify([1, 2]) })).body.errcode).toBe("M_BAD_JSON");
    expect((await put(h.url, "/_matrix/app/v1/transactions/b4", { token, body: JSON.stringify({ events: [{ type: 5 }] }) })).body).toEqual({
      errcode: "M_BAD_JSON",
      error: "events[0].type must be a string",
    });
    // The same txnIds still work afterwards: a rejected body records nothing.
    expect((await put(h.url, "/_matrix/app/v1/transactions/b1", { token, body: JSON.stringify({ events: [event(50)] }) })).status).toBe(
      200,
    );
    await h.service.events.idle();
    expect(h.seen.length).toBe(before + 1);
  });

  it("serves the legacy unprefixed path and the query endpoints", async () => {
    const token = h.registration.hs_token;
    expect((await put(h.url, "/transactions/legacy-1", { token, body: JSON.stringify({ events: [event(60)] }) })).status).toBe(200);
    const auth = { Authorization: `Bearer ${token}` };
    const user = await fetch(`${h.url}/_matrix/app/v1/users/${encodeURIComponent("@nobody:hive.test")}`, { headers: auth });
    expect(user.status).toBe(404);
    expect(await user.json()).toMatchObject({ errcode: "M_NOT_FOUND" });
    const bot = await fetch(`${h.url}/_matrix/app/v1/users/${encodeURIComponent("@hive:hive.test")}`, { headers: auth });
    expect(bot.status).toBe(200);
    const room = await fetch(`${h.url}/_matrix/app/v1/rooms/${encodeURIComponent("#x:hive.test")}`, { headers: auth });
    expect(room.status).toBe(404);
    const unknown = await fetch(`${h.url}/_matrix/app/v1/thirdparty/protocol/x`, { headers: auth });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ errcode: "M_UNRECOGNIZED" });
    const wrongMethod = await fetch(`${h.url}/_matrix/app/v1/transactions/1`, { method: "POST", headers: auth });
    expect(wrongMethod.status).toBe(405);
  });

  it("exposes Prometheus metrics to the holder of the metrics token only", async () => {
    const auth = (token: string): RequestInit => ({ headers: { Authorization: `Bearer ${token}` } });
    expect(await (await fetch(`${h.url}/metrics`)).json()).toEqual({ errcode: "M_MISSING_TOKEN", error: "Missing token" });
    for (const [status, init] of [
      [401, {}],
      [403, auth("wrong")],
      [403, auth(h.registration.hs_token)],
      [403, auth(`${metricsToken}x`)],
      [403, { headers: { Authorization: metricsToken } }],
    ] as const) {
      const res = await fetch(`${h.url}/metrics`, init);
      expect(res.status).toBe(status);
      expect(await res.text()).not.toContain("hive_matrix");
    }
    // Not in the query string: that ends up in logs.
    expect((await fetch(`${h.url}/metrics?access_token=${metricsToken}`)).status).toBe(401);
    const text = await (await fetch(`${h.url}/metrics`, auth(metricsToken))).text();
    expect(text).toMatch(/hive_matrix_transactions_total\{result="duplicate"\} [1-9]/);
    expect(text).toMatch(/hive_matrix_homeserver_requests_total\{method="POST",route="\/_matrix\/client\/v3\/register",outcome="200"\} 1/);
  });

  it("shows anyone whether it is ready, and nothing else without the metrics token", async () => {
    for (const init of [{}, { headers: { Authorization: "Bearer wrong" } }]) {
      const res = await fetch(`${h.url}/health`, init);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ ready: true, live: true });
    }
  });

  it("counts events of unknown types as 'other', so the label set stays bounded", async () => {
    const types = Array.from({ length: 300 }, (_, i) => `com.example.spam.${i}.${newToken().slice(0, 8)}`);
    const events = types.map((type, i) => ({ ...event(1000 + i), type }));
    expect(await h.hs.pushTransaction(`spam-${flavour}`, { events })).toEqual({ status: 200, body: {} });
    await h.service.events.idle();
    const text = await (await fetch(`${h.url}/metrics`, { headers: { Authorization: `Bearer ${metricsToken}` } })).text();
    const labels = [...text.matchAll(/^hive_matrix_events_total\{type="([^"]*)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])] as const);
    expect(labels.find(([type]) => type === "other")?.[1]).toBeGreaterThanOrEqual(300);
    expect(labels.every(([type]) => type === "other" || type.startsWith("m."))).toBe(true);
    for (const type of types) expect(text).not.toContain(type);
  });

  it("never logs a token", () => {
    const all = h.logs.join("");
    expect(all.length).toBeGreaterThan(0);
    expect(all).not.toContain(h.registration.as_token);
    expect(all).not.toContain(h.registration.hs_token);
    expect(all).not.toContain(metricsToken);
  });
});

describe("durable de-duplication", () => {
  it("acknowledges a replayed transaction without handling it again after a restart", async () => {
    const stateDir = tempDir();
    const port = await freePort();
    const first = await startService("synapse", { stateDir, port });
    expect((await first.hs.pushTransaction("42", { events: [event(1)] })).status).toBe(200);
    await first.service.events.idle();
    expect(first.seen.map((e) => e.event_id)).toEqual(["$e1"]);
    await stopAll(first);

    const second = await startService("synapse", { stateDir, port, registration: first.registration });
    expect((await second.hs.pushTransaction("42", { events: [event(1)] })).status).toBe(200);
    expect((await second.hs.pushTransaction("43", { events: [event(2)] })).status).toBe(200);
    await second.service.events.idle();
    expect(second.seen.map((e) => e.event_id)).toEqual(["$e2"]);
    await stopAll(second);
  });

  it("handles after a restart the events acknowledged but not yet handled before it", async () => {
    const stateDir = tempDir();
    const port = await freePort();
    const first = await startService("synapse", { stateDir, port });
    // A handler that never finishes stands for a crash in the middle of handling.
    let release: () => void = () => undefined;
    first.service.onEvent(() => new Promise<void>((r) => (release = r)));
    expect((await first.hs.pushTransaction("t1", { events: [event(7)] })).status).toBe(200);
    // The process "dies": its files are closed and its lock is left for the next process to take over.
    first.service.transactions.close();
    first.service.state.unlock();
    const second = await startService("synapse", { stateDir, registration: first.registration });
    await second.service.events.idle();
    expect(second.seen.map((e) => e.event_id)).toEqual(["$e7"]);
    expect((await second.hs.pushTransaction("t1", { events: [event(7)] })).status).toBe(200);
    await second.service.events.idle();
    expect(second.seen.map((e) => e.event_id)).toEqual(["$e7"]);
    release();
    await stopAll(second);
    await stopAll(first);
  });

  it("memberships of the Space and hive-chat need no journal line (the startup reconcile redoes them); every other transaction gets one", async () => {
    const stateDir = tempDir();
    writeFileSync(join(stateDir, "space-id"), "!space:hive.test\n", { mode: 0o600 });
    writeFileSync(join(stateDir, "hive-chat-id"), "!chat:hive.test\n", { mode: 0o600 });
    const h = await startService("synapse", { stateDir });
    const member = (n: number, roomId: string): MatrixEvent => ({
      type: "m.room.member",
      event_id: `$m${n}`,
      room_id: roomId,
      sender: "@agent-a:hive.test",
      state_key: "@agent-a:hive.test",
      content: { membership: "join" },
    });
    const sent: [string, MatrixEvent[]][] = [
      ["j1", [member(1, "!space:hive.test")]],
      ["j2", [member(2, "!chat:hive.test"), member(3, "!space:hive.test")]],
      ["j3", [member(4, "!chat:hive.test"), { ...event(5), room_id: "!chat:hive.test" }]],
      ["j4", [member(6, "!other:hive.test")]],
      ["j5", [{ ...event(7), room_id: "!chat:hive.test" }]],
    ];
    for (const [txnId, events] of sent) expect((await h.hs.pushTransaction(txnId, { events })).status).toBe(200);
    await h.service.events.idle();
    expect(h.seen.map((e) => e.event_id)).toEqual(["$m1", "$m2", "$m3", "$m4", "$e5", "$m6", "$e7"]);
    await stopAll(h);
    const journaled = readFileSync(join(stateDir, "transactions.journal"), "utf8")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { id?: string })
      .filter((line) => line.id !== undefined)
      .map((line) => line.id);
    expect(journaled).toEqual(["j3", "j4", "j5"]);
  });
});

describe("stopping", () => {
  it("finishes the transaction under way; those behind it are handled after the next start, not dropped", async () => {
    const stateDir = tempDir();
    const port = await freePort();
    const first = await startService("synapse", { stateDir, port });
    let release: () => void = () => undefined;
    const blocked = new Promise<void>((r) => (release = r));
    first.service.onEvent((e) => (e.event_id === "$e1" ? blocked : undefined));
    expect((await first.hs.pushTransaction("s1", { events: [event(1)] })).status).toBe(200);
    expect((await first.hs.pushTransaction("s2", { events: [event(2)] })).status).toBe(200);
    const stopping = stopAll(first);
    release();
    await stopping;
    expect(first.seen.map((e) => e.event_id)).toEqual(["$e1"]);

    const second = await startService("synapse", { stateDir, port, registration: first.registration });
    await second.service.events.idle();
    expect(second.seen.map((e) => e.event_id)).toEqual(["$e2"]);
    await stopAll(second);
  });
});

describe("a homeserver that numbers its transactions anew", () => {
  it("handles reused txnIds with other events, counts them and warns once per run of them", async () => {
    const stateDir = tempDir();
    const port = await freePort();
    const first = await startService("synapse", { stateDir, port });
    for (let i = 1; i <= 4; i++) expect((await first.hs.pushTransaction(String(i), { events: [event(100 + i)] })).status).toBe(200);
    await first.service.events.idle();
    await stopAll(first);

    const metricsToken = newToken();
    const second = await startService("synapse", { stateDir, port, registration: first.registration, metricsToken });
    for (let i = 1; i <= 3; i++) expect((await second.hs.pushTransaction(String(i), { events: [event(200 + i)] })).status).toBe(200);
    // A true retry of the renumbered transaction is still a replay.
    expect((await second.hs.pushTransaction("3", { events: [event(203)] })).status).toBe(200);
    expect((await second.hs.pushTransaction("fresh-1", { events: [event(300)] })).status).toBe(200);
    // A second renumbering later is warned about again.
    expect((await second.hs.pushTransaction("1", { events: [event(301)] })).status).toBe(200);
    await second.service.events.idle();
    expect(second.seen.map((e) => e.event_id)).toEqual(["$e201", "$e202", "$e203", "$e300", "$e301"]);
    const metrics = await (await fetch(`${second.url}/metrics`, { headers: { Authorization: `Bearer ${metricsToken}` } })).text();
    expect(metrics).toMatch(/hive_matrix_transactions_total\{result="reused_id"\} 4\n/);
    expect(metrics).toMatch(/hive_matrix_transactions_total\{result="duplicate"\} 1\n/);
    const warnings = second.logs.filter((l) => l.includes("transaction ID seen before with other events"));
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/"level":40.*homeserver restarted and numbered its transactions anew/);
    await stopAll(second);
  });
});

describe("body limit and ping failures", () => {
  it("answers 413 M_TOO_LARGE above appservice.maxBodyBytes", async () => {
    const metricsToken = newToken();
    const h = await startService("synapse", { maxBodyBytes: 1000, metricsToken });
    const big = JSON.stringify({ events: [{ type: "m.room.message", content: { body: "x".repeat(2000) } }] });
    expect(await put(h.url, "/_matrix/app/v1/transactions/big", { token: h.registration.hs_token, body: big })).toEqual({
      status: 413,
      body: { errcode: "M_TOO_LARGE", error: "Body exceeds 1000 bytes" },
    });
    // Refused, so the homeserver retries it: visible in the log and the metrics.
    expect(h.logs.join("")).toMatch(/"txnId":"big".*transaction refused: Body exceeds 1000 bytes/);
    const metrics = await fetch(`${h.url}/metrics`, { headers: { Authorization: `Bearer ${metricsToken}` } });
    expect(await metrics.text()).toMatch(/hive_matrix_transactions_total\{result="rejected"\} 1\n/);
    await stopAll(h);
  });

  it.each<Flavour>(["synapse", "tuwunel"])("says why the ping fails when the %s homeserver has another hs_token", async (flavour) => {
    const h = await startService(flavour, { hsTokenSentByHomeserver: newToken() });
    expect(h.service.isReady()).toBe(true);
    expect(h.service.lastPing).toMatchObject({ ok: false, errcode: flavour === "tuwunel" ? "M_UNKNOWN" : "M_BAD_STATUS" });
    const log = h.logs.join("");
    expect(log).toMatch(/homeserver could not ping the appservice: the appservice refused the homeserver's hs_token \(HTTP 403\)/);
    await stopAll(h);
  });
});

describe("metrics off and refused requests", () => {
  it("without appservice.metricsTokenFile, /metrics is off", async () => {
    const h = await startService("synapse");
    const res = await fetch(`${h.url}/metrics`, { headers: { Authorization: `Bearer ${h.registration.hs_token}` } });
    expect(res.status).toBe(404);
    expect(await res.json()).toEqual({ errcode: "M_NOT_FOUND", error: "Metrics are off: set appservice.metricsTokenFile" });
    await stopAll(h);
  });

  it("refuses to start with a metrics token file others can read, or one too short", async () => {
    for (const [text, mode, message] of [
      [newToken(), 0o644, /readable by every user/],
      ["short", 0o600, /at least 16 characters/],
    ] as const) {
      const file = join(tempDir(), "metrics-token");
      writeFileSync(file, text, { mode });
      const config = parseConfig({
        homeserver: { url: "http://127.0.0.1:1", domain: "hive.test", startupWaitSeconds: 1 },
        appservice: { port: await freePort(), metricsTokenFile: file },
        stateDir: tempDir(),
      });
      const registration = buildRegistration(config, { asToken: newToken(), hsToken: newToken() });
      await expect(startRecordedService(config, registration)).rejects.toThrow(message);
    }
  });

  it("logs the first refused request of an interval, then one line with the count", async () => {
    const { lines, destination } = captureLogs();
    const { logger } = createLogger({ level: "debug", destination });
    const refusals = new RefusalLog(logger, { intervalMs: 3000 });
    const app = createAppserviceApp(
      {
        onTransaction: async () => "accepted",
        onUserQuery: async () => false,
        onPing: () => undefined,
        health: () => ({ ready: true }),
        metrics: async () => ({ contentType: "text/plain", body: "" }),
      },
      { hsToken: newToken(), maxBodyBytes: 1000, logger, metrics: new Metrics(), refusals },
    );
    const server = app.listen(0, "127.0.0.1");
    await new Promise((r) => server.once("listening", r));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const warnings = (): string[] => lines.filter((l) => l.includes('"level":40'));
    try {
      for (let i = 0; i < 30; i++) expect((await put(url, `/_matrix/app/v1/transactions/n${i}`, {})).status).toBe(401);
      for (let i = 0; i < 20; i++) expect((await put(url, `/_matrix/app/v1/transactions/w${i}`, { token: "wrong" })).status).toBe(403);
      expect(warnings()).toHaveLength(1);
      expect(warnings()[0]).toContain("homeserver request without a token refused");
      await until(() => warnings().length === 2, 10_000);
      expect(JSON.parse(warnings()[1])).toMatchObject({
        missingToken: 29,
        wrongToken: 20,
        msg: "49 more homeserver request(s) refused for a missing or wrong hs_token since the last warning",
      });
      // A new interval starts with the next refusal, logged at once.
      expect((await put(url, "/_matrix/app/v1/transactions/again", { token: "wrong" })).status).toBe(403);
      expect(warnings()).toHaveLength(3);
      expect(warnings()[2]).toContain("wrong hs_token refused");
      refusals.flush();
      expect(warnings()).toHaveLength(3);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
