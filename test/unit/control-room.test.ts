/** Finding, creating and adopting the control room; encryption warnings; retries. */
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { ControlRoom } from "../../src/control";
import { ControlRoomError, createOptions, locateControlRoom, MARKER_EVENT, PENDING_FILE } from "../../src/control/room";
import { createLogger } from "../../src/logging";
import { Metrics, countsBy } from "../../src/metrics";
import { StateStore } from "../../src/store/state-store";
import { BOT, DOMAIN, FakeBot, isHiveUser, message, OPERATOR, RecordingApi, testConfig } from "../support/control";
import { captureLogs } from "../support/logs";
import { tempDir } from "../support/tmp";

const logger = createLogger({ level: "silent" }).logger;

function fresh(overrides: Parameters<typeof testConfig>[1] = {}): { config: Config; state: StateStore; bot: FakeBot } {
  const dir = tempDir("hm-control-room-");
  const state = new StateStore(dir);
  state.init();
  return { config: testConfig(dir, overrides), state, bot: new FakeBot() };
}

function control(env: { config: Config; state: StateStore; bot: FakeBot }, retryDelayMs?: (n: number) => number): ControlRoom {
  return new ControlRoom({
    bot: env.bot,
    botUserId: BOT,
    state: env.state,
    config: env.config,
    logger,
    metrics: new Metrics(),
    api: new RecordingApi(),
    isAppserviceUser: isHiveUser,
    retryDelayMs,
  });
}

const until = async (check: () => boolean): Promise<void> => {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(check()).toBe(true);
};

describe("creating the control room", () => {
  it("creates a private, unencrypted room with the operators invited at power 100, and records its ID (0600)", async () => {
    const env = fresh({ operators: [OPERATOR, `@second:${DOMAIN}`] });
    const c = control(env);
    expect(await c.start()).toBe(true);
    const options = env.bot.created[0];
    expect(env.bot.created).toHaveLength(1);
    expect(options).toMatchObject({
      preset: "private_chat",
      visibility: "private",
      name: `hive control (${DOMAIN})`,
      invite: [OPERATOR, `@second:${DOMAIN}`],
      power_level_content_override: { users: { [BOT]: 100, [OPERATOR]: 100, [`@second:${DOMAIN}`]: 100 } },
    });
    const initial = options.initial_state as { type: string }[];
    expect(initial.map((s) => s.type)).not.toContain("m.room.encryption");
    expect(c.roomId).toBe(`!created1:${DOMAIN}`);
    expect(env.state.readText("control-room-id")).toBe(c.roomId);
    expect(statSync(env.state.path("control-room-id")).mode & 0o777).toBe(0o600);
    expect(env.state.readText(PENDING_FILE)).toBeUndefined();
  });

  it("uses control.name when set", () => {
    const env = fresh({ control: { name: "Ops" } });
    expect(createOptions({ botUserId: BOT, config: env.config }, "n").name).toBe("Ops");
  });

  it("adopts the room in control-room-id instead of creating one (and changes nothing on a second start)", async () => {
    const env = fresh();
    await control(env).start();
    const requestsBefore = env.bot.invites.length;
    const again = control(env);
    expect(await again.start()).toBe(true);
    expect(env.bot.created).toHaveLength(1);
    expect(again.roomId).toBe(`!created1:${DOMAIN}`);
    expect(env.bot.invites).toHaveLength(requestsBefore);
  });

  it("adopts an existing file from an older deployment as is", async () => {
    const env = fresh();
    env.bot.setState("!old:hive.test", "m.room.member", BOT, { membership: "join" });
    writeFileSync(join(env.state.dir, "control-room-id"), "!old:hive.test\n", { mode: 0o600 });
    const c = control(env);
    await c.start();
    expect(c.roomId).toBe("!old:hive.test");
    expect(env.bot.created).toHaveLength(0);
    expect(env.state.readText("control-room-id")).toBe("!old:hive.test");
  });

  it("finds the room of an interrupted creation by its marker instead of creating a second", async () => {
    const env = fresh();
    const roomId = await env.bot.createRoom(createOptions({ botUserId: BOT, config: env.config }, "nonce-1"));
    env.state.writeText(PENDING_FILE, "nonce-1");
    const located = await locateControlRoom({ client: env.bot, botUserId: BOT, state: env.state, config: env.config, logger });
    expect(located).toEqual({ roomId, origin: "created" });
    expect(env.bot.created).toHaveLength(1);
    expect(env.state.readText("control-room-id")).toBe(roomId);
    expect(env.state.readText(PENDING_FILE)).toBeUndefined();
  });

  it("creates with the pending nonce when the interrupted creation never reached the homeserver", async () => {
    const env = fresh();
    env.state.writeText(PENDING_FILE, "nonce-2");
    await control(env).start();
    expect(env.bot.created).toHaveLength(1);
    const marker = (env.bot.created[0].initial_state as { type: string; content: unknown }[]).find((s) => s.type === MARKER_EVENT);
    expect(marker?.content).toEqual({ nonce: "nonce-2" });
  });

  it("invites an operator added to the config later and raises their power", async () => {
    const env = fresh();
    await control(env).start();
    const roomId = env.state.readText("control-room-id")!;
    env.bot.setState(roomId, "m.room.power_levels", "", { users: { [BOT]: 100 }, users_default: 0 });
    const later = { ...env, config: { ...env.config, operators: [OPERATOR, `@new:${DOMAIN}`] } };
    env.bot.setState(roomId, "m.room.member", OPERATOR, { membership: "join" });
    await control(later).start();
    expect(env.bot.invites).toContainEqual({ userId: `@new:${DOMAIN}`, roomId });
    expect(env.bot.invites.filter((i) => i.userId === OPERATOR)).toHaveLength(1); // at creation only
    expect(await env.bot.getRoomStateEvent(roomId, "m.room.power_levels", "")).toMatchObject({
      users: { [BOT]: 100, [OPERATOR]: 100, [`@new:${DOMAIN}`]: 100 },
      users_default: 0,
    });
  });
});

describe("a configured control room", () => {
  it("resolves an alias and joins the room", async () => {
    const env = fresh({ control: { room: "#ops:hive.test" } });
    env.bot.aliases.set("#ops:hive.test", "!ops:hive.test");
    env.bot.setState("!ops:hive.test", "m.room.create", "", {});
    const c = control(env);
    expect(await c.start()).toBe(true);
    expect(c.roomId).toBe("!ops:hive.test");
    expect(env.bot.joined.has("!ops:hive.test")).toBe(true);
    expect(env.bot.created).toHaveLength(0);
    expect(env.state.readText("control-room-id")).toBeUndefined();
  });

  it("says clearly when the alias does not exist or the bot cannot join", async () => {
    const env = fresh({ control: { room: "#nope:hive.test" } });
    const deps = { client: env.bot, botUserId: BOT, state: env.state, config: env.config, logger };
    await expect(locateControlRoom(deps)).rejects.toThrow(new ControlRoomError("control.room: no room has the alias #nope:hive.test"));
    const byId = { ...deps, config: { ...env.config, control: { ...env.config.control, room: "!closed:hive.test" } } };
    await expect(locateControlRoom(byId)).rejects.toThrow(
      /the bot @hive:hive.test cannot join control.room !closed:hive.test \(M_FORBIDDEN.*invite @hive:hive.test to it/,
    );
  });

  it("keeps the service going and retries until the room is there, or joins when invited", async () => {
    const env = fresh({ control: { room: "#later:hive.test" } });
    const c = control(env, () => 20);
    expect(await c.start()).toBe(false);
    expect(c.roomId).toBeUndefined();
    env.bot.aliases.set("#later:hive.test", "!later:hive.test");
    env.bot.setState("!later:hive.test", "m.room.create", "", {});
    await until(() => c.roomId === "!later:hive.test");
    await c.stop();
  });

  it("handles commands that arrived before the room was set up", async () => {
    const env = fresh({ control: { room: "!early:hive.test" } });
    env.bot.setState("!early:hive.test", "m.room.member", BOT, { membership: "join" });
    const c = control(env);
    const e = message("!hive version", { roomId: "!early:hive.test" });
    await c.handleEvent(e);
    await c.handleEvent(message("!hive version", { roomId: "!elsewhere:hive.test" }));
    expect(env.bot.sent).toEqual([]);
    expect(await c.start()).toBe(true);
    await c.idle();
    expect(env.bot.repliesTo(e.event_id!)).toHaveLength(1);
    expect(env.bot.sent).toHaveLength(1);
  });

  it("counts and logs the held messages it drops: beyond the bound, and at a stop before the room was ready", async () => {
    const env = fresh({ control: { room: "!late:hive.test" } });
    const metrics = new Metrics();
    const { lines, destination } = captureLogs();
    const c = new ControlRoom({
      bot: env.bot,
      botUserId: BOT,
      state: env.state,
      config: env.config,
      logger: createLogger({ level: "info", destination }).logger,
      metrics,
      api: new RecordingApi(),
      isAppserviceUser: isHiveUser,
      retryDelayMs: () => 3_600_000,
    });
    expect(await c.start()).toBe(false);
    for (let i = 0; i < 205; i++) await c.handleEvent(message(`!hive version ${i}`, { roomId: "!late:hive.test" }));
    const dropped = async (): Promise<number> => (await countsBy(metrics.eventsDropped, "reason")).control_room_not_ready ?? 0;
    expect(await dropped()).toBe(5);
    await c.stop();
    expect(await dropped()).toBe(205);
    const warnings = lines.filter((l) => l.includes("held until the control room is set up were dropped"));
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(/"dropped":200.*hive-matrix stopped first/);
  });

  it("sets up on an invite of the bot", async () => {
    const env = fresh({ control: { room: "!inv:hive.test" } });
    const c = control(env, () => 3_600_000);
    expect(await c.start()).toBe(false);
    env.bot.setState("!inv:hive.test", "m.room.member", BOT, { membership: "invite" });
    await c.handleEvent({
      type: "m.room.member",
      room_id: "!inv:hive.test",
      state_key: BOT,
      sender: OPERATOR,
      content: { membership: "invite" },
    });
    await until(() => c.roomId === "!inv:hive.test");
    await c.stop();
  });
});

describe("encryption in the control room", () => {
  const warning = /Encryption is switched on in this room, and I cannot read encrypted messages/;

  it("warns at startup, saying to delete control-room-id and restart", async () => {
    const env = fresh();
    await control(env).start();
    const roomId = env.state.readText("control-room-id")!;
    env.bot.setState(roomId, "m.room.encryption", "", { algorithm: "m.megolm.v1.aes-sha2" });
    await control(env).start();
    const notice = env.bot.sent.find((m) => warning.test(String(m.content.body)));
    expect(notice?.roomId).toBe(roomId);
    expect(notice?.content.msgtype).toBe("m.notice");
    expect(String(notice?.content.body).replace(/\s+/g, " ")).toContain(
      `delete \`${env.state.path("control-room-id")}\` and restart hive-matrix`,
    );
  });

  it("warns when encryption is switched on while running, and reminds an operator who sends encrypted messages", async () => {
    const env = fresh();
    const c = control(env);
    await c.start();
    const roomId = c.roomId!;
    await c.handleEvent({
      type: "m.room.encryption",
      state_key: "",
      room_id: roomId,
      sender: OPERATOR,
      event_id: "$enc",
      content: { algorithm: "m.megolm.v1.aes-sha2" },
    });
    expect(env.bot.sent.filter((m) => warning.test(String(m.content.body)))).toHaveLength(1);
    // Within the reminder interval: no second warning for an encrypted message.
    await c.handleEvent({ type: "m.room.encrypted", room_id: roomId, sender: OPERATOR, event_id: "$e1", content: {} });
    expect(env.bot.sent.filter((m) => warning.test(String(m.content.body)))).toHaveLength(1);
    // The bot's own (or an agent's) encrypted events never trigger anything.
    await c.handleEvent({ type: "m.room.encrypted", room_id: roomId, sender: BOT, event_id: "$e2", content: {} });
    expect(env.bot.sent.filter((m) => warning.test(String(m.content.body)))).toHaveLength(1);
  });

  it("tells a configured room's operators to configure another room", async () => {
    const env = fresh({ control: { room: "!enc:hive.test" } });
    env.bot.setState("!enc:hive.test", "m.room.member", BOT, { membership: "join" });
    env.bot.setState("!enc:hive.test", "m.room.encryption", "", { algorithm: "m.megolm.v1.aes-sha2" });
    await control(env).start();
    expect(String(env.bot.sent[0].content.body)).toMatch(/set `control.room` to an unencrypted room/);
  });

  it("still takes plain-text commands there", async () => {
    const env = fresh();
    const c = control(env);
    await c.start();
    const e = message("!hive version", { roomId: c.roomId });
    await c.handleEvent(e);
    await c.idle();
    expect(env.bot.repliesTo(e.event_id!)).toHaveLength(1);
  });
});
