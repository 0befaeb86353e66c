/**
 * Which appservice events can make a reconcile do something. Anyone in the Space or hive-chat can
 * send state events (a display-name change is one), and a full reconcile for each would let any
 * member multiply the homeserver requests hive-matrix makes. A run is worth it only for state the
 * reconcile owns (desired.ts), for a change of membership of a user it manages (the bot, operators,
 * agents, agents leaving), and for redactions (one can strip owned state).
 *
 * What is owned and the managed users' memberships are learned from each run's desired and actual
 * state, so desired.ts stays the one definition. A room not learned yet (before the first run, or
 * after a failed one) counts every state event as relevant.
 */
import { memberOf } from "./actual";
import type { ActualRoom, Change, DesiredRoom } from "./types";
import { stateKeyOf } from "./types";

interface Learned {
  /** `stateKeyOf(type, stateKey)` of every state event the reconcile owns in the room. */
  owned: Set<string>;
  /** Managed users → their membership as last read or seen (undefined: none). */
  members: Map<string, string | undefined>;
}

/** Encryption is checked in every room (it cannot be turned off); the rest comes from desired.ts. */
const ALWAYS_OWNED = [stateKeyOf("m.room.encryption", ""), stateKeyOf("m.room.create", "")];

export interface RelevantEvent {
  type: string;
  room_id?: string;
  sender?: string;
  state_key?: string;
  content?: Record<string, unknown>;
}

export class Relevance {
  private readonly rooms = new Map<string, Learned>();

  constructor(private readonly botUserId: string) {}

  /** Records what a run wanted of `actual.roomId` and what it found there. */
  learn(desired: DesiredRoom, actual: ActualRoom): void {
    const owned = new Set([...ALWAYS_OWNED, ...desired.state.map((s) => stateKeyOf(s.type, s.stateKey))]);
    const { bot, operators, agents, leaving } = desired.members;
    const members = new Map<string, string | undefined>();
    for (const userId of [bot, ...operators, ...agents, ...leaving]) members.set(userId, memberOf(actual, userId)?.membership);
    this.rooms.set(actual.roomId, { owned, members });
  }

  /** A membership the run itself changed: the event it causes needs no further run. */
  applied(roomId: string, change: Change): void {
    const members = this.rooms.get(roomId)?.members;
    if (!members) return;
    if (change.op === "invite") members.set(change.userId, "invite");
    else if (change.op === "admit") members.set(change.userId, "join");
    else if (change.op === "leave") members.set(change.userId, "leave");
  }

  forget(): void {
    this.rooms.clear();
  }

  /** Whether `event` (in one of the hive's rooms) may need a reconcile. Updates the memberships it reports. */
  isRelevant(event: RelevantEvent): boolean {
    if (event.type === "m.room.redaction") return true;
    if (typeof event.state_key !== "string") return false;
    const learned = event.room_id === undefined ? undefined : this.rooms.get(event.room_id);
    if (!learned) return true;
    if (event.type === "m.room.member") {
      if (!learned.members.has(event.state_key)) return false;
      const membership = typeof event.content?.membership === "string" ? event.content.membership : undefined;
      if (learned.members.get(event.state_key) === membership) return false;
      learned.members.set(event.state_key, membership);
      return true;
    }
    if (!learned.owned.has(stateKeyOf(event.type, event.state_key))) return false;
    // The bot's own writes come back as events; they are what the run wanted.
    return event.sender !== this.botUserId;
  }
}
