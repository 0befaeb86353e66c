/**
 * The hive's Space and hive-chat against a real homeserver (Synapse or tuwunel): created once with exactly the desired
 * state, usable by an operator (Space invite, hierarchy, the restricted join), agents joined and
 * removed, drift repaired (also when an event triggers the loop), a second reconcile that writes
 * nothing, restarts that keep the rooms, deleted files that make new ones, adopted rooms the bot
 * cannot use reported instead of replaced, and operators who left left alone until invited.
 */
import { rmSync, statSync } from "node:fs";
import type { Config } from "../../src/config/schema";
import { ensureRegistered } from "../../src/matrix/users";
import { loadRegistration } from "../../src/registration";
import { hasPrivilegedCreators } from "../../src/rooms/actual";
import { ReconcileLoop } from "../../src/rooms/loop";
import { RoomsReconciler, type RoomsDeps } from "../../src/rooms/reconciler";
import type { DesiredMembers, ReconcileReport } from "../../src/rooms/types";
import { StateStore } from "../../src/store/state-store";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import type { RegisteredUser } from "../../dev/server-process";
import { startRecordedService, type StartedService } from "../support/service";
import { onTuwunel } from "../support/homeserver";
import { request } from "../support/operator";

const env = e2eEnv();
const DOMAIN = env.homeserver.serverName;
const stamp = Date.now().toString(36);
const enc = encodeURIComponent;

interface StateEvent {
  type: string;
  state_key: string;
  sender: string;
  content: Record<string, unknown>;
}

/** The client-server API as a real user, with their own access token. */
function asUser(user: RegisteredUser, method: string, path: string, body?: unknown): ReturnType<typeof request> {
  return request(user.accessToken, method, path, body);
}

async function until(check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("the hive's Space and hive-chat against the homeserver", () => {
  let slot: AcquiredSlot;
  let run: StartedService;
  let operator: RegisteredUser;
  let agents: string[];

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    const config = makeTestConfig(slot);
    run = await startRecordedService(config, loadRegistration(slot.registrationPath));
    operator = await registerUser(env.homeserver, `op-${stamp}`);
    agents = [];
    for (const name of ["one", "two"]) {
      const localpart = slot.agentTemplate.replace("{name}", `${name}${stamp}`);
      agents.push((await ensureRegistered(run.service.transport, localpart, DOMAIN)).userId);
    }
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  /** A hive on its own state dir (and its own alias: aliases are global on the shared homeserver). */
  function hiveConfig(operators: string[], alias = `hive-chat-${stamp}-${Math.random().toString(36).slice(2, 6)}`): Config {
    return makeTestConfig(slot, { operators, rooms: { chat: { alias } } });
  }

  function deps(config: Config): RoomsDeps {
    const s = run.service;
    return {
      config,
      transport: s.transport,
      botUserId: s.botUserId,
      state: new StateStore(config.stateDir),
      logger: s.logger,
      metrics: s.metrics,
    };
  }

  async function state(roomId: string): Promise<StateEvent[]> {
    return run.service.transport.request<StateEvent[]>("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/state`);
  }

  function find(events: StateEvent[], type: string, stateKey = ""): StateEvent | undefined {
    return events.find((e) => e.type === type && e.state_key === stateKey);
  }

  async function membership(roomId: string, userId: string): Promise<unknown> {
    return find(await state(roomId), "m.room.member", userId)?.content.membership;
  }

  /** Every state-changing request the service's transport made, by the metric the transport keeps. */
  async function writesTotal(): Promise<number> {
    const metric = run.service.metrics.registry.getSingleMetric("hive_matrix_homeserver_writes_total");
    if (!metric) throw new Error("no writes metric");
    return (await metric.get()).values.reduce((sum, v) => sum + v.value, 0);
  }

  async function resolveAlias(alias: string): Promise<string | undefined> {
    const res = await asUser(operator, "GET", `/_matrix/client/v3/directory/room/${enc(alias)}`);
    return res.status === 200 ? (res.json.room_id as string) : undefined;
  }

  async function expectNoWrites(rec: RoomsReconciler, members: DesiredMembers): Promise<ReconcileReport> {
    const before = await writesTotal();
    const report = await rec.reconcile(members);
    expect(report).toMatchObject({ changes: [], problems: [], writes: 0 });
    expect(await writesTotal()).toBe(before);
    return report;
  }

  describe("one hive, step by step", () => {
    let config: Config;
    let rec: RoomsReconciler;
    let first: ReconcileReport;
    let spaceId: string;
    let chatId: string;
    let alias: string;
    let spaceAlias: string;

    beforeAll(async () => {
      config = hiveConfig([operator.userId]);
      alias = `#${config.rooms.chat.alias}:${DOMAIN}`;
      spaceAlias = `#${config.rooms.space.alias}:${DOMAIN}`;
      rec = new RoomsReconciler(deps(config));
      first = await rec.reconcile({ agents, leaving: [] });
      spaceId = first.spaceId!;
      chatId = first.chatId!;
    });

    it("fresh start: creates the Space and hive-chat with exactly the desired state", async () => {
      expect(first.problems).toEqual([]);
      expect(first.changes).toEqual(
        expect.arrayContaining([
          `Space: created ${spaceId}`,
          `hive-chat: created ${chatId}`,
          "Space: child hive-chat set",
          `Space: alias ${spaceAlias} created`,
          `Space: canonical alias set to ${spaceAlias}`,
          `hive-chat: alias ${alias} created`,
          `hive-chat: canonical alias set to ${alias}`,
          `Space: operator ${operator.userId} invited`,
          `hive-chat: operator ${operator.userId} invited`,
          ...agents.flatMap((a) => [`Space: agent ${a} joined`, `hive-chat: agent ${a} joined`]),
        ]),
      );
      expect(rec.spaceId).toBe(spaceId);
      expect(rec.chatId).toBe(chatId);
      const files = new StateStore(config.stateDir);
      expect(files.readText("space-id")).toBe(spaceId);
      expect(files.readText("hive-chat-id")).toBe(chatId);
      expect(statSync(files.path("space-id")).mode & 0o777).toBe(0o600);

      const bot = run.service.botUserId;
      const space = await state(spaceId);
      expect(find(space, "m.room.create")?.content.type).toBe("m.space");
      expect(find(space, "m.room.join_rules")?.content).toEqual({ join_rule: "invite" });
      expect(find(space, "m.room.guest_access")?.content).toEqual({ guest_access: "forbidden" });
      expect(find(space, "m.room.history_visibility")?.content).toEqual({ history_visibility: "shared" });
      expect(find(space, "m.room.name")?.content).toEqual({ name: "hive" });
      expect(find(space, "m.room.topic")?.content.topic).toBe(config.rooms.space.topic);
      // The Space's version is the server's default: from version 12 on the creator (the bot) has
      // implicit power and must not be listed.
      const spaceVersion = String(find(space, "m.room.create")?.content.room_version ?? "1");
      expect(find(space, "m.room.create")?.sender).toBe(bot);
      expect(find(space, "m.room.power_levels")?.content.users).toEqual(
        hasPrivilegedCreators(spaceVersion) ? { [operator.userId]: 100 } : { [bot]: 100, [operator.userId]: 100 },
      );
      expect(find(space, "m.space.child", chatId)?.content).toEqual({ via: [DOMAIN] });
      // A version 12 room ID has no server part: clients that cannot join by such an ID join by this alias.
      expect(find(space, "m.room.canonical_alias")?.content.alias).toBe(spaceAlias);
      expect(await resolveAlias(spaceAlias)).toBe(spaceId);

      const chat = await state(chatId);
      expect(find(chat, "m.room.create")?.content.room_version).toBe("10");
      expect(find(chat, "m.room.create")?.content.type).toBeUndefined();
      expect(find(chat, "m.room.join_rules")?.content).toEqual({
        join_rule: "restricted",
        allow: [{ type: "m.room_membership", room_id: spaceId }],
      });
      expect(find(chat, "m.space.parent", spaceId)?.content).toEqual({ via: [DOMAIN], canonical: true });
      expect(find(chat, "m.room.canonical_alias")?.content.alias).toBe(alias);
      expect(find(chat, "m.room.guest_access")?.content).toEqual({ guest_access: "forbidden" });
      expect(find(chat, "m.room.history_visibility")?.content).toEqual({ history_visibility: "shared" });
      expect(find(chat, "m.room.name")?.content).toEqual({ name: "hive-chat" });
      expect(find(chat, "m.room.power_levels")?.content.users).toEqual({ [bot]: 100, [operator.userId]: 100 });
      expect(find(chat, "m.room.encryption")).toBeUndefined();
      expect(await resolveAlias(alias)).toBe(chatId);

      for (const roomId of [spaceId, chatId]) {
        expect(await membership(roomId, operator.userId)).toBe("invite");
        // The invite names the aliases, which clients show with it.
        expect(find(await state(roomId), "m.room.member", operator.userId)?.content.reason).toBe(
          `The hive's rooms: ${spaceAlias} (Space), ${alias} (hive-chat)`,
        );
        for (const agent of agents) expect(await membership(roomId, agent)).toBe("join");
      }
    });

    it("a reconcile right after another makes zero state-changing requests", async () => {
      await expectNoWrites(rec, { agents, leaving: [] });
    });

    it("the operator joins the Space, sees hive-chat in its hierarchy and joins hive-chat through the restricted rule", async () => {
      // Reject the hive-chat invite first, so that only Space membership can let the operator in.
      expect((await asUser(operator, "POST", `/_matrix/client/v3/rooms/${enc(chatId)}/leave`, {})).status).toBe(200);
      const refused = await asUser(operator, "POST", `/_matrix/client/v3/join/${enc(chatId)}`, {});
      expect(refused.status).toBe(403);

      // By the Space's alias, as a client that cannot join a version 12 room by its ID does.
      const viaAlias = await asUser(operator, "POST", `/_matrix/client/v3/join/${enc(spaceAlias)}`, {});
      expect(viaAlias).toMatchObject({ status: 200, json: { room_id: spaceId } });
      const hierarchy = await asUser(operator, "GET", `/_matrix/client/v1/rooms/${enc(spaceId)}/hierarchy`);
      expect(hierarchy.status).toBe(200);
      const rooms = hierarchy.json.rooms as { room_id: string; room_type?: string; join_rule?: string; name?: string }[];
      expect(rooms.find((r) => r.room_id === spaceId)?.room_type).toBe("m.space");
      expect(rooms.find((r) => r.room_id === chatId)).toMatchObject({ name: "hive-chat", join_rule: "restricted" });

      const joined = await asUser(operator, "POST", `/_matrix/client/v3/join/${enc(chatId)}`, {});
      expect(joined.status).toBe(200);
      expect(await membership(chatId, operator.userId)).toBe("join");
      const member = find(await state(chatId), "m.room.member", operator.userId);
      // The join went through the restricted rule: Synapse names the member who authorised it
      // (any local member with invite power: the bot or, with private_chat's invite level 0, an agent).
      expect([run.service.botUserId, ...agents]).toContain(member?.content.join_authorised_via_users_server);
    });

    it("a removed agent leaves both rooms; the others stay", async () => {
      const [stay, leave] = agents;
      const report = await rec.reconcile({ agents: [stay], leaving: [leave] });
      expect(report.problems).toEqual([]);
      expect(report.changes).toEqual([`Space: agent ${leave} left`, `hive-chat: agent ${leave} left`]);
      for (const roomId of [spaceId, chatId]) {
        expect(await membership(roomId, leave)).toBe("leave");
        expect(await membership(roomId, stay)).toBe("join");
      }
      await expectNoWrites(rec, { agents: [stay], leaving: [leave] });
      // Back in the hive: joined again.
      const back = await rec.reconcile({ agents, leaving: [] });
      expect(back.changes).toEqual([`Space: agent ${leave} joined`, `hive-chat: agent ${leave} joined`]);
    });

    it("drift (space child removed, join rule changed to invite) is repaired by the next reconcile", async () => {
      const t = run.service.transport;
      await t.request("PUT", `/_matrix/client/v3/rooms/${enc(spaceId)}/state/m.space.child/${enc(chatId)}`, { body: {} });
      await t.request("PUT", `/_matrix/client/v3/rooms/${enc(chatId)}/state/m.room.join_rules/`, { body: { join_rule: "invite" } });
      const report = await rec.reconcile({ agents, leaving: [] });
      expect(report.problems).toEqual([]);
      expect(report.changes).toEqual(["Space: child hive-chat restored", "hive-chat: join rule restored to restricted"]);
      expect(report.writes).toBe(2);
      expect(find(await state(spaceId), "m.space.child", chatId)?.content).toEqual({ via: [DOMAIN] });
      expect(find(await state(chatId), "m.room.join_rules")?.content).toEqual({
        join_rule: "restricted",
        allow: [{ type: "m.room_membership", room_id: spaceId }],
      });
      expect(run.logs.join("")).toContain("drift repaired: hive-chat: join rule restored to restricted");
      await expectNoWrites(rec, { agents, leaving: [] });
    });

    it("wired to the service's events, the loop repairs an operator's change on its own and then settles", async () => {
      let wired = true;
      const loop = new ReconcileLoop(rec, { members: () => ({ agents, leaving: [] }), intervalSeconds: 0, logger: run.service.logger });
      run.service.onEvent((e) => {
        if (wired) loop.onEvent(e);
      });
      try {
        // The operator (power 100 in the Space) renames it: drift that arrives as an appservice event.
        const seenBefore = run.seen.length;
        const put = await asUser(operator, "PUT", `/_matrix/client/v3/rooms/${enc(spaceId)}/state/m.room.name/`, { name: "not the hive" });
        expect(put.status).toBe(200);
        await until(async () => find(await state(spaceId), "m.room.name")?.content.name === "hive");
        await until(() => !loop.running);
        const settledRuns = loop.runs;
        expect(settledRuns).toBeGreaterThanOrEqual(1);
        expect(rec.lastReport).toMatchObject({ changes: ['Space: name restored to "hive"'], problems: [] });
        const settledWrites = await writesTotal();
        // The repair comes back as an event too, before this later message: once the message was
        // handled, the repair's event was, and it asked for no further run.
        const marker = await asUser(operator, "PUT", `/_matrix/client/v3/rooms/${enc(spaceId)}/send/m.room.message/settle-${stamp}`, {
          msgtype: "m.text",
          body: "marker",
        });
        expect(marker.status).toBe(200);
        await until(() => run.seen.some((e) => e.event_id === marker.json.event_id));
        expect(
          run.seen.slice(seenBefore).some((e) => e.room_id === spaceId && e.type === "m.room.name" && e.sender === run.service.botUserId),
        ).toBe(true);
        expect(loop.running).toBe(false);
        expect(loop.waiting).toBe(false);
        expect(loop.runs).toBe(settledRuns);
        expect(await writesTotal()).toBe(settledWrites);
      } finally {
        wired = false;
        await loop.stop();
      }
    });

    it("an operator who leaves the Space is not invited again, until invite() asks for it", async () => {
      expect((await asUser(operator, "POST", `/_matrix/client/v3/rooms/${enc(spaceId)}/leave`, {})).status).toBe(200);
      const report = await rec.reconcile({ agents, leaving: [] });
      expect(report).toMatchObject({ changes: [], problems: [], writes: 0 });
      expect(await membership(spaceId, operator.userId)).toBe("leave");
      expect(new StateStore(config.stateDir).readText("rooms.json")).toContain(operator.userId);
      expect(run.logs.join("")).toContain(`not inviting them again until \`!hive invite ${operator.userId}\``);
      await expectNoWrites(rec, { agents, leaving: [] });

      const invited = await rec.invite(operator.userId);
      expect(invited).toMatchObject({
        changes: [`Space: ${operator.userId} invited`],
        unchanged: ["hive-chat"],
        problems: [],
        writes: 1,
      });
      expect(await membership(spaceId, operator.userId)).toBe("invite");
      expect(new StateStore(config.stateDir).readText("rooms.json")).not.toContain(operator.userId);
      await expectNoWrites(rec, { agents, leaving: [] });
    });

    it("a restart (new reconciler, same state dir) keeps the rooms and writes nothing", async () => {
      const again = new RoomsReconciler(deps(config));
      const report = await expectNoWrites(again, { agents, leaving: [] });
      expect(report).toMatchObject({ spaceId, chatId });
    });

    it("deleted files: new rooms, files rewritten, the alias moved to the new hive-chat", async () => {
      const store = new StateStore(config.stateDir);
      rmSync(store.path("space-id"));
      rmSync(store.path("hive-chat-id"));
      const report = await new RoomsReconciler(deps(config)).reconcile({ agents, leaving: [] });
      expect(report.problems).toEqual([]);
      expect(report.spaceId).not.toBe(spaceId);
      expect(report.chatId).not.toBe(chatId);
      expect(store.readText("space-id")).toBe(report.spaceId);
      expect(store.readText("hive-chat-id")).toBe(report.chatId);
      expect(report.changes).toContain(`hive-chat: alias ${alias} moved here from ${chatId}`);
      expect(report.changes).toContain(`Space: alias ${spaceAlias} moved here from ${spaceId}`);
      expect(await resolveAlias(spaceAlias)).toBe(report.spaceId);
      expect(find(await state(report.spaceId!), "m.room.canonical_alias")?.content.alias).toBe(spaceAlias);
      expect(await resolveAlias(alias)).toBe(report.chatId);
      expect(find(await state(report.chatId!), "m.room.canonical_alias")?.content.alias).toBe(alias);
      expect(find(await state(report.chatId!), "m.room.join_rules")?.content.allow).toEqual([
        { type: "m.room_membership", room_id: report.spaceId },
      ]);
      for (const agent of agents) expect(await membership(report.chatId!, agent)).toBe("join");
      // Synapse removes a deleted alias from the room's canonical alias; tuwunel leaves that state alone.
      expect(find(await state(chatId), "m.room.canonical_alias")?.content.alias).toBe(onTuwunel ? alias : undefined);
    });
  });

  it("two hives claiming one alias: it moves once each way, then the tug of war stops with a problem", async () => {
    const aliasLocal = `hive-chat-${stamp}-tug`;
    const alias = `#${aliasLocal}:${DOMAIN}`;
    const a = new RoomsReconciler(deps(hiveConfig([], aliasLocal)));
    const b = new RoomsReconciler(deps(hiveConfig([], aliasLocal)));
    const none = { agents: [], leaving: [] };
    const ra = await a.reconcile(none);
    expect(await resolveAlias(alias)).toBe(ra.chatId);
    const rb = await b.reconcile(none);
    expect(rb.changes).toContain(`hive-chat: alias ${alias} moved here from ${ra.chatId}`);
    expect((await a.reconcile(none)).changes).toContain(`hive-chat: alias ${alias} moved here from ${rb.chatId}`);
    const refused = await b.reconcile(none);
    expect(refused.writes).toBe(0);
    expect(refused.problems).toEqual([
      expect.stringContaining(`alias ${alias} was moved back to ${ra.chatId} after this service took it`),
      // Only Synapse took the alias out of b's canonical alias when a moved it away, so only there
      // does b want it back.
      ...(onTuwunel
        ? []
        : [expect.stringMatching(/^hive-chat: canonical alias restored to .*: skipped, the alias does not point to the room$/)]),
    ]);
    expect(await resolveAlias(alias)).toBe(ra.chatId);
    expect(await a.reconcile(none)).toMatchObject({ changes: [], problems: [], writes: 0 });
  });

  describe("adopted files", () => {
    it("pointing to rooms the bot is not in: the problem and its fix are reported, nothing is created, the files stay", async () => {
      const config = hiveConfig([operator.userId]);
      const foreign = await asUser(operator, "POST", "/_matrix/client/v3/createRoom", { preset: "private_chat" });
      expect(foreign.status).toBe(200);
      const foreignId = foreign.json.room_id as string;
      const store = new StateStore(config.stateDir);
      store.writeText("space-id", foreignId);
      store.writeText("hive-chat-id", `!gone${stamp}:${DOMAIN}`);
      const rec = new RoomsReconciler(deps(config));

      const before = await writesTotal();
      const report = await rec.reconcile({ agents, leaving: [] });
      expect(await writesTotal()).toBe(before);
      expect(report.writes).toBe(0);
      expect(report.changes).toEqual([]);
      expect(report.problems).toHaveLength(2);
      const fix = `delete ${store.path("space-id")} (and ${store.path("hive-chat-id")}) to create new rooms, or run \`!hive rooms recreate\``;
      expect(report.problems[0]).toContain(`Space: the room ${foreignId}`);
      expect(report.problems[1]).toContain(`hive-chat: the room !gone${stamp}:${DOMAIN}`);
      for (const p of report.problems) expect(p).toContain(fix);
      expect(store.readText("space-id")).toBe(foreignId);
      expect(store.readText("hive-chat-id")).toBe(`!gone${stamp}:${DOMAIN}`);
      expect(run.logs.some((l) => l.includes('"level":50') && l.includes(foreignId) && l.includes("!hive rooms recreate"))).toBe(true);

      // forgetRooms() is the way out: the next reconcile creates a fresh pair.
      await rec.forgetRooms();
      expect(store.readText("space-id")).toBeUndefined();
      const fresh = await rec.reconcile({ agents: [], leaving: [] });
      expect(fresh.problems).toEqual([]);
      expect(fresh.spaceId).toBeDefined();
      expect(fresh.spaceId).not.toBe(foreignId);
    });

    it("from an older deployment, usable as they are: adopted, nothing recreated", async () => {
      const older = hiveConfig([operator.userId]);
      const made = await new RoomsReconciler(deps(older)).reconcile({ agents: [], leaving: [] });
      const config = makeTestConfig(slot, {
        operators: [operator.userId],
        rooms: { chat: { alias: older.rooms.chat.alias }, space: { alias: older.rooms.space.alias } },
      });
      const store = new StateStore(config.stateDir);
      store.writeText("space-id", made.spaceId!);
      store.writeText("hive-chat-id", made.chatId!);
      const report = await new RoomsReconciler(deps(config)).reconcile({ agents: [], leaving: [] });
      expect(report).toMatchObject({ spaceId: made.spaceId, chatId: made.chatId, changes: [], problems: [], writes: 0 });
    });
  });
});
