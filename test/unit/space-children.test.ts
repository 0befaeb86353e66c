/**
 * The Space as the hive's map: which rooms it lists (the policy, pure), the Space's desired
 * children and the diff (a Space that lists them already needs no write), and the tracker that
 * learns rooms from events (a stand-in transport answers the state reads).
 */
import { configSchema, type ConfigInput } from "../../src/config/schema";
import { createLogger } from "../../src/logging";
import type { HomeserverTransport } from "../../src/matrix/transport";
import { actualRoom } from "../../src/rooms/actual";
import { desiredSpace } from "../../src/rooms/desired";
import { diffRoom } from "../../src/rooms/diff";
import { classify, HIVE_ROOMS_FILE, HiveRooms, type HiveRoom, type ListingPolicy, type Who } from "../../src/rooms/space-children";
import { StateStore } from "../../src/store/state-store";
import type { MatrixEvent } from "../../src/store/transactions";
import { tempDir } from "../support/tmp";
import { existsSync } from "node:fs";
import { join } from "node:path";

const DOMAIN = "hive.example";
const BOT = `@hive:${DOMAIN}`;
const OP = `@alice:${DOMAIN}`;
const A = `@agent-a:${DOMAIN}`;
const B = `@agent-b:${DOMAIN}`;
const EVE = `@eve:elsewhere.example`;
const SPACE = "!space:hive.example";
const CHAT = "!chat:hive.example";

const who: Who = { isAgent: (u) => u.startsWith("@agent-"), isOperator: (u) => u === OP, botUserId: BOT };
const policy: ListingPolicy = { auto: true, operatorDirectChats: true };

function room(joined: string[], extra: Partial<HiveRoom> = {}): HiveRoom {
  return { joined, invited: [], firstSeen: 0, ...extra };
}

function config(over: Partial<ConfigInput> = {}): ReturnType<typeof configSchema.parse> {
  return configSchema.parse({ homeserver: { url: "http://127.0.0.1:8008", domain: DOMAIN }, operators: [OP], ...over });
}

describe("which rooms the Space lists", () => {
  it("lists rooms of hive members with an agent, and operator–agent direct chats", () => {
    expect(classify(room([A, B]), who, policy)).toEqual({ listed: true, why: "hive members only (2 agents)" });
    expect(classify(room([A, B, OP]), who, policy)).toEqual({ listed: true, why: "hive members only (2 agents, 1 operator)" });
    expect(classify(room([A, OP]), who, policy)).toEqual({ listed: true, why: "operator–agent direct chat" });
  });

  it("does not list rooms with outsiders (joined or invited), without agents, tombstoned, Spaces", () => {
    expect(classify(room([A, EVE]), who, policy)).toMatchObject({ listed: false, why: expect.stringContaining(`outsiders: ${EVE}`) });
    expect(classify(room([A], { invited: [EVE] }), who, policy).listed).toBe(false);
    expect(classify(room([OP]), who, policy)).toEqual({ listed: false, why: "no agent of the hive is in it" });
    expect(classify(room([A, B], { replacedBy: "!new:x" }), who, policy)).toEqual({ listed: false, why: "replaced by !new:x" });
    expect(classify(room([A, B], { space: true }), who, policy).listed).toBe(false);
  });

  it("follows the policy: direct chats excludable, automatic listing off", () => {
    expect(classify(room([A, OP]), who, { ...policy, operatorDirectChats: false }).listed).toBe(false);
    expect(classify(room([A, B]), who, { ...policy, auto: false }).listed).toBe(false);
  });

  it("an operator's decision wins over the policy, but not over a tombstone or no agent left", () => {
    const pinned = { pinned: { by: OP, at: 1 } };
    expect(classify(room([A, EVE], pinned), who, policy)).toEqual({ listed: true, why: `added by ${OP}` });
    expect(classify(room([A, B], { excluded: { by: OP, at: 1 } }), who, policy)).toEqual({ listed: false, why: `removed by ${OP}` });
    expect(classify(room([EVE], pinned), who, policy).listed).toBe(false);
    expect(classify(room([A, EVE], { ...pinned, replacedBy: "" }), who, policy).listed).toBe(false);
  });
});

describe("the Space's children in the declarative reconcile", () => {
  const children = { listed: ["!r1:hive.example", "!r2:hive.example"], unlisted: ["!gone:hive.example", "!never:hive.example"] };
  const desired = desiredSpace(config(), { botUserId: BOT, members: { agents: [], leaving: [] }, spaceId: SPACE, chatId: CHAT, children });
  const base = [
    { type: "m.room.create", state_key: "", content: { type: "m.space", room_version: "10" }, sender: BOT },
    { type: "m.room.member", state_key: BOT, content: { membership: "join" }, sender: BOT },
    { type: "m.room.member", state_key: OP, content: { membership: "invite" }, sender: BOT },
    ...desired.state.map((s) => ({ type: s.type, state_key: s.stateKey, content: s.content, sender: BOT })),
  ];

  it("a Space that lists exactly the listed rooms needs no write (unlisted ones absent or emptied)", () => {
    const actual = actualRoom(SPACE, [
      ...base,
      { type: "m.space.child", state_key: "!gone:hive.example", content: {}, sender: BOT },
      { type: "m.space.child", state_key: "!someone-elses:hive.example", content: { via: ["x"] }, sender: OP },
    ]);
    expect(diffRoom(desired, actual, new Set()).changes).toEqual([]);
  });

  it("adds a missing child with via, and empties the child of a room no longer listed", () => {
    const actual = actualRoom(SPACE, [
      ...base.filter((e) => e.state_key !== "!r2:hive.example"),
      { type: "m.space.child", state_key: "!gone:hive.example", content: { via: [DOMAIN] }, sender: BOT },
    ]);
    const changes = diffRoom(desired, actual, new Set()).changes;
    expect(changes).toEqual([
      expect.objectContaining({ op: "state", type: "m.space.child", stateKey: "!r2:hive.example", content: { via: [DOMAIN] } }),
      expect.objectContaining({
        op: "state",
        type: "m.space.child",
        stateKey: "!gone:hive.example",
        content: {},
        message: "Space: child !gone:hive.example removed",
      }),
    ]);
  });

  it("never lists or removes hive-chat through the hive's rooms", () => {
    const odd = desiredSpace(config(), {
      botUserId: BOT,
      members: { agents: [], leaving: [] },
      spaceId: SPACE,
      chatId: CHAT,
      children: { listed: [], unlisted: [CHAT] },
    });
    expect(odd.absent).toEqual([]);
    expect(odd.state.filter((s) => s.stateKey === CHAT)).toHaveLength(1);
  });
});

describe("learning the hive's rooms from events", () => {
  function setup(states: Record<string, Record<string, unknown>[]>, over: Partial<ConfigInput> = {}, dir = tempDir()) {
    const state = new StateStore(dir);
    state.init();
    const reads: { roomId: string; asUser?: string }[] = [];
    const transport = {
      async request<T>(_method: string, path: string, opts: { asUser?: string } = {}): Promise<T> {
        const roomId = decodeURIComponent(/rooms\/([^/]+)\/state/.exec(path)?.[1] ?? "");
        reads.push({ roomId, asUser: opts.asUser });
        const events = states[roomId];
        const member = events?.find((e) => e.type === "m.room.member" && e.state_key === opts.asUser);
        if (!events || !member) throw Object.assign(new Error("not in room"), { errcode: "M_FORBIDDEN" });
        return events as T;
      },
    } as unknown as HomeserverTransport;
    const changed: string[] = [];
    const rooms = new HiveRooms({
      config: config(over),
      state,
      transport,
      logger: createLogger({ level: "silent" }).logger,
      who,
      isOwnRoom: (roomId) => roomId === SPACE || roomId === CHAT,
      changed: (reason) => changed.push(reason),
      refreshDelayMs: 5,
    });
    rooms.load();
    return { rooms, reads, changed, dir };
  }
  const m = (userId: string, membership: string) => ({ type: "m.room.member", state_key: userId, content: { membership }, sender: userId });
  const ev = (e: Record<string, unknown>, roomId: string): MatrixEvent => ({
    ...(e as MatrixEvent),
    room_id: roomId,
    origin_server_ts: 1000,
  });

  it("reads a room's state once per burst, as one of its agents, and lists it", async () => {
    const R = "!r:hive.example";
    const states = {
      [R]: [
        { type: "m.room.create", state_key: "", content: {} },
        m(A, "join"),
        m(B, "join"),
        { type: "m.room.name", state_key: "", content: { name: "plans" } },
      ],
    };
    const { rooms, reads, changed } = setup(states);
    for (const e of states[R]) rooms.observe(ev({ ...e, sender: A }, R));
    rooms.observe(ev({ type: "m.room.message", sender: B, content: { body: "not kept" } }, R));
    await rooms.idle();
    expect(reads).toEqual([{ roomId: R, asUser: A }]);
    expect(rooms.children()).toEqual({ listed: [R], unlisted: [] });
    expect(rooms.list()[0]).toMatchObject({ roomId: R, name: "plans", joined: [A, B], lastActivity: 1000 });
    expect(changed).toHaveLength(1);
  });

  it("ignores rooms without agents and the hive's own rooms; reads nothing for them", async () => {
    const { rooms, reads } = setup({});
    rooms.observe(ev({ type: "m.room.message", sender: OP, content: {} }, "!other:hive.example"));
    rooms.observe(ev({ ...m(A, "join") }, SPACE));
    await rooms.idle();
    expect(reads).toEqual([]);
    expect(rooms.list()).toEqual([]);
  });

  it("an outsider joining unlists the room; the last agent leaving keeps it unlisted even when the read is refused", async () => {
    const R = "!r:hive.example";
    const states: Record<string, Record<string, unknown>[]> = { [R]: [m(A, "join"), m(B, "join")] };
    const { rooms, changed } = setup(states);
    rooms.observe(ev(m(A, "join"), R));
    await rooms.idle();
    expect(rooms.verdict(R)?.listed).toBe(true);
    states[R] = [m(A, "join"), m(B, "join"), m(EVE, "join")];
    rooms.observe(ev(m(EVE, "join"), R));
    await rooms.idle();
    expect(rooms.verdict(R)).toMatchObject({ listed: false });
    delete states[R];
    rooms.observe(ev(m(A, "leave"), R));
    rooms.observe(ev(m(B, "leave"), R));
    await rooms.idle();
    expect(rooms.get(R)?.joined).toEqual([EVE]);
    expect(rooms.verdict(R)?.why).toBe("no agent of the hive is in it");
    expect(changed.length).toBe(2);
  });

  it("a tombstone unlists the room; the replacement of an added room inherits the listing", async () => {
    const OLD = "!old:hive.example";
    const NEW = "!new:hive.example";
    const states: Record<string, Record<string, unknown>[]> = { [OLD]: [m(A, "join"), m(EVE, "join")] };
    const { rooms } = setup(states);
    rooms.observe(ev(m(A, "join"), OLD));
    await rooms.idle();
    expect(rooms.pin(OLD, OP)?.listed).toBe(true);
    states[OLD] = [...states[OLD], { type: "m.room.tombstone", state_key: "", content: { replacement_room: NEW } }];
    states[NEW] = [m(A, "join"), m(EVE, "join")];
    rooms.observe(ev({ type: "m.room.tombstone", state_key: "", sender: A, content: { replacement_room: NEW } }, OLD));
    await rooms.idle();
    expect(rooms.children()).toEqual({ listed: [NEW], unlisted: [OLD] });
    expect(rooms.verdict(NEW)?.why).toBe(`added by ${OP}`);
  });

  it("keeps the rooms and the operators' decisions across a restart", async () => {
    const R = "!r:hive.example";
    const first = setup({ [R]: [m(A, "join"), m(B, "join")] });
    first.rooms.observe(ev(m(A, "join"), R));
    await first.rooms.idle();
    first.rooms.exclude(R, OP);
    await first.rooms.stop();
    expect(existsSync(join(first.dir, HIVE_ROOMS_FILE))).toBe(true);
    const second = setup({}, {}, first.dir);
    expect(second.rooms.children()).toEqual({ listed: [], unlisted: [R] });
    expect(second.rooms.verdict(R)?.why).toBe(`removed by ${OP}`);
  });
});
