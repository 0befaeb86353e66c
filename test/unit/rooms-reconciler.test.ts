/**
 * The reconciler's decisions that do not need a real homeserver: the departures file, which
 * events are relevant, an unusable adopted room (loud, no writes, files untouched) and a
 * homeserver that is down (a report, never a throw). The full behaviour runs against Synapse in
 * test/e2e/rooms.test.ts.
 */
import { statSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { configSchema } from "../../src/config/schema";
import { createLogger } from "../../src/logging";
import { HomeserverTransport } from "../../src/matrix/transport";
import { Metrics } from "../../src/metrics";
import { RoomFiles } from "../../src/rooms/room-files";
import { RoomsReconciler } from "../../src/rooms/reconciler";
import { StateError, StateStore } from "../../src/store/state-store";
import { freePort } from "../../dev/server-process";
import { captureLogs } from "../support/logs";
import { tempDir } from "../support/tmp";

const DOMAIN = "hive.example";
const BOT = `@hive:${DOMAIN}`;

function store(): StateStore {
  const s = new StateStore(join(tempDir(), "state"));
  s.init();
  return s;
}

function reconciler(url: string, state: StateStore): { rec: RoomsReconciler; logs: string[] } {
  const { lines, destination } = captureLogs();
  const { logger } = createLogger({ level: "debug", destination });
  const metrics = new Metrics();
  const config = configSchema.parse({ homeserver: { url, domain: DOMAIN }, stateDir: state.dir, operators: [`@alice:${DOMAIN}`] });
  const transport = new HomeserverTransport({
    baseUrl: url,
    asToken: "as-token-secret-value",
    timeoutMs: 2000,
    maxRetries: 0,
    logger,
    metrics,
  });
  const rec = new RoomsReconciler({ config, transport, botUserId: BOT, state, logger, metrics });
  return { rec, logs: lines };
}

describe("RoomFiles", () => {
  it("records each operator's departure once (0600), and forgets it on request", () => {
    const s = store();
    const files = new RoomFiles(s);
    const d = { userId: "@bob:x", room: "space" as const, how: "left" as const };
    expect(files.recordDepartures([d, { ...d, room: "chat" }], 1)).toEqual([d]);
    expect(files.recordDepartures([d], 2)).toEqual([]);
    expect([...files.operatorsWhoLeft()]).toEqual([["@bob:x", { room: "space", how: "left", at: 1 }]]);
    expect(statSync(s.path("rooms.json")).mode & 0o777).toBe(0o600);
    expect(files.clearDeparture("@bob:x")).toBe(true);
    expect(files.clearDeparture("@bob:x")).toBe(false);
    expect(files.operatorsWhoLeft().size).toBe(0);
  });

  it("a corrupted rooms.json is an error naming the file, never a silent reset", () => {
    const s = store();
    writeFileSync(s.path("rooms.json"), '{"operatorsWhoLeft": {"@a:x": {"room": "attic"}}}');
    expect(() => new RoomFiles(s).operatorsWhoLeft()).toThrow(StateError);
    expect(() => new RoomFiles(s).operatorsWhoLeft()).toThrow(/rooms\.json/);
  });
});

describe("RoomsReconciler without a homeserver", () => {
  let server: Server;
  let url: string;
  const seen: string[] = [];

  beforeAll(async () => {
    // Knows no room: every room request is refused the way Synapse refuses a non-member.
    server = createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.writeHead(403, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ errcode: "M_FORBIDDEN", error: "User not in room" }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it("only state and membership events in its two rooms are relevant", () => {
    const s = store();
    s.writeText("space-id", "!space:x");
    s.writeText("hive-chat-id", "!chat:x");
    const { rec } = reconciler(url, s);
    expect(rec.isRelevant({ type: "m.room.member", room_id: "!space:x", state_key: "@a:x" })).toBe(true);
    expect(rec.isRelevant({ type: "m.room.join_rules", room_id: "!chat:x", state_key: "" })).toBe(true);
    expect(rec.isRelevant({ type: "m.room.redaction", room_id: "!chat:x" })).toBe(true);
    expect(rec.isRelevant({ type: "m.room.message", room_id: "!chat:x" })).toBe(false);
    expect(rec.isRelevant({ type: "m.room.member", room_id: "!elsewhere:x", state_key: "@a:x" })).toBe(false);
  });

  it("forgetRooms() deletes both ID files and returns what they held", async () => {
    const s = store();
    s.writeText("space-id", "!space:x");
    s.writeText("hive-chat-id", "!chat:x");
    const { rec } = reconciler(url, s);
    expect(rec.spaceId).toBe("!space:x");
    expect(await rec.forgetRooms()).toEqual({ space: "!space:x", chat: "!chat:x" });
    expect(s.readText("space-id")).toBeUndefined();
    expect(s.readText("hive-chat-id")).toBeUndefined();
    expect(rec.spaceId).toBeUndefined();
    expect(rec.isRelevant({ type: "m.room.member", room_id: "!space:x", state_key: "@a:x" })).toBe(false);
  });

  it("an adopted room the bot cannot read: loud problem with the fix, no writes, files unchanged", async () => {
    const s = store();
    s.writeText("space-id", "!foreign:x");
    seen.length = 0;
    const { rec, logs } = reconciler(url, s);
    const report = await rec.reconcile({ agents: [], leaving: [] });
    expect(report.writes).toBe(0);
    expect(report.changes).toEqual([]);
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toContain("Space: the room !foreign:x");
    expect(report.problems[0]).toContain("M_FORBIDDEN");
    expect(report.problems[0]).toContain(`delete ${s.path("space-id")} (and ${s.path("hive-chat-id")}) to create new rooms`);
    expect(report.problems[0]).toContain("`!hive rooms recreate`");
    expect(seen.every((r) => r.startsWith("GET "))).toBe(true);
    expect(s.readText("space-id")).toBe("!foreign:x");
    expect(s.readText("hive-chat-id")).toBeUndefined();
    expect(logs.some((l) => l.includes('"level":50') && l.includes("!foreign:x"))).toBe(true);
  });

  it("a file that does not hold a room ID is unusable without asking the homeserver", async () => {
    const s = store();
    s.writeText("hive-chat-id", "#not-an-id:x");
    seen.length = 0;
    const report = await reconciler(url, s).rec.reconcile({ agents: [], leaving: [] });
    expect(seen).toEqual([]);
    expect(report.problems[0]).toMatch(/hive-chat: the room #not-an-id:x .* is unusable \("#not-an-id:x" is not a room ID\)/);
  });

  it("a homeserver that is down gives a report with the failure, not a throw", async () => {
    const port = await freePort();
    const { rec } = reconciler(`http://127.0.0.1:${port}`, store());
    const report = await rec.reconcile({ agents: [], leaving: [] }, "test");
    expect(report.problems).toEqual([expect.stringMatching(/^reconcile failed: homeserver unreachable/)]);
    expect(report.reason).toBe("test");
    expect(rec.lastReport).toBe(report);
  });
});
