/**
 * Desired room vs actual room → the list of changes, the problems that no change can fix, and the
 * operators seen leaving. Pure, so "no changes when equal" is a unit test; a room that already
 * matches yields an empty plan, which is what makes a second reconcile write nothing.
 */
import { memberOf, privilegedCreators, roomVersionOf, stateOf } from "./actual";
import type { ActualRoom, Change, Content, Departure, DesiredRoom, DesiredStateEvent, RoomPlan } from "./types";
import { ROOM_LABEL } from "./types";

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Whether `actual` holds everything `desired` asks for: objects key by key (extra keys are someone
 * else's and fine), arrays element by element with the same length, scalars by equality.
 */
export function satisfies(actual: unknown, desired: unknown): boolean {
  if (isRecord(desired)) return isRecord(actual) && Object.entries(desired).every(([k, v]) => satisfies(actual[k], v));
  if (Array.isArray(desired)) {
    return Array.isArray(actual) && actual.length === desired.length && desired.every((v, i) => satisfies(actual[i], v));
  }
  return actual === desired;
}

/** `desired` laid over `actual`: owned fields replaced, everything else kept (e.g. other users' power levels). */
export function overlay(actual: unknown, desired: unknown): unknown {
  if (isRecord(desired) && isRecord(actual)) {
    const out: Record<string, unknown> = { ...actual };
    for (const [k, v] of Object.entries(desired)) out[k] = overlay(actual[k], v);
    return out;
  }
  return desired;
}

function describeState(label: string, wanted: DesiredStateEvent, actual: Content | undefined): { message: string; drift: boolean } {
  let drift = actual !== undefined;
  let summary = wanted.summary;
  if (wanted.type === "m.room.power_levels") {
    // Name only the entries that differ, so a repair says whose level changed; an entry that is
    // merely missing (a new operator, a new room's default levels) is not drift.
    const want = (wanted.content.users ?? {}) as Record<string, number>;
    const have = isRecord(actual?.users) ? actual.users : {};
    const differing = Object.entries(want).filter(([u, l]) => have[u] !== l);
    drift = differing.some(([u]) => have[u] !== undefined);
    summary = differing.map(([u, l]) => `${u} at ${l}`).join(", ");
  }
  return { message: `${label}: ${wanted.what} ${drift ? "restored" : "set"}${summary ? ` to ${summary}` : ""}`, drift };
}

/** Since room version 12 a creator's power is implicit, and listing them in `users` is refused. */
function withoutCreators(wanted: DesiredStateEvent, creators: string[]): DesiredStateEvent {
  if (wanted.type !== "m.room.power_levels" || creators.length === 0 || !isRecord(wanted.content.users)) return wanted;
  const users = Object.fromEntries(Object.entries(wanted.content.users).filter(([u]) => !creators.includes(u)));
  return { ...wanted, content: { ...wanted.content, users } };
}

export function diffRoom(desired: DesiredRoom, actual: ActualRoom, operatorsWhoLeft: ReadonlySet<string>): RoomPlan {
  const label = ROOM_LABEL[desired.key];
  const room = desired.key;
  const problems: string[] = [];
  const departures: Departure[] = [];
  const early: Change[] = [];
  const late: Change[] = [];
  const members: Change[] = [];

  const create = stateOf(actual, "m.room.create")?.content ?? {};
  const creators = privilegedCreators(actual);
  if (desired.create.type !== undefined && create.type !== desired.create.type) {
    problems.push(
      `${label}: the room's creation type is ${JSON.stringify(create.type ?? null)}, not ${desired.create.type}; ` +
        "it cannot change after creation, so new rooms are needed (`!hive rooms recreate`)",
    );
  }
  const version = roomVersionOf(actual);
  if (desired.create.roomVersion !== undefined && version !== desired.create.roomVersion) {
    problems.push(
      `${label}: room version is ${version}, not ${desired.create.roomVersion}; ` +
        "a room cannot change version in place, so new rooms are needed (`!hive rooms recreate`)",
    );
  }
  if (!desired.encrypted && stateOf(actual, "m.room.encryption")) {
    problems.push(
      `${label}: the room is encrypted and encryption cannot be turned off; hive-matrix has no crypto and cannot read it ` +
        "(set rooms.chat.encrypted: true to accept this, or create new rooms with `!hive rooms recreate`)",
    );
  }

  for (const stated of desired.state) {
    const wanted = withoutCreators(stated, creators);
    const entry = stateOf(actual, wanted.type, wanted.stateKey);
    if (entry && satisfies(entry.content, wanted.content)) continue;
    const { message, drift } = describeState(label, wanted, entry?.content);
    const change: Change = {
      op: "state",
      room,
      type: wanted.type,
      stateKey: wanted.stateKey,
      content: overlay(entry?.content ?? {}, wanted.content) as Content,
      kind: wanted.kind,
      requiresAlias: wanted.requiresAlias === true,
      drift,
      message,
    };
    (change.requiresAlias ? late : early).push(change);
  }

  for (const gone of desired.absent ?? []) {
    const entry = stateOf(actual, gone.type, gone.stateKey);
    if (!entry || Object.keys(entry.content).length === 0) continue;
    early.push({
      op: "state",
      room,
      type: gone.type,
      stateKey: gone.stateKey,
      content: {},
      kind: gone.kind,
      requiresAlias: false,
      drift: false,
      message: `${label}: ${gone.what} removed`,
    });
  }

  if (desired.alias !== undefined && actual.aliasTarget !== undefined && actual.aliasTarget !== actual.roomId) {
    const from = actual.aliasTarget;
    early.push({
      op: "alias",
      room,
      alias: desired.alias,
      from,
      message: from ? `${label}: alias ${desired.alias} moved here from ${from}` : `${label}: alias ${desired.alias} created`,
    });
  }

  for (const userId of desired.members.operators) {
    const m = memberOf(actual, userId);
    if (m?.membership === "join" || m?.membership === "invite") continue;
    if (m?.membership === "leave" || m?.membership === "ban") {
      // Leaving, rejecting the invite, a kick or a ban: the operator's (or a moderator's) choice, not drift.
      if (!operatorsWhoLeft.has(userId)) {
        departures.push({ userId, room, how: m.membership === "ban" ? "banned" : m.sender === userId ? "left" : "kicked" });
      }
      continue;
    }
    if (operatorsWhoLeft.has(userId)) continue;
    members.push({ op: "invite", room, userId, message: `${label}: operator ${userId} invited` });
  }

  for (const userId of desired.members.agents) {
    const m = memberOf(actual, userId);
    if (m?.membership === "join") continue;
    if (m?.membership === "ban") {
      problems.push(`${label}: agent ${userId} is banned; unban it to let it join again`);
      continue;
    }
    members.push({ op: "admit", room, userId, invite: m?.membership !== "invite", message: `${label}: agent ${userId} joined` });
  }

  for (const userId of desired.members.leaving) {
    const m = memberOf(actual, userId);
    if (m?.membership === "join" || m?.membership === "invite" || m?.membership === "knock") {
      members.push({ op: "leave", room, userId, message: `${label}: agent ${userId} left` });
    }
  }

  return { changes: [...early, ...late, ...members], problems, departures };
}
