/**
 * The pure half of the rooms reconciler: desired state from the config, and the diff between it
 * and a room's actual state. A room that matches must give an empty plan (that is what makes a
 * second reconcile write nothing); each kind of drift must give exactly the change that repairs it.
 */
import { configSchema, type ConfigInput } from "../../src/config/schema";
import { actualRoom, unusableReason } from "../../src/rooms/actual";
import { createRoomBody, desiredChat, desiredSpace, inviteReason } from "../../src/rooms/desired";
import { diffRoom, overlay, satisfies } from "../../src/rooms/diff";
import { stateKeyOf, type ActualRoom, type DesiredMembers, type DesiredRoom } from "../../src/rooms/types";

const DOMAIN = "hive.example";
const BOT = `@hive:${DOMAIN}`;
const OP = `@alice:${DOMAIN}`;
const OP2 = `@bob:${DOMAIN}`;
const AGENT = `@agent-one:${DOMAIN}`;
const AGENT2 = `@agent-two:${DOMAIN}`;
const SPACE = "!space:hive.example";
const CHAT = "!chat:hive.example";

function config(over: Partial<ConfigInput> = {}): ReturnType<typeof configSchema.parse> {
  return configSchema.parse({ homeserver: { url: "http://127.0.0.1:8008", domain: DOMAIN }, operators: [OP], ...over });
}

const noMembers: DesiredMembers = { agents: [], leaving: [] };

type Ev = { type: string; state_key: string; content: Record<string, unknown>; sender: string };

function member(userId: string, membership: string, sender = userId): Ev {
  return { type: "m.room.member", state_key: userId, content: { membership }, sender };
}

/**
 * The state a homeserver would hold once a room created from `createRoomBody(desired)` is as
 * desired: the default power levels Synapse adds around our `users` map (without the bot from
 * version 12 on, where the creator's power is implicit), plus the given memberships.
 */
function serverState(desired: DesiredRoom, roomId: string, members: Ev[], aliasTarget?: string | null, version = "10"): ActualRoom {
  const body = createRoomBody(desired);
  const users = { ...(desired.state.find((s) => s.type === "m.room.power_levels")!.content.users as Record<string, number>) };
  if (version === "12") delete users[BOT];
  const events: Ev[] = [
    {
      type: "m.room.create",
      state_key: "",
      content: { room_version: version, ...((body.creation_content as object | undefined) ?? {}) },
      sender: BOT,
    },
    member(BOT, "join"),
    {
      type: "m.room.power_levels",
      state_key: "",
      content: {
        users: { "@someone-else:hive.example": 50, ...users },
        users_default: 0,
        events: { "m.room.name": 50 },
        events_default: 0,
        state_default: 50,
        ban: 50,
        kick: 50,
        redact: 50,
        invite: 0,
      },
      sender: BOT,
    },
    ...(body.initial_state as { type: string; state_key: string; content: Record<string, unknown> }[]).map((e) => ({ ...e, sender: BOT })),
    ...desired.state.filter((s) => s.requiresAlias).map((s) => ({ type: s.type, state_key: s.stateKey, content: s.content, sender: BOT })),
    ...desired.state
      .filter((s) => s.type === "m.space.child")
      .map((s) => ({ type: s.type, state_key: s.stateKey, content: { ...s.content, suggested: true }, sender: BOT })),
    ...members,
  ];
  return actualRoom(roomId, events, aliasTarget);
}

function space(members = noMembers, cfg = config()): DesiredRoom {
  return desiredSpace(cfg, { botUserId: BOT, members, spaceId: SPACE, chatId: CHAT });
}

function chat(members = noMembers, cfg = config()): DesiredRoom {
  return desiredChat(cfg, { botUserId: BOT, members, spaceId: SPACE, chatId: CHAT });
}

function withState(room: ActualRoom, type: string, stateKey: string, content: Record<string, unknown>, sender = OP): ActualRoom {
  const events = [...room.state.entries()].map(([key, v]) => {
    const [t, k] = key.split("\u0000");
    return { type: t, state_key: k, content: v.content, sender: v.sender };
  });
  return actualRoom(
    room.roomId,
    [...events.filter((e) => !(e.type === type && e.state_key === stateKey)), { type, state_key: stateKey, content, sender }],
    room.aliasTarget,
  );
}

describe("satisfies / overlay", () => {
  it("objects match key by key, extra actual keys are fine; arrays must match element by element", () => {
    expect(satisfies({ a: 1, b: { c: 2, d: 3 } }, { b: { c: 2 } })).toBe(true);
    expect(satisfies({ b: { c: 3 } }, { b: { c: 2 } })).toBe(false);
    expect(satisfies({ via: ["x", "y"] }, { via: ["x"] })).toBe(false);
    expect(satisfies({ allow: [{ type: "t", room_id: "r", extra: 1 }] }, { allow: [{ type: "t", room_id: "r" }] })).toBe(true);
    expect(satisfies({}, { via: ["x"] })).toBe(false);
    expect(satisfies(undefined, { a: 1 })).toBe(false);
  });

  it("overlay replaces owned fields and keeps the rest", () => {
    expect(overlay({ users: { a: 1, b: 2 }, ban: 50 }, { users: { a: 100 } })).toEqual({ users: { a: 100, b: 2 }, ban: 50 });
    expect(overlay({ via: ["x", "y"], order: "1" }, { via: ["x"] })).toEqual({ via: ["x"], order: "1" });
  });
});

describe("desired rooms and their creation", () => {
  it("the Space: m.space, invite only, guest access forbidden, shared history, bot and operators at the level", () => {
    const desired = desiredSpace(config({ rooms: { operatorPowerLevel: 90 } }), { botUserId: BOT, members: noMembers });
    expect(desired.state.find((s) => s.type === "m.room.power_levels")?.content).toEqual({ users: { [BOT]: 100, [OP]: 90 } });
    const body = createRoomBody(desired);
    expect(body).toMatchObject({
      preset: "private_chat",
      visibility: "private",
      creation_content: { type: "m.space" },
    });
    // The server picks the version, and a version-12 room refuses its creator in `users`: the
    // levels are left to the first reconcile.
    expect(body.room_version).toBeUndefined();
    expect(body.power_level_content_override).toBeUndefined();
    expect(body.initial_state).toEqual(
      expect.arrayContaining([
        { type: "m.room.join_rules", state_key: "", content: { join_rule: "invite" } },
        { type: "m.room.guest_access", state_key: "", content: { guest_access: "forbidden" } },
        { type: "m.room.history_visibility", state_key: "", content: { history_visibility: "shared" } },
        { type: "m.room.name", state_key: "", content: { name: "hive" } },
      ]),
    );
  });

  it("hive-chat: version 10, restricted to the Space, canonical parent; the alias is never part of creation", () => {
    const desired = chat();
    const body = createRoomBody(desired);
    expect(body).toMatchObject({
      room_version: "10",
      preset: "private_chat",
      power_level_content_override: { users: { [BOT]: 100, [OP]: 100 } },
    });
    expect(body.room_alias_name).toBeUndefined();
    const initial = body.initial_state as { type: string; state_key: string; content: unknown }[];
    expect(initial).toContainEqual({
      type: "m.room.join_rules",
      state_key: "",
      content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: SPACE }] },
    });
    expect(initial).toContainEqual({ type: "m.space.parent", state_key: SPACE, content: { via: [DOMAIN], canonical: true } });
    expect(initial.some((e) => e.type === "m.room.canonical_alias" || e.type === "m.room.encryption")).toBe(false);
    expect(desired.alias).toBe(`#hive-chat:${DOMAIN}`);
  });

  it("the Space has an alias too (#hive:<domain>), set like hive-chat's: after creation, then its canonical alias", () => {
    const desired = desiredSpace(config(), { botUserId: BOT, members: noMembers });
    expect(desired.alias).toBe(`#hive:${DOMAIN}`);
    const initial = createRoomBody(desired).initial_state as { type: string }[];
    expect(initial.some((e) => e.type === "m.room.canonical_alias")).toBe(false);
    const fresh = serverState(desired, SPACE, [], null, "12");
    fresh.state.delete(stateKeyOf("m.room.canonical_alias", ""));
    const plan = diffRoom(desired, fresh, new Set());
    const order = plan.changes.filter((c) => c.op === "alias" || (c.op === "state" && c.type === "m.room.canonical_alias"));
    expect(order.map((c) => c.message)).toEqual([`Space: alias #hive:${DOMAIN} created`, `Space: canonical alias set to #hive:${DOMAIN}`]);
    expect(desiredSpace(config({ rooms: { space: { alias: "" } } }), { botUserId: BOT, members: noMembers }).alias).toBeUndefined();
  });

  it("invites name the aliases; one alias for both rooms is a config error", () => {
    expect(inviteReason(config())).toBe(`The hive's rooms: #hive:${DOMAIN} (Space), #hive-chat:${DOMAIN} (hive-chat)`);
    expect(inviteReason(config({ rooms: { space: { alias: "" } } }))).toBe(`The hive's rooms: #hive-chat:${DOMAIN} (hive-chat)`);
    expect(inviteReason(config({ rooms: { space: { alias: "" }, chat: { alias: "" } } }))).toBeUndefined();
    expect(() => config({ rooms: { space: { alias: "same" }, chat: { alias: "same" } } })).toThrow(/must differ from rooms.chat.alias/);
  });

  it("an empty alias means no alias and no canonical alias; encrypted adds m.room.encryption", () => {
    const desired = chat(noMembers, config({ rooms: { chat: { alias: "", encrypted: true } } }));
    expect(desired.alias).toBeUndefined();
    expect(desired.state.some((s) => s.type === "m.room.canonical_alias")).toBe(false);
    expect(createRoomBody(desired).initial_state).toContainEqual({
      type: "m.room.encryption",
      state_key: "",
      content: { algorithm: "m.megolm.v1.aes-sha2" },
    });
  });
});

describe("diffRoom", () => {
  const members = { agents: [AGENT], leaving: [] };
  const joined = [member(OP, "join"), member(AGENT, "join")];

  it("no changes when the rooms are as desired", () => {
    for (const plan of [
      diffRoom(space(members), serverState(space(members), SPACE, joined), new Set()),
      diffRoom(chat(members), serverState(chat(members), CHAT, joined, CHAT), new Set()),
    ]) {
      expect(plan).toEqual({ changes: [], problems: [], departures: [] });
    }
  });

  it("no changes for pending invites either", () => {
    const room = serverState(chat(members), CHAT, [member(OP, "invite", BOT), member(AGENT, "join")], CHAT);
    expect(diffRoom(chat(members), room, new Set()).changes).toEqual([]);
  });

  it("a join rule changed to invite is restored to restricted with the Space as the allowed room", () => {
    const room = withState(serverState(chat(members), CHAT, joined, CHAT), "m.room.join_rules", "", { join_rule: "invite" });
    const plan = diffRoom(chat(members), room, new Set());
    expect(plan.changes).toEqual([
      expect.objectContaining({
        op: "state",
        type: "m.room.join_rules",
        kind: "state.join_rules",
        drift: true,
        content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: SPACE }] },
        message: "hive-chat: join rule restored to restricted",
      }),
    ]);
  });

  it("a space child emptied (removed) is restored", () => {
    const room = withState(serverState(space(members), SPACE, joined), "m.space.child", CHAT, {}, BOT);
    const plan = diffRoom(space(members), room, new Set());
    expect(plan.changes).toEqual([
      expect.objectContaining({
        type: "m.space.child",
        stateKey: CHAT,
        content: { via: [DOMAIN] },
        message: "Space: child hive-chat restored",
      }),
    ]);
  });

  it("power levels: only our users' entries are written, every other entry is kept", () => {
    const base = serverState(space(members), SPACE, joined);
    const pl = base.state.get("m.room.power_levels\u0000")!.content;
    const room = withState(base, "m.room.power_levels", "", { ...pl, users: { ...(pl.users as object), [OP]: 10 } });
    const [change] = diffRoom(space(members), room, new Set()).changes;
    expect(change).toMatchObject({
      op: "state",
      kind: "state.power_levels",
      message: `Space: power levels restored to ${OP} at 100`,
      drift: true,
    });
    expect(change.op === "state" && change.content).toEqual({ ...pl, users: { "@someone-else:hive.example": 50, [OP]: 100, [BOT]: 100 } });
  });

  it("alias: created when missing, then the canonical alias; moved when it points elsewhere", () => {
    const room = serverState(chat(members), CHAT, joined, null);
    const withoutCanonical = actualRoom(
      CHAT,
      [...room.state.entries()]
        .filter(([k]) => !k.startsWith("m.room.canonical_alias"))
        .map(([k, v]) => ({ type: k.split("\u0000")[0], state_key: k.split("\u0000")[1], content: v.content, sender: v.sender })),
      null,
    );
    const plan = diffRoom(chat(members), withoutCanonical, new Set());
    expect(plan.changes.map((c) => [c.op, c.message])).toEqual([
      ["alias", `hive-chat: alias #hive-chat:${DOMAIN} created`],
      ["state", `hive-chat: canonical alias set to #hive-chat:${DOMAIN}`],
    ]);
    const moved = diffRoom(chat(members), serverState(chat(members), CHAT, joined, "!old:hive.example"), new Set());
    expect(moved.changes).toEqual([expect.objectContaining({ op: "alias", from: "!old:hive.example" })]);
  });

  it("alias not looked up (undefined) or not configured: no alias change", () => {
    expect(diffRoom(chat(members), serverState(chat(members), CHAT, joined, undefined), new Set()).changes).toEqual([]);
    const cfg = config({ rooms: { chat: { alias: "" } } });
    expect(diffRoom(chat(members, cfg), serverState(chat(members, cfg), CHAT, joined), new Set()).changes).toEqual([]);
  });

  it("operators: invited when absent; one who left, was kicked or banned is remembered, not invited", () => {
    const cfg = config({ operators: [OP, OP2, "@carol:hive.example", "@dave:hive.example"] });
    const room = serverState(space(noMembers, cfg), SPACE, [
      member(OP2, "leave"),
      member("@carol:hive.example", "leave", BOT),
      member("@dave:hive.example", "ban", BOT),
    ]);
    const plan = diffRoom(space(noMembers, cfg), room, new Set());
    expect(plan.changes).toEqual([expect.objectContaining({ op: "invite", userId: OP, message: `Space: operator ${OP} invited` })]);
    expect(plan.departures).toEqual([
      { userId: OP2, room: "space", how: "left" },
      { userId: "@carol:hive.example", room: "space", how: "kicked" },
      { userId: "@dave:hive.example", room: "space", how: "banned" },
    ]);
    // Once remembered: no departure again, and no invite even into a room where they have no membership.
    const again = diffRoom(space(noMembers, cfg), room, new Set([OP, OP2, "@carol:hive.example", "@dave:hive.example"]));
    expect(again).toEqual({ changes: [], problems: [], departures: [] });
  });

  it("agents: invited and joined, or only joined when invited; banned ones are a problem; leaving ones leave", () => {
    const want = { agents: [AGENT, AGENT2, "@agent-three:hive.example"], leaving: ["@gone:hive.example", "@gone2:hive.example", AGENT] };
    const room = serverState(chat(want), CHAT, [
      member(OP, "join"),
      member(AGENT2, "invite", BOT),
      member("@agent-three:hive.example", "ban", OP),
      member("@gone:hive.example", "join"),
      member("@gone2:hive.example", "leave"),
    ]);
    const plan = diffRoom(chat(want), room, new Set());
    expect(plan.changes.map((c) => (c.op === "admit" ? [c.op, c.userId, c.invite] : [c.op, "userId" in c ? c.userId : ""]))).toEqual([
      ["admit", AGENT, true],
      ["admit", AGENT2, false],
      ["leave", "@gone:hive.example"],
    ]);
    expect(plan.problems).toEqual(["hive-chat: agent @agent-three:hive.example is banned; unban it to let it join again"]);
  });

  it("room version 12: the bot, as creator, is left out of the users map (the server refuses it there)", () => {
    const room = serverState(space(members), SPACE, joined, undefined, "12");
    expect(room.state.get("m.room.power_levels\u0000")!.content.users).not.toHaveProperty(BOT);
    expect(diffRoom(space(members), room, new Set())).toEqual({ changes: [], problems: [], departures: [] });
    const base = room.state.get("m.room.power_levels\u0000")!.content;
    const demoted = withState(room, "m.room.power_levels", "", { ...base, users: {} }, BOT);
    const [change] = diffRoom(space(members), demoted, new Set()).changes;
    expect(change).toMatchObject({ message: `Space: power levels set to ${OP} at 100`, drift: false });
    expect(change.op === "state" && change.content.users).toEqual({ [OP]: 100 });
  });

  it("what cannot be changed in place is a problem, not a change", () => {
    const notSpace = withState(serverState(space(), SPACE, [member(OP, "join")]), "m.room.create", "", { room_version: "10" }, BOT);
    expect(diffRoom(space(), notSpace, new Set()).problems).toEqual([
      expect.stringMatching(/^Space: the room's creation type is null, not m\.space/),
    ]);
    const v9 = withState(serverState(chat(), CHAT, [member(OP, "join")], CHAT), "m.room.create", "", { room_version: "9" }, BOT);
    expect(diffRoom(chat(), v9, new Set()).problems).toEqual([expect.stringMatching(/^hive-chat: room version is 9, not 10/)]);
    const encrypted = withState(
      serverState(chat(), CHAT, [member(OP, "join")], CHAT),
      "m.room.encryption",
      "",
      { algorithm: "m.megolm.v1.aes-sha2" },
      BOT,
    );
    const plan = diffRoom(chat(), encrypted, new Set());
    expect(plan.problems).toEqual([expect.stringMatching(/encrypted and encryption cannot be turned off/)]);
    expect(plan.changes).toEqual([]);
  });

  it("encryption wanted but missing is turned on", () => {
    const cfg = config({ rooms: { chat: { encrypted: true } } });
    const created = serverState(chat(noMembers, cfg), CHAT, [member(OP, "join")], CHAT);
    expect(diffRoom(chat(noMembers, cfg), created, new Set()).changes).toEqual([]);
    const plain = serverState(chat(), CHAT, [member(OP, "join")], CHAT);
    expect(diffRoom(chat(noMembers, cfg), plain, new Set()).changes).toEqual([
      expect.objectContaining({ type: "m.room.encryption", content: { algorithm: "m.megolm.v1.aes-sha2" }, kind: "state.encryption" }),
    ]);
  });
});

describe("unusableReason", () => {
  it("a readable state is not enough: the bot must be joined", () => {
    expect(unusableReason(actualRoom(SPACE, [member(BOT, "join")]), BOT)).toBeUndefined();
    expect(unusableReason(actualRoom(SPACE, [member(BOT, "leave")]), BOT)).toBe("the bot is not joined (membership leave)");
    expect(unusableReason(actualRoom(SPACE, []), BOT)).toBe("the bot is not joined (membership none)");
  });
});
