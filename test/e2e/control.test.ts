/**
 * The control room against a real homeserver (Synapse or tuwunel), with real users sending real messages: the room is
 * created for the operator, commands are answered as replies, destructive ones wait for --yes,
 * strangers are refused, the appservice's own users are ignored, a redelivered command runs once
 * (new transaction, and a restart of the component), progress is one edited message, reports are
 * batched, and encryption switched on gets a warning. The HiveApi is a recording stand-in here.
 */
import { randomBytes } from "node:crypto";
import { ControlRoom, appserviceUserPredicate, type Outcome } from "../../src/control";
import type { Config } from "../../src/config/schema";
import { HiveMatrixClient } from "../../src/matrix/client";
import { ensureRegistered } from "../../src/matrix/users";
import { loadRegistration, type Registration } from "../../src/registration";
import type { MatrixEvent } from "../../src/store/transactions";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import type { RegisteredUser } from "../../dev/server-process";
import { RecordingApi } from "../support/control";
import { cs, say, type RoomEvent } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually as until } from "../support/wait";

const env = e2eEnv();
const stamp = `${Date.now().toString(36)}${randomBytes(2).toString("hex")}`;

describe("control room against the homeserver", () => {
  let slot: AcquiredSlot;
  let run: StartedService;
  let config: Config;
  let registration: Registration;
  let operator: RegisteredUser;
  let stranger: RegisteredUser;
  let control: ControlRoom;
  let roomId: string;
  const api = new RecordingApi();
  const outcomes: { eventId: string; outcome: Outcome }[] = [];

  function component(): ControlRoom {
    const { service } = run;
    return new ControlRoom({
      bot: service.bot,
      botUserId: service.botUserId,
      state: service.state,
      config: service.config,
      logger: service.logger,
      metrics: service.metrics,
      api,
      isAppserviceUser: appserviceUserPredicate(registration, config.homeserver.domain),
      editIntervalMs: 200,
      onOutcome: (eventId, outcome) => {
        if (eventId) outcomes.push({ eventId, outcome });
      },
    });
  }

  /** A new component, wired the way the service wires it (the service cannot unregister the stopped one). */
  function attach(): ControlRoom {
    const c = component();
    run.service.onEvent((e) => c.handleEvent(e));
    return c;
  }

  const outcomeOf = (eventId: string, n = 1): Promise<Outcome> =>
    until(() => outcomes.filter((o) => o.eventId === eventId)[n - 1]?.outcome, `outcome ${n} of ${eventId}`);

  async function timeline(): Promise<RoomEvent[]> {
    const res = await cs<{ chunk: RoomEvent[] }>(
      operator.accessToken,
      "GET",
      `/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=200`,
    );
    return res.chunk;
  }

  const repliesTo = async (eventId: string): Promise<RoomEvent[]> =>
    (await timeline()).filter((e) => {
      const rel = e.content["m.relates_to"] as { "m.in_reply_to"?: { event_id?: string } } | undefined;
      return e.sender === run.service.botUserId && rel?.["m.in_reply_to"]?.event_id === eventId;
    });

  const replyTo = (eventId: string): Promise<RoomEvent> =>
    until(async () => (await repliesTo(eventId))[0], `the bot's reply to ${eventId}`);

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    operator = await registerUser(env.homeserver, `op${stamp}`);
    stranger = await registerUser(env.homeserver, `stranger${stamp}`);
    config = makeTestConfig(slot, { operators: [operator.userId], control: { notifyIntervalSeconds: 1 } });
    registration = loadRegistration(slot.registrationPath);
    // The component under test is wired here with a recording api; the service's own is off.
    run = await startRecordedService(config, registration, { controlRoom: false });
    control = attach();
    expect(await control.start()).toBe(true);
    roomId = control.roomId!;
    await cs(operator.accessToken, "POST", `/join/${encodeURIComponent(roomId)}`, {});
  });

  afterAll(async () => {
    await control?.stop();
    await run?.service.stop();
    slot?.release();
  });

  it("created a private, unencrypted control room with the operator at power 100", async () => {
    expect(run.service.state.readText("control-room-id")).toBe(roomId);
    const state = await cs<{ type: string; state_key: string; content: Record<string, unknown> }[]>(
      operator.accessToken,
      "GET",
      `/rooms/${encodeURIComponent(roomId)}/state`,
    );
    const get = (type: string, key = ""): Record<string, unknown> | undefined =>
      state.find((s) => s.type === type && s.state_key === key)?.content;
    expect(get("m.room.join_rules")).toMatchObject({ join_rule: "invite" });
    expect(get("m.room.name")).toEqual({ name: `hive control (${env.homeserver.serverName})` });
    expect(get("m.room.encryption")).toBeUndefined();
    expect(get("m.room.power_levels")?.users).toMatchObject({ [run.service.botUserId]: 100, [operator.userId]: 100 });
    expect(get("m.room.member", operator.userId)).toMatchObject({ membership: "join" });
  });

  it("answers !hive help with a notice reply listing every command", async () => {
    const id = await say(operator, roomId, "!hive help");
    const reply = await replyTo(id);
    expect(reply.type).toBe("m.room.message");
    expect(reply.content).toMatchObject({ msgtype: "m.notice", format: "org.matrix.custom.html" });
    for (const c of ["help", "status", "agents", "agent info", "agent add", "agent remove", "agent rotate", "invite", "sync", "version"]) {
      expect(reply.content.body).toContain(`!hive ${c}`);
      expect(reply.content.formatted_body).toContain(`!hive ${c}`);
    }
  });

  let confirmedEvent: MatrixEvent;

  it("asks before agent remove, and runs it with --yes", async () => {
    const ask = await say(operator, roomId, "!hive agent remove x");
    expect(await outcomeOf(ask)).toEqual({ kind: "confirm", command: "agent remove" });
    expect((await replyTo(ask)).content.body).toMatch(
      /This logs out `@agent-x:hive.test`[\s\S]*Send `!hive agent remove x --yes` to confirm\./,
    );
    expect(api.mutations()).toEqual([]);

    const yes = await say(operator, roomId, "!hive agent remove x --yes");
    expect(await outcomeOf(yes)).toEqual({ kind: "done", command: "agent remove" });
    expect((await replyTo(yes)).content.body).toMatch(/^Removed agent `x`/);
    expect(api.mutations()).toEqual([{ method: "removeAgent", args: ["x"] }]);
    confirmedEvent = run.seen.find((e) => e.event_id === yes)!;
    expect(confirmedEvent).toBeDefined();
  });

  it("refuses a non-operator and does nothing", async () => {
    await cs(operator.accessToken, "POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: stranger.userId });
    await cs(stranger.accessToken, "POST", `/join/${encodeURIComponent(roomId)}`, {});
    const callsBefore = api.calls.length;
    const id = await say(stranger, roomId, "!hive agent rotate x --yes");
    expect(await outcomeOf(id)).toEqual({ kind: "refused" });
    expect((await replyTo(id)).content.body).toBe("Sorry, only the hive's operators can give commands here.");
    expect(api.calls.length).toBe(callsBefore);
  });

  it("ignores the appservice's own users: no action, no answer", async () => {
    const localpart = slot.agentTemplate.replace("{name}", `c${stamp.slice(-6)}`);
    const agent = await ensureRegistered(run.service.transport, localpart, env.homeserver.serverName);
    await cs(operator.accessToken, "POST", `/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: agent.userId });
    const agentClient = new HiveMatrixClient(run.service.transport, agent.userId);
    await agentClient.joinRoom(roomId);
    const callsBefore = api.calls.length;
    const fromAgent = await agentClient.sendMessage(roomId, { msgtype: "m.text", body: "!hive agent rotate x --yes" });
    const fromBot = await run.service.bot.sendMessage(roomId, { msgtype: "m.text", body: "!hive agent rotate x --yes" });
    expect(await outcomeOf(fromAgent)).toEqual({ kind: "ignored", reason: "appservice-user" });
    expect(await outcomeOf(fromBot)).toEqual({ kind: "ignored", reason: "appservice-user" });
    // A later operator command is answered, so the silence above is not a delay.
    const later = await say(operator, roomId, "!hive version");
    await replyTo(later);
    expect(await repliesTo(fromAgent)).toEqual([]);
    expect(await repliesTo(fromBot)).toEqual([]);
    expect(api.calls.length).toBe(callsBefore);
  });

  it("runs a command redelivered in a new transaction once", async () => {
    const res = await fetch(`http://127.0.0.1:${slot.port}/_matrix/app/v1/transactions/replay-${stamp}`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${slot.hsToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({ events: [confirmedEvent] }),
    });
    expect(res.status).toBe(200);
    expect(await outcomeOf(confirmedEvent.event_id!, 2)).toEqual({ kind: "ignored", reason: "duplicate" });
    expect(api.mutations().filter((c) => c.method === "removeAgent")).toHaveLength(1);
    expect(await repliesTo(confirmedEvent.event_id!)).toHaveLength(1);
  });

  it("runs it once after a restart of the component on the same state dir", async () => {
    await control.stop();
    control = attach();
    expect(await control.start()).toBe(true);
    expect(control.roomId).toBe(roomId);
    await control.handleEvent(confirmedEvent);
    await control.idle();
    expect(outcomes.filter((o) => o.eventId === confirmedEvent.event_id).map((o) => o.outcome)).toEqual([
      { kind: "done", command: "agent remove" },
      { kind: "ignored", reason: "duplicate" },
      { kind: "ignored", reason: "duplicate" },
    ]);
    expect(api.mutations().filter((c) => c.method === "removeAgent")).toHaveLength(1);
    // The restarted component takes new commands; the stopped one stays silent.
    const id = await say(operator, roomId, "!hive version");
    expect(await outcomeOf(id)).toEqual({ kind: "done", command: "version" });
    expect(await repliesTo(id)).toHaveLength(1);
  });

  it("shows progress of long work in one reply edited in place", async () => {
    api.progressLines = ["checking the Space", "checking hive-chat", "fixing power levels"];
    const id = await say(operator, roomId, "!hive sync");
    expect(await outcomeOf(id)).toEqual({ kind: "done", command: "sync" });
    const first = await replyTo(id);
    expect(await repliesTo(id)).toHaveLength(1);
    const edits = (await timeline()).filter(
      (e) => (e.content["m.relates_to"] as { rel_type?: string; event_id?: string } | undefined)?.event_id === first.event_id,
    );
    expect(edits.length).toBeGreaterThanOrEqual(1);
    for (const e of edits) expect(e.content["m.relates_to"]).toEqual({ rel_type: "m.replace", event_id: first.event_id });
    // /messages is newest first: the first edit listed is the final one.
    expect((edits[0].content["m.new_content"] as { body: string }).body).toMatch(/^Sync done: 1 change, 0 problems\./);
    api.progressLines = [];
  });

  it("batches the bot's own reports into one message", async () => {
    control.report("agent-onboarded", "a");
    control.report("agent-onboarded", "b");
    control.report("agent-onboarded", "c");
    const notice = await until(async () => (await timeline()).find((e) => e.content.body === "3 agents onboarded: a, b, c"), "the report");
    expect(notice.content.msgtype).toBe("m.notice");
  });

  it("warns in the room when encryption is switched on", async () => {
    await cs(operator.accessToken, "PUT", `/rooms/${encodeURIComponent(roomId)}/state/m.room.encryption/`, {
      algorithm: "m.megolm.v1.aes-sha2",
    });
    const warning = await until(
      async () =>
        (await timeline()).find(
          (e) => e.sender === run.service.botUserId && /I cannot read encrypted messages/.test(String(e.content.body)),
        ),
      "the encryption warning",
    );
    expect(warning.content.msgtype).toBe("m.notice");
    expect(String(warning.content.body)).toMatch(/delete\s+`.*control-room-id`\s+and restart hive-matrix/);
  });

  it("keeps every token out of the logs", () => {
    const all = run.logs.join("");
    for (const secret of [slot.asToken, slot.hsToken, operator.accessToken, stranger.accessToken]) expect(all).not.toContain(secret);
  });
});
