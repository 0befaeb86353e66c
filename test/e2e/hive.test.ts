/**
 * The whole hive against the homeserver (Synapse or tuwunel), with the real back end: agents onboarded and joined to the
 * Space and hive-chat, and a real operator running it from the control room (#3, #4, #5 together).
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { COMMANDS } from "../../src/control/commands";
import { PLAIN_WIDTH } from "../../src/control/render";
import { leaves } from "../../src/control/table";
import { HiveMatrixClient } from "../../src/matrix/client";
import { loadRegistration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import type { RegisteredUser } from "../../dev/server-process";
import { cs, repliesTo, say, timeline, type RoomEvent } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually } from "../support/wait";

const env = e2eEnv();
const tag = randomBytes(2).toString("hex");

describe("the hive, run from the control room", () => {
  let slot: AcquiredSlot;
  let config: Config;
  let run: StartedService;
  let operator: RegisteredUser;
  let stranger: RegisteredUser;
  let controlRoom: string;
  const names = [`h${tag}a`, `h${tag}b`];
  const added = `h${tag}x`;

  const userOf = (name: string): string => `@${slot.agentTemplate.replace("{name}", name)}:${env.homeserver.serverName}`;
  const reply = (eventId: string): Promise<RoomEvent> =>
    eventually(async () => (await repliesTo(operator, controlRoom, eventId, run.service.botUserId))[0], `the bot's reply to ${eventId}`);
  const body = (e: RoomEvent): string => String(((e.content["m.new_content"] as RoomEvent["content"] | undefined) ?? e.content).body);
  /** Plain bodies are wrapped at 80 columns and tables padded: compare with every run of white space as one space. */
  const flat = (s: string): string => s.replace(/\s+/g, " ");
  /** The reply's text after its last edit (progress messages are edited in place). */
  async function finalText(eventId: string, settled: RegExp): Promise<string> {
    const first = await reply(eventId);
    return eventually(async () => {
      const edits = (await timeline(operator, controlRoom)).filter(
        (e) => (e.content["m.relates_to"] as { rel_type?: string; event_id?: string } | undefined)?.event_id === first.event_id,
      );
      const text = edits.length > 0 ? body(edits[0]) : body(first);
      return settled.test(text) ? text : undefined;
    }, `the final text of the reply to ${eventId}`);
  }
  async function membership(roomId: string, userId: string): Promise<string | undefined> {
    const state = await run.service.transport.request<RoomEvent[]>("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state`);
    return state.find((e) => e.type === "m.room.member" && e.state_key === userId)?.content.membership as string | undefined;
  }

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    operator = await registerUser(env.homeserver, `hop${tag}`);
    stranger = await registerUser(env.homeserver, `hstr${tag}`);
    config = makeTestConfig(slot, { operators: [operator.userId], control: { notifyIntervalSeconds: 1 } });
    for (const name of names) mkdirSync(join(config.agents.stateRoot, name, "state"), { recursive: true });
    run = await startRecordedService(config, loadRegistration(slot.registrationPath));
    controlRoom = await eventually(() => run.service.control.roomId, "the control room");
    await cs(operator.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {});
    await run.service.agents.idle();
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  it("every provisioned agent is joined to the Space and hive-chat; the operator is invited to both", async () => {
    const { rooms } = run.service;
    const spaceId = await eventually(() => rooms.spaceId, "the Space");
    const chatId = await eventually(() => rooms.chatId, "hive-chat");
    for (const name of names) {
      await eventually(async () => ((await membership(spaceId, userOf(name))) === "join" ? true : undefined), `${name} in the Space`);
      await eventually(async () => ((await membership(chatId, userOf(name))) === "join" ? true : undefined), `${name} in hive-chat`);
      await eventually(() => (run.service.agents.records.get(name)?.state === "joined" ? true : undefined), `${name} marked joined`);
    }
    expect(await membership(spaceId, operator.userId)).toBe("invite");
    expect(await membership(chatId, operator.userId)).toBe("invite");
  });

  it("!hive help lists every command, generated from the table", async () => {
    const help = await reply(await say(operator, controlRoom, "!hive help"));
    expect(help.content.msgtype).toBe("m.notice");
    // Every command of the table (control-help.test.ts pins the table to the list).
    for (const command of leaves(COMMANDS).map((l) => l.path.join(" "))) {
      expect(String(help.content.body)).toContain(`!hive ${command}`);
    }
    expect(String(help.content.formatted_body)).toContain("<code>");
    // What a text client shows: at most 80 columns (the HTML keeps the table).
    expect(
      String(help.content.body)
        .split("\n")
        .filter((l) => l.length > PLAIN_WIDTH),
    ).toEqual([]);
    expect(String(help.content.formatted_body)).toContain("<table>");
  });

  it("!hive agents lists the provisioned agents with their state", async () => {
    const list = await reply(await say(operator, controlRoom, "!hive agents"));
    for (const name of names) expect(String(list.content.body)).toContain(name);
    expect(String(list.content.body)).toContain("joined");
    expect(String(list.content.formatted_body)).toContain("<table>");
  });

  it("!hive agent add x without a state dir: registered and joined, and the reply says the token waits for the dir", async () => {
    const dir = join(config.agents.stateRoot, added, "state");
    const joinedEvents: string[] = [];
    const onJoined = (name: string): number => joinedEvents.push(name);
    run.service.agents.on("joined", onJoined);
    const text = flat(await finalText(await say(operator, controlRoom, `!hive agent add ${added}`), /Added|failed/));
    run.service.agents.off("joined", onJoined);
    expect(text).toContain(`Added agent \`${added}\``);
    expect(text).not.toMatch(/failed|error/i);
    expect(text).toContain(`It has no state dir yet (\`${dir}\`), so no token file is written now.`);
    expect(text).toContain(`Its token is written to \`${join(dir, "matrix-token")}\``);
    // The state it reached: joined, in both rooms (read from the homeserver, not assumed).
    expect(text).toMatch(/State joined /);
    expect(text).toMatch(/Rooms hive, hive-chat /);
    expect(run.service.agents.records.get(added)).toMatchObject({ source: "command", state: "joined" });
    // Announced once, when its record became joined (what the bench waits on instead of polling).
    expect(joinedEvents).toEqual([added]);
    expect(await membership(run.service.rooms.chatId!, userOf(added))).toBe("join");
    expect(await membership(run.service.rooms.spaceId!, userOf(added))).toBe("join");
  });

  it("!hive agent rotate x without a state dir says that nothing is rotated; the token comes when the dir appears", async () => {
    const dir = join(config.agents.stateRoot, added, "state");
    const ask = flat(body(await reply(await say(operator, controlRoom, `!hive agent rotate ${added}`))));
    expect(ask).toContain(`has no state dir yet (\`${dir}\`), so there is no token to replace`);
    expect(ask).toContain("nothing is logged out and no token file is written");
    expect(ask).not.toContain("This logs out");

    const done = flat(body(await reply(await say(operator, controlRoom, `!hive agent rotate ${added} --yes`))));
    expect(done).toContain("no token was rotated");
    expect(done).toContain("It has no state dir yet");
    expect(existsSync(join(dir, "matrix-token"))).toBe(false);

    // The promise made above: the dir appears, the token is written.
    mkdirSync(dir, { recursive: true });
    const token = await eventually(() => {
      const file = join(dir, "matrix-token");
      return existsSync(file) ? readFileSync(file, "utf8").trim() : undefined;
    }, `${added}'s token file`);
    const who = await fetch(`${env.homeserver.url}/_matrix/client/v3/account/whoami`, { headers: { Authorization: `Bearer ${token}` } });
    expect(((await who.json()) as { user_id?: string }).user_id).toBe(userOf(added));
  });

  it("!hive agent rotate of a joined agent answers with the state it reached: joined, both rooms, a new token", async () => {
    const name = names[1];
    const file = join(config.agents.stateRoot, name, "state", "matrix-token");
    const old = readFileSync(file, "utf8").trim();
    const ask = flat(body(await reply(await say(operator, controlRoom, `!hive agent rotate ${name}`))));
    expect(ask).toContain(`writes a new token to \`${file}\``);

    const text = flat(body(await reply(await say(operator, controlRoom, `!hive agent rotate ${name} --yes`))));
    expect(text).toContain(`Rotated the token of agent \`${name}\``);
    expect(text).toMatch(/State joined /);
    expect(text).toMatch(/Rooms hive, hive-chat /);
    expect(text).toContain(`Token file \`${file}\``);
    const fresh = readFileSync(file, "utf8").trim();
    expect(fresh).not.toBe(old);
    const whoami = (token: string): Promise<number> =>
      fetch(`${env.homeserver.url}/_matrix/client/v3/account/whoami`, { headers: { Authorization: `Bearer ${token}` } }).then(
        (r) => r.status,
      );
    expect(await whoami(old)).toBe(401);
    expect(await whoami(fresh)).toBe(200);
    expect(await membership(run.service.rooms.spaceId!, userOf(name))).toBe("join");
    expect(await membership(run.service.rooms.chatId!, userOf(name))).toBe("join");
  });

  it("!hive agent remove without --yes asks and changes nothing; with --yes it removes", async () => {
    const name = names[0];
    const token = readFileSync(join(config.agents.stateRoot, name, "state", "matrix-token"), "utf8").trim();
    const ask = await reply(await say(operator, controlRoom, `!hive agent remove ${name}`));
    expect(body(ask)).toContain(`!hive agent remove ${name} --yes`);
    expect(run.service.agents.records.get(name)?.state).toBe("joined");
    const whoami = (): Promise<Response> =>
      fetch(`${env.homeserver.url}/_matrix/client/v3/account/whoami`, { headers: { Authorization: `Bearer ${token}` } });
    expect((await whoami()).status).toBe(200);

    const text = await finalText(await say(operator, controlRoom, `!hive agent remove ${name} --yes`), /Removed|removed/);
    expect(text).toContain(name);
    expect(run.service.agents.records.get(name)?.state).toBe("removed");
    expect((await whoami()).status).toBe(401);
    await eventually(
      async () => ((await membership(run.service.rooms.chatId!, userOf(name))) === "leave" ? true : undefined),
      `${name} left hive-chat`,
    );
  });

  it("a non-operator is refused and an agent user is ignored; nothing changes", async () => {
    await cs(stranger.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {}).catch(() => undefined);
    // The stranger was not invited; the operator invites them so they can speak in the room.
    await cs(operator.accessToken, "POST", `/rooms/${encodeURIComponent(controlRoom)}/invite`, { user_id: stranger.userId }).catch(
      () => undefined,
    );
    await cs(stranger.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {});
    const target = names[1];
    const refused = await reply(await say(stranger, controlRoom, `!hive agent remove ${target} --yes`));
    expect(body(refused)).toMatch(/only .*operators|not allowed|may not/i);

    const agent = new HiveMatrixClient(run.service.transport, userOf(target));
    await run.service.bot.inviteUser(userOf(target), controlRoom).catch(() => undefined);
    await agent.joinRoom(controlRoom);
    const fromAgent = await agent.sendMessage(controlRoom, { msgtype: "m.text", body: `!hive agent remove ${target} --yes` });
    // A later operator command is answered, and commands are handled in order: the agent's got no answer, not a late one.
    await reply(await say(operator, controlRoom, "!hive version"));
    expect(run.seen.some((e) => e.event_id === fromAgent)).toBe(true);
    expect(await repliesTo(operator, controlRoom, fromAgent, run.service.botUserId)).toEqual([]);
    expect(run.service.agents.records.get(target)?.state).toBe("joined");
    expect(existsSync(join(config.agents.stateRoot, target, "state", "matrix-token"))).toBe(true);
  });

  it("a transaction replayed with a command runs it once", async () => {
    const eventId = await say(operator, controlRoom, "!hive version");
    await reply(eventId);
    const events = (await timeline(operator, controlRoom)).filter((e) => e.event_id === eventId);
    const replay = { ...events[0], room_id: controlRoom };
    const res = await fetch(`http://127.0.0.1:${slot.port}/_matrix/app/v1/transactions/replay-${tag}`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${slot.hsToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({ events: [replay] }),
    });
    expect(res.status).toBe(200);
    // Handled (as a duplicate) before a later command is answered.
    await reply(await say(operator, controlRoom, "!hive version"));
    expect(run.seen.filter((e) => e.event_id === eventId)).toHaveLength(2);
    expect(await repliesTo(operator, controlRoom, eventId, run.service.botUserId)).toHaveLength(1);
  });

  it("!hive status answers with the rooms and agent counts; the bot reported the onboarding on its own", async () => {
    const status = await reply(await say(operator, controlRoom, "!hive status"));
    expect(String(status.content.body)).toContain(run.service.rooms.spaceId!);
    expect(String(status.content.body)).toContain(run.service.rooms.chatId!);
    // The aliases too: the way in for clients that cannot join a version 12 room (the Space) by its ID.
    expect(String(status.content.body)).toContain(`#${config.rooms.space.alias}:${env.homeserver.serverName}`);
    expect(String(status.content.body)).toContain(`#${config.rooms.chat.alias}:${env.homeserver.serverName}`);
    const reports = (await timeline(operator, controlRoom)).filter(
      (e) => e.sender === run.service.botUserId && /onboarded/i.test(String(e.content.body)),
    );
    expect(reports.length).toBeGreaterThan(0);
  });

  it("answers the homeserver's user queries: 200 for this hive's agents and the bot, 404 for others", async () => {
    const query = (userId: string): Promise<number> =>
      fetch(`http://127.0.0.1:${slot.port}/_matrix/app/v1/users/${encodeURIComponent(userId)}`, {
        headers: { Authorization: `Bearer ${slot.hsToken}` },
      }).then((r) => r.status);
    expect(await query(userOf(names[1]))).toBe(200);
    expect(await query(run.service.botUserId)).toBe(200);
    expect(await query(userOf(`zz${tag}`))).toBe(404);
    expect(await query(operator.userId)).toBe(404);
  });
});
