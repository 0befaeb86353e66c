/**
 * The vocabulary shared by the rooms modules: which rooms the hive owns, what a room should look
 * like (desired), what it looks like (actual), and the changes that take one to the other.
 */

/** The two rooms hive-matrix owns. */
export type RoomKey = "space" | "chat";

export const ROOM_KEYS: readonly RoomKey[] = ["space", "chat"];

/** How rooms are named in logs, reports and problems. */
export const ROOM_LABEL: Record<RoomKey, string> = { space: "Space", chat: "hive-chat" };

/** State-dir files holding the room IDs (names fixed by docs/architecture.md). */
export const ROOM_ID_FILE: Record<RoomKey, string> = { space: "space-id", chat: "hive-chat-id" };

export type Content = Record<string, unknown>;

/** One state event the reconciler owns: it must be present and match `content` (see `satisfies`). */
export interface DesiredStateEvent {
  type: string;
  stateKey: string;
  /** The owned part: fields not named here are kept as they are when the event is rewritten. */
  content: Content;
  /** Human-readable name, e.g. "join rule". */
  what: string;
  /** The desired value in words, e.g. "restricted"; omitted when the name says enough. */
  summary?: string;
  /** Label of the write in the homeserver-writes metric, e.g. "state.join_rules". */
  kind: string;
  /** Only writable once the configured alias points to the room (Synapse validates canonical aliases). */
  requiresAlias?: boolean;
}

/** Who must be where. Agents are ours to move; operators are invited and then left alone. */
export interface DesiredMembership {
  bot: string;
  operators: string[];
  agents: string[];
  leaving: string[];
}

export interface DesiredRoom {
  key: RoomKey;
  /** `m.room.create` facts that cannot change after creation: a mismatch is a problem, not a change. */
  create: { type?: string; roomVersion?: string };
  state: DesiredStateEvent[];
  /** Full alias (`#name:domain`) that must point to the room; undefined when none is configured. */
  alias?: string;
  /** Whether the room should be encrypted; encryption cannot be turned off once on. */
  encrypted: boolean;
  members: DesiredMembership;
  /**
   * State events the reconciler owns and wants gone: present with any content, they are emptied
   * (`{}`, which is how Matrix removes a space child); absent or empty, nothing is written.
   */
  absent?: DesiredAbsentState[];
}

export interface DesiredAbsentState {
  type: string;
  stateKey: string;
  what: string;
  kind: string;
}

export interface StateEntry {
  content: Content;
  sender: string;
}

export interface ActualRoom {
  roomId: string;
  /** Current state, keyed by `stateKeyOf(type, stateKey)`. */
  state: Map<string, StateEntry>;
  /** Where the configured alias points: a room ID, null when unmapped, undefined when not looked up. */
  aliasTarget?: string | null;
}

export type Membership = "join" | "invite" | "leave" | "ban" | "knock";

export type Change =
  | {
      op: "state";
      room: RoomKey;
      type: string;
      stateKey: string;
      content: Content;
      kind: string;
      requiresAlias: boolean;
      /** True when the event existed with other content: drift, logged at warn. */
      drift: boolean;
      message: string;
    }
  | { op: "alias"; room: RoomKey; alias: string; from: string | null; message: string }
  | { op: "invite"; room: RoomKey; userId: string; message: string }
  | { op: "admit"; room: RoomKey; userId: string; invite: boolean; message: string }
  | { op: "leave"; room: RoomKey; userId: string; message: string };

/** An operator seen with membership leave or ban: remembered so that they are not invited again. */
export interface Departure {
  userId: string;
  room: RoomKey;
  how: "left" | "kicked" | "banned";
}

export interface RoomPlan {
  changes: Change[];
  problems: string[];
  departures: Departure[];
}

/** What the agent side asks of the rooms. */
export interface DesiredMembers {
  /** Agent user IDs that must be joined to both rooms. */
  agents: string[];
  /** Agent user IDs that must leave both rooms (ignored for IDs also in `agents`). */
  leaving: string[];
}

export interface ReconcileReport {
  spaceId?: string;
  chatId?: string;
  /** What was changed, human-readable, e.g. "hive-chat: join rule restored to restricted". */
  changes: string[];
  /** What is wrong and could not be fixed, each with what to do about it. */
  problems: string[];
  /** State-changing requests made (failed ones included). */
  writes: number;
  /** Why the run happened (set by the loop). */
  reason?: string;
  at: number;
  durationMs: number;
}

export function stateKeyOf(type: string, stateKey: string): string {
  return `${type}\u0000${stateKey}`;
}
