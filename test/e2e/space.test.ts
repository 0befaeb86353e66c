/**
 * The Space as the hive's live map, against Synapse: rooms agents open with each other or with an
 * operator appear in the Space on their own, rooms with outsiders do not, a tombstoned room gives
 * way to its replacement, operators add and remove rooms from chat, and a reconcile after all of
 * that writes nothing.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { loadRegistration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import type { RegisteredUser } from "../../dev/server-process";
import { cs, repliesTo, say, type RoomEvent } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually } from "../support/wait";

const env = e2eEnv();
const tag = randomBytes(2).toString("hex");
const CS = "/_matrix/client/v3";

describe("the Space lists every hive room", () => {
  let slot: AcquiredSlot;
  let config: Config;
  let run: StartedService;
  let operator: RegisteredUser;
  let stranger: RegisteredUser;
  let controlRoom: string;
  const [a, b] = [`s${tag}a`, `s${tag}b`];
  const rooms: Record<string, string> = {};

  const userOf = (name: string): string => `@${slot.agentTemplate.replace("{name}", name)}:${env.homeserver.serverName}`;
  const enc = encodeURIComponent;
  /** A request as an agent, through the appservice (as the agent's own client would, with its token). */
  const asAgent = <T>(name: string, method: string, path: string, body?: unknown): Promise<T> =>
    run.service.transport.request<T>(method, `${CS}${path}`, { asUser: userOf(name), body });
  let txn = 0;
  const agentSays = (name: string, roomId: string, body: string): Promise<unknown> =>
    asAgent(name, "PUT", `/rooms/${enc(roomId)}/send/m.room.message/sp${tag}-${++txn}`, { msgtype: "m.text", body });
  async function spaceChildren(): Promise<Map<string, Record<string, unknown>>> {
    const state = await run.service.transport.request<RoomEvent[]>("GET", `${CS}/rooms/${enc(run.service.rooms.spaceId!)}/state`, {
      asUser: run.service.botUserId,
    });
    return new Map(state.filter((e) => e.type === "m.space.child").map((e) => [e.state_key!, e.content]));
  }
  const isChild = async (roomId: string): Promise<boolean> => Object.keys((await spaceChildren()).get(roomId) ?? {}).length > 0;
  const listedWithin = (roomId: string, what: string): Promise<true> =>
    eventually(async () => ((await isChild(roomId)) ? true : undefined), `${what} listed in the Space`, 10_000);
  const goneWithin = (roomId: string, what: string): Promise<true> =>
    eventually(async () => (!(await isChild(roomId)) ? true : undefined), `${what} gone from the Space`, 10_000);
  const reply = (eventId: string): Promise<RoomEvent> =>
    eventually(async () => (await repliesTo(operator, controlRoom, eventId, run.service.botUserId))[0], `the reply to ${eventId}`);

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    operator = await registerUser(env.homeserver, `sop${tag}`);
    stranger = await registerUser(env.homeserver, `sstr${tag}`);
    config = makeTestConfig(slot, { operators: [operator.userId] });
    for (const name of [a, b]) mkdirSync(join(config.agents.stateRoot, name, "state"), { recursive: true });
    run = await startRecordedService(config, loadRegistration(slot.registrationPath));
    controlRoom = await eventually(() => run.service.control.roomId, "the control room");
    await cs(operator.accessToken, "POST", `/join/${enc(controlRoom)}`, {});
    await run.service.agents.idle();
    for (const name of [a, b]) {
      await eventually(() => (run.service.agents.records.get(name)?.state === "joined" ? true : undefined), `${name} joined`);
    }
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  it("two agents create a room and talk: it appears in the Space within seconds, with via", async () => {
    const { room_id } = await asAgent<{ room_id: string }>(a, "POST", "/createRoom", { name: `plans ${tag}`, invite: [userOf(b)] });
    rooms.agents = room_id;
    await asAgent(b, "POST", `/join/${enc(room_id)}`, {});
    await agentSays(a, room_id, "shall we?");
    await agentSays(b, room_id, "yes");
    await listedWithin(room_id, "the agents' room");
    expect((await spaceChildren()).get(room_id)).toEqual({ via: [env.homeserver.serverName] });
  });

  it("an operator–agent direct chat appears", async () => {
    const { room_id } = await cs<{ room_id: string }>(operator.accessToken, "POST", "/createRoom", {
      is_direct: true,
      preset: "trusted_private_chat",
      invite: [userOf(a)],
    });
    rooms.dm = room_id;
    await asAgent(a, "POST", `/join/${enc(room_id)}`, {});
    await say(operator, room_id, "hello agent");
    await listedWithin(room_id, "the direct chat");
  });

  it("a room with an outsider does not appear", async () => {
    const { room_id } = await asAgent<{ room_id: string }>(a, "POST", "/createRoom", {
      name: `with outsider ${tag}`,
      invite: [stranger.userId],
    });
    rooms.outsider = room_id;
    await cs(stranger.accessToken, "POST", `/join/${enc(room_id)}`, {});
    await agentSays(a, room_id, "hi stranger");
    // A room created after it is listed, so the service has handled the outsider room's events by then.
    const { room_id: later } = await asAgent<{ room_id: string }>(a, "POST", "/createRoom", { name: `later ${tag}`, invite: [userOf(b)] });
    await asAgent(b, "POST", `/join/${enc(later)}`, {});
    await listedWithin(later, "the later room");
    await run.service.hiveRooms.idle();
    expect(run.service.hiveRooms.verdict(room_id)).toMatchObject({ listed: false, why: expect.stringContaining(stranger.userId) });
    expect(await isChild(room_id)).toBe(false);
  });

  it("a tombstoned room leaves the Space and its replacement takes its place", async () => {
    const { room_id: replacement } = await asAgent<{ room_id: string }>(a, "POST", "/createRoom", {
      name: `plans v2 ${tag}`,
      invite: [userOf(b)],
    });
    rooms.replacement = replacement;
    await asAgent(b, "POST", `/join/${enc(replacement)}`, {});
    await asAgent(a, "PUT", `/rooms/${enc(rooms.agents)}/state/m.room.tombstone/`, {
      body: "continued elsewhere",
      replacement_room: replacement,
    });
    await goneWithin(rooms.agents, "the tombstoned room");
    await listedWithin(replacement, "the replacement");
  });

  it("!hive rooms lists the Space's rooms with name, members, last activity and why", async () => {
    const text = String((await reply(await say(operator, controlRoom, "!hive rooms"))).content.body);
    expect(text).toContain(`plans v2 ${tag}`);
    expect(text).toContain(rooms.dm);
    expect(text).toContain("operator–agent direct chat");
    expect(text).toMatch(/hive members only \(2 agents\)/);
    expect(text).not.toContain(rooms.outsider);
    expect(text).not.toContain(rooms.agents);
    // The HTML: the plain body wraps long lines to 80 columns.
    const all = String((await reply(await say(operator, controlRoom, "!hive rooms --all"))).content.formatted_body);
    expect(all).toContain(rooms.outsider);
    expect(all).toContain(`replaced by ${rooms.replacement}`);
  });

  it("a reconcile after all of that writes nothing", async () => {
    await run.service.hiveRooms.idle();
    await run.service.roomsLoop.trigger("test: settle");
    const report = await run.service.roomsLoop.trigger("test: no-op");
    expect(report).toMatchObject({ changes: [], problems: [], writes: 0 });
  });

  it("operators add a room with an outsider and remove a listed one from chat", async () => {
    const ask = await reply(await say(operator, controlRoom, `!hive rooms remove ${rooms.dm}`));
    expect(String(ask.content.body)).toContain(`!hive rooms remove ${rooms.dm} --yes`);
    expect(await isChild(rooms.dm)).toBe(true);
    await reply(await say(operator, controlRoom, `!hive rooms remove ${rooms.dm} --yes`));
    await goneWithin(rooms.dm, "the removed direct chat");
    await say(operator, rooms.dm, "still talking");
    await run.service.hiveRooms.idle();
    expect(await isChild(rooms.dm)).toBe(false);

    const added = await reply(await say(operator, controlRoom, `!hive rooms add ${rooms.outsider}`));
    expect(String(added.content.body)).toContain("lists");
    await listedWithin(rooms.outsider, "the added room");
    const unknown = await reply(await say(operator, controlRoom, `!hive rooms add !nope${tag}:${env.homeserver.serverName}`));
    expect(String(unknown.content.body)).toMatch(/No agent of the hive is known to be in/);
  });
});
