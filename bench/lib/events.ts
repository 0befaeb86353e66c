/**
 * Realistic appservice transactions: what Synapse pushes for a busy hive-chat. Mostly
 * `m.room.message` text events (plain, formatted, replies, mentions) and some `m.room.member`
 * joins, with the fields Synapse sends (event_id, room_id, sender, origin_server_ts, unsigned.age).
 * Bodies are serialised once up front so the load generator spends its time sending, not building.
 */
import { randomBytes } from "node:crypto";

const WORDS = (
  "the agent finished its task and wrote the result to the shared state dir while the operator " +
  "reviewed logs build deploy failed retrying because homeserver answered slowly queue depth is " +
  "fine memory usage went up after onboarding new agents joined hive chat please check status of " +
  "nightly job ok thanks looks good to me merged into main branch rollback not needed alert cleared"
).split(" ");

/** A small deterministic PRNG, so two runs send the same kind of traffic. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function eventId(): string {
  return `$${randomBytes(32).toString("base64url").slice(0, 43)}`;
}

function sentence(rand: () => number): string {
  const n = 4 + Math.floor(rand() * 36);
  const words: string[] = [];
  for (let i = 0; i < n; i++) words.push(WORDS[Math.floor(rand() * WORDS.length)]);
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1) + (rand() < 0.2 ? "?" : ".");
}

export interface TrafficShape {
  serverName: string;
  eventsPerTxn: number;
  /** Share of m.room.member events (the rest are messages). */
  memberShare: number;
}

function messageEvent(
  rand: () => number,
  room: string,
  sender: string,
  recent: string[],
  shape: TrafficShape,
  ts: number,
): Record<string, unknown> {
  const body = sentence(rand);
  const content: Record<string, unknown> = { msgtype: "m.text", body, "m.mentions": {} };
  const roll = rand();
  if (roll < 0.25) {
    content.format = "org.matrix.custom.html";
    content.formatted_body = `<p>${body.replace(/ (\w+) /, " <strong>$1</strong> ")}</p>`;
  } else if (roll < 0.4 && recent.length > 0) {
    content["m.relates_to"] = { "m.in_reply_to": { event_id: recent[Math.floor(rand() * recent.length)] } };
  } else if (roll < 0.5) {
    const who = `@agent-a${Math.floor(rand() * 100)}:${shape.serverName}`;
    content.body = `${who.slice(1).split(":")[0]}: ${body}`;
    content["m.mentions"] = { user_ids: [who] };
  }
  return {
    type: "m.room.message",
    room_id: room,
    sender,
    content,
    event_id: eventId(),
    origin_server_ts: ts,
    unsigned: { age: Math.floor(rand() * 300) },
  };
}

function memberEvent(rand: () => number, room: string, sender: string, ts: number): Record<string, unknown> {
  const name = sender.slice(1).split(":")[0];
  return {
    type: "m.room.member",
    room_id: room,
    sender,
    state_key: sender,
    content: { membership: "join", displayname: name },
    event_id: eventId(),
    origin_server_ts: ts,
    unsigned: { age: Math.floor(rand() * 300), prev_content: { membership: "invite", displayname: name }, replaces_state: eventId() },
  };
}

/** `count` serialised transaction bodies (`{"events": [...]}`) of `eventsPerTxn` events each. */
export function transactionBodies(count: number, shape: TrafficShape, seed = 7): Buffer[] {
  const rand = prng(seed);
  const rooms = Array.from({ length: 4 }, () => `!${randomBytes(14).toString("base64url").slice(0, 18)}:${shape.serverName}`);
  const senders = Array.from({ length: 40 }, (_, i) => `@agent-a${i}:${shape.serverName}`);
  const recent: string[] = [];
  const bodies: Buffer[] = [];
  let ts = Date.now() - 3_600_000;
  for (let t = 0; t < count; t++) {
    const events: Record<string, unknown>[] = [];
    for (let e = 0; e < shape.eventsPerTxn; e++) {
      const room = rooms[Math.floor(rand() * rooms.length)];
      const sender = senders[Math.floor(rand() * senders.length)];
      ts += Math.floor(rand() * 500);
      const event = rand() < shape.memberShare ? memberEvent(rand, room, sender, ts) : messageEvent(rand, room, sender, recent, shape, ts);
      recent.push(String(event.event_id));
      if (recent.length > 20) recent.shift();
      events.push(event);
    }
    bodies.push(Buffer.from(JSON.stringify({ events })));
  }
  return bodies;
}
