/**
 * Which events make the rooms loop reconcile: owned state changed by someone else, a change of
 * membership of a user the reconcile manages, redactions. Display-name changes, other users'
 * memberships, state nobody owns and the bot's own writes do not.
 */
import { configSchema } from "../../src/config/schema";
import { actualRoom } from "../../src/rooms/actual";
import { desiredChat } from "../../src/rooms/desired";
import { Relevance, type RelevantEvent } from "../../src/rooms/relevance";

const DOMAIN = "hive.example";
const BOT = `@hive:${DOMAIN}`;
const OP = `@alice:${DOMAIN}`;
const AGENT = `@agent-one:${DOMAIN}`;
const LEAVING = `@agent-old:${DOMAIN}`;
const STRANGER = `@mallory:${DOMAIN}`;
const SPACE = "!space:hive.example";
const CHAT = "!chat:hive.example";

const config = configSchema.parse({ homeserver: { url: "http://127.0.0.1:8008", domain: DOMAIN }, operators: [OP] });
const desired = desiredChat(config, { botUserId: BOT, members: { agents: [AGENT], leaving: [LEAVING] }, spaceId: SPACE });

function learned(): Relevance {
  const r = new Relevance(BOT);
  const member = (userId: string, membership: string): unknown => ({
    type: "m.room.member",
    state_key: userId,
    content: { membership },
    sender: userId,
  });
  r.learn(desired, actualRoom(CHAT, [member(BOT, "join"), member(OP, "join"), member(AGENT, "join"), member(STRANGER, "join")]));
  return r;
}

const ev = (type: string, stateKey: string | undefined, content: Record<string, unknown>, sender = OP): RelevantEvent => ({
  type,
  room_id: CHAT,
  sender,
  content,
  ...(stateKey === undefined ? {} : { state_key: stateKey }),
});

describe("Relevance", () => {
  it("ignores display-name changes of every member, managed or not", () => {
    const r = learned();
    for (let i = 0; i < 100; i++) {
      for (const userId of [OP, AGENT, BOT, STRANGER]) {
        expect(r.isRelevant(ev("m.room.member", userId, { membership: "join", displayname: `name ${i}` }, userId))).toBe(false);
      }
    }
  });

  it("takes a change of membership of a managed user once, and nobody else's", () => {
    const r = learned();
    expect(r.isRelevant(ev("m.room.member", AGENT, { membership: "leave" }, AGENT))).toBe(true);
    expect(r.isRelevant(ev("m.room.member", AGENT, { membership: "leave", displayname: "x" }, AGENT))).toBe(false);
    expect(r.isRelevant(ev("m.room.member", OP, { membership: "leave" }, OP))).toBe(true);
    // An agent that is leaving and shows up again.
    expect(r.isRelevant(ev("m.room.member", LEAVING, { membership: "join" }, LEAVING))).toBe(true);
    expect(r.isRelevant(ev("m.room.member", STRANGER, { membership: "leave" }, STRANGER))).toBe(false);
    expect(r.isRelevant(ev("m.room.member", "@new:hive.example", { membership: "join" }, "@new:hive.example"))).toBe(false);
  });

  it("takes owned state changed by someone else, not the bot's own writes nor state it does not own", () => {
    const r = learned();
    for (const [type, key] of [
      ["m.room.join_rules", ""],
      ["m.room.power_levels", ""],
      ["m.room.name", ""],
      ["m.room.canonical_alias", ""],
      ["m.space.parent", SPACE],
      ["m.room.encryption", ""],
    ]) {
      expect(r.isRelevant(ev(type, key, {}))).toBe(true);
      expect(r.isRelevant(ev(type, key, {}, BOT))).toBe(false);
    }
    expect(r.isRelevant(ev("m.space.parent", "!elsewhere:hive.example", {}))).toBe(false);
    expect(r.isRelevant(ev("com.example.custom", "", {}))).toBe(false);
    expect(r.isRelevant(ev("m.room.pinned_events", "", {}))).toBe(false);
    expect(r.isRelevant(ev("m.room.message", undefined, { body: "hi" }))).toBe(false);
  });

  it("takes every redaction (it may strip owned state)", () => {
    expect(learned().isRelevant(ev("m.room.redaction", undefined, {}, STRANGER))).toBe(true);
  });

  it("counts every state event as relevant in a room no run has read yet, and after forget()", () => {
    const r = learned();
    const elsewhere = { ...ev("m.room.member", STRANGER, { membership: "join", displayname: "x" }, STRANGER), room_id: SPACE };
    expect(r.isRelevant(elsewhere)).toBe(true);
    r.forget();
    expect(r.isRelevant(ev("com.example.custom", "", {}))).toBe(true);
  });

  it("a membership the run applied itself needs no further run", () => {
    const r = new Relevance(BOT);
    r.learn(desired, actualRoom(CHAT, [{ type: "m.room.member", state_key: BOT, content: { membership: "join" }, sender: BOT }]));
    r.applied(CHAT, { op: "invite", room: "chat", userId: OP, message: "" });
    r.applied(CHAT, { op: "admit", room: "chat", userId: AGENT, invite: true, message: "" });
    expect(r.isRelevant(ev("m.room.member", OP, { membership: "invite" }, BOT))).toBe(false);
    expect(r.isRelevant(ev("m.room.member", AGENT, { membership: "join" }, AGENT))).toBe(false);
  });
});
