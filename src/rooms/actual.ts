/**
 * The actual state of a room as read from `GET /rooms/{id}/state`: one request gives every state
 * event, memberships included, which is all the diff needs besides the alias lookup.
 */
import type { ActualRoom, Content, Membership, StateEntry } from "./types";
import { stateKeyOf } from "./types";

interface RawStateEvent {
  type?: unknown;
  state_key?: unknown;
  content?: unknown;
  sender?: unknown;
}

export function actualRoom(roomId: string, events: readonly unknown[], aliasTarget?: string | null): ActualRoom {
  const state = new Map<string, StateEntry>();
  for (const raw of events) {
    if (!raw || typeof raw !== "object") continue;
    const e = raw as RawStateEvent;
    if (typeof e.type !== "string" || typeof e.state_key !== "string") continue;
    const content = e.content && typeof e.content === "object" && !Array.isArray(e.content) ? (e.content as Content) : {};
    state.set(stateKeyOf(e.type, e.state_key), { content, sender: typeof e.sender === "string" ? e.sender : "" });
  }
  return { roomId, state, aliasTarget };
}

export function stateOf(room: ActualRoom, type: string, stateKey = ""): StateEntry | undefined {
  return room.state.get(stateKeyOf(type, stateKey));
}

export interface MemberState {
  membership: Membership;
  sender: string;
}

const MEMBERSHIPS: readonly string[] = ["join", "invite", "leave", "ban", "knock"];

export function memberOf(room: ActualRoom, userId: string): MemberState | undefined {
  const entry = stateOf(room, "m.room.member", userId);
  const membership = entry?.content.membership;
  if (!entry || typeof membership !== "string" || !MEMBERSHIPS.includes(membership)) return undefined;
  return { membership: membership as Membership, sender: entry.sender };
}

/** Rooms created without a room_version are version 1. */
export function roomVersionOf(room: ActualRoom): string {
  const version = stateOf(room, "m.room.create")?.content.room_version;
  return typeof version === "string" ? version : "1";
}

/**
 * Room versions in which creators have unlimited power and must not appear in the power levels'
 * `users` (MSC4289: version 12, the default of current Synapse releases, and its pre-release hydra.11).
 */
export function hasPrivilegedCreators(version: string): boolean {
  return version === "org.matrix.hydra.11" || (/^\d+$/.test(version) && Number(version) >= 12);
}

/** The users whose power a room version fixes at "creator": empty before version 12. */
export function privilegedCreators(room: ActualRoom): string[] {
  if (!hasPrivilegedCreators(roomVersionOf(room))) return [];
  const create = stateOf(room, "m.room.create");
  const extra = create?.content.additional_creators;
  return [create?.sender ?? "", ...(Array.isArray(extra) ? extra.filter((u): u is string => typeof u === "string") : [])].filter(Boolean);
}

/**
 * Why the bot cannot manage this room, or undefined when it can. Synapse answers `/state` for a
 * room the bot has left with the state at its leave, so a readable state is not proof of membership.
 */
export function unusableReason(room: ActualRoom, botUserId: string): string | undefined {
  const bot = memberOf(room, botUserId);
  if (bot?.membership !== "join") return `the bot is not joined (membership ${bot?.membership ?? "none"})`;
  return undefined;
}
