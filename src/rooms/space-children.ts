/**
 * The hive's other rooms: every room an agent is in, learnt from the events the appservice
 * receives anyway (the agents are its exclusive namespace, so it gets every event of every room
 * an agent is in). Nothing polls: a room's state is read, as one of its agents, only when an event
 * there changes its membership or marks it replaced, and on first sight.
 *
 * Each room gets a verdict (`classify`, pure): listed in the Space or not, and why. The rooms
 * reconciler turns the verdicts into the Space's `m.space.child` events (see `children()`), so the
 * Space's children are owned declaratively like hive-chat's: a reconcile that finds them as they
 * should be writes nothing.
 *
 * Kept in `hive-rooms.json` (0600): membership, names and verdict-changing facts are written at
 * once (they decide the Space's children after a restart), the last-activity times at most every
 * 10 seconds. Only room IDs, user IDs, names and times are kept, never content.
 */
import { z } from "zod";
import type { Config } from "../config/schema";
import { errorFields, type Logger } from "../logging";
import type { HomeserverTransport } from "../matrix/transport";
import type { StateStore } from "../store/state-store";
import type { MatrixEvent } from "../store/transactions";

export const HIVE_ROOMS_FILE = "hive-rooms.json";

const PERSIST_MS = 10_000;
/** A room's state is read once per burst of membership events (a createRoom sends several at once). */
const REFRESH_DELAY_MS = 250;

const markSchema = z.object({ by: z.string(), at: z.number() });

const roomSchema = z.object({
  name: z.string().optional(),
  /** Joined members. */
  joined: z.array(z.string()),
  /** Invited members: an invited outsider makes a room not hive-only already. */
  invited: z.array(z.string()),
  /** The room is a Space itself: never listed as a room. */
  space: z.boolean().optional(),
  /** Set by m.room.tombstone: the replacement's room ID, "" when the tombstone names none. */
  replacedBy: z.string().optional(),
  lastActivity: z.number().optional(),
  /** Listed by an operator (`!hive rooms add`), outsiders or not. */
  pinned: markSchema.optional(),
  /** Taken out by an operator (`!hive rooms remove`): not listed again until added. */
  excluded: markSchema.optional(),
  firstSeen: z.number(),
});
const fileSchema = z.object({ version: z.literal(1), rooms: z.record(roomSchema) });

export type HiveRoom = z.infer<typeof roomSchema>;

export interface ListingPolicy {
  /** List rooms of hive members on their own; off: only rooms an operator adds. */
  auto: boolean;
  /** List rooms of exactly one operator and one agent. */
  operatorDirectChats: boolean;
}

export interface Who {
  isAgent(userId: string): boolean;
  isOperator(userId: string): boolean;
  botUserId: string;
}

export interface Verdict {
  listed: boolean;
  /** Why, in a few words, e.g. "hive members only (2 agents)", "outsiders: @eve:x". */
  why: string;
}

function plural(n: number, one: string): string {
  return `${n} ${one}${n === 1 ? "" : "s"}`;
}

/** Whether the room belongs in the Space, and why. Pure: the unit tests pin the policy. */
export function classify(room: HiveRoom, who: Who, policy: ListingPolicy): Verdict {
  if (room.replacedBy !== undefined) {
    return { listed: false, why: room.replacedBy ? `replaced by ${room.replacedBy}` : "closed (tombstoned)" };
  }
  if (room.space) return { listed: false, why: "a Space, not a room" };
  const agents = room.joined.filter((u) => who.isAgent(u));
  if (agents.length === 0) return { listed: false, why: "no agent of the hive is in it" };
  if (room.excluded) return { listed: false, why: `removed by ${room.excluded.by}` };
  if (room.pinned) return { listed: true, why: `added by ${room.pinned.by}` };
  const outsiders = [...room.joined, ...room.invited].filter((u) => !who.isAgent(u) && !who.isOperator(u) && u !== who.botUserId);
  if (outsiders.length > 0) {
    const shown = outsiders.slice(0, 3).join(", ") + (outsiders.length > 3 ? ` and ${outsiders.length - 3} more` : "");
    return { listed: false, why: `outsiders: ${shown} (an operator can add it with \`!hive rooms add\`)` };
  }
  if (!policy.auto) return { listed: false, why: "automatic listing is off (rooms.listing.auto)" };
  const operators = room.joined.filter((u) => who.isOperator(u));
  if (room.joined.length === 2 && agents.length === 1 && operators.length === 1) {
    return policy.operatorDirectChats
      ? { listed: true, why: "operator–agent direct chat" }
      : { listed: false, why: "operator–agent direct chats are not listed (rooms.listing.operatorDirectChats)" };
  }
  const counts = [plural(agents.length, "agent"), ...(operators.length > 0 ? [plural(operators.length, "operator")] : [])];
  return { listed: true, why: `hive members only (${counts.join(", ")})` };
}

/** What the rooms reconciler owns in the Space besides hive-chat. */
export interface SpaceChildren {
  /** Rooms that must be children (content `{via: [domain]}`). */
  listed: string[];
  /** Rooms hive-matrix tracks that must not be children: a child event of theirs is emptied. */
  unlisted: string[];
}

export interface HiveRoomView {
  roomId: string;
  name?: string;
  joined: string[];
  lastActivity?: number;
  verdict: Verdict;
}

export interface HiveRoomsDeps {
  config: Config;
  state: StateStore;
  transport: HomeserverTransport;
  logger: Logger;
  who: Who;
  /** The Space, hive-chat and the control room: owned elsewhere, never children here. */
  isOwnRoom(roomId: string): boolean;
  /** Called when the listed set may have changed: the reconcile brings the Space in line. */
  changed(reason: string): void;
  now?: () => number;
  refreshDelayMs?: number;
}

interface RawState {
  type?: unknown;
  state_key?: unknown;
  content?: unknown;
}

const REFRESHING_TYPES = new Set(["m.room.member", "m.room.create", "m.room.tombstone", "m.room.name"]);

export class HiveRooms {
  private readonly rooms = new Map<string, HiveRoom>();
  private readonly log: Logger;
  private readonly now: () => number;
  private loaded = false;
  private activityDirty = false;
  private persistTimer: NodeJS.Timeout | undefined;
  private readonly refreshTimers = new Map<string, { timer: NodeJS.Timeout; hints: Set<string> }>();
  private readonly inFlight = new Set<Promise<void>>();
  /** Activity in rooms seen for the first time, until their first read makes them known. */
  private readonly earlyActivity = new Map<string, number>();
  private stopped = false;

  constructor(private readonly deps: HiveRoomsDeps) {
    this.log = deps.logger.child({ module: "hive-rooms" });
    this.now = deps.now ?? Date.now;
  }

  private get policy(): ListingPolicy {
    return this.deps.config.rooms.listing;
  }

  load(): void {
    const file = this.deps.state.readJson(HIVE_ROOMS_FILE, fileSchema);
    this.rooms.clear();
    for (const [roomId, room] of Object.entries(file?.rooms ?? {})) this.rooms.set(roomId, room);
    this.loaded = true;
  }

  /** Waits for the state reads in progress, drops pending ones and writes the file. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const { timer } of this.refreshTimers.values()) clearTimeout(timer);
    this.refreshTimers.clear();
    await Promise.all([...this.inFlight]);
    this.flush();
  }

  /** Resolves when no state read is pending or running (tests, benchmarks). */
  async idle(): Promise<void> {
    while (this.refreshTimers.size > 0 || this.inFlight.size > 0) {
      await Promise.all([...this.inFlight]);
      if (this.refreshTimers.size > 0) await new Promise((r) => setTimeout(r, 20));
    }
  }

  get(roomId: string): HiveRoom | undefined {
    return this.rooms.get(roomId);
  }

  verdict(roomId: string): Verdict | undefined {
    const room = this.rooms.get(roomId);
    return room ? classify(room, this.deps.who, this.policy) : undefined;
  }

  children(): SpaceChildren {
    const listed: string[] = [];
    const unlisted: string[] = [];
    for (const [roomId, room] of this.rooms) {
      if (this.deps.isOwnRoom(roomId)) continue;
      (classify(room, this.deps.who, this.policy).listed ? listed : unlisted).push(roomId);
    }
    return { listed: listed.sort(), unlisted: unlisted.sort() };
  }

  /** Every tracked room with its verdict, listed ones first, then by last activity. */
  list(): HiveRoomView[] {
    return [...this.rooms.entries()]
      .filter(([roomId]) => !this.deps.isOwnRoom(roomId))
      .map(([roomId, room]) => ({
        roomId,
        name: room.name,
        joined: room.joined,
        lastActivity: room.lastActivity,
        verdict: classify(room, this.deps.who, this.policy),
      }))
      .sort((a, b) => Number(b.verdict.listed) - Number(a.verdict.listed) || (b.lastActivity ?? 0) - (a.lastActivity ?? 0));
  }

  /** `!hive rooms add`: lists the room whatever its members, until removed. */
  pin(roomId: string, by: string): Verdict | undefined {
    const room = this.rooms.get(roomId);
    if (!room) return undefined;
    this.update(roomId, { ...room, pinned: { by, at: this.now() }, excluded: undefined }, `room ${roomId} added by ${by}`);
    return this.verdict(roomId);
  }

  /** `!hive rooms remove`: takes the room out of the Space and keeps it out, until added again. */
  exclude(roomId: string, by: string): Verdict | undefined {
    const room = this.rooms.get(roomId);
    if (!room) return undefined;
    this.update(roomId, { ...room, excluded: { by, at: this.now() }, pinned: undefined }, `room ${roomId} removed by ${by}`);
    return this.verdict(roomId);
  }

  /** For the service's event queue. Never throws; never waits for a homeserver request. */
  observe(event: MatrixEvent): void {
    if (this.stopped) return;
    const roomId = event.room_id;
    if (typeof roomId !== "string" || this.deps.isOwnRoom(roomId)) return;
    const sender = typeof event.sender === "string" ? event.sender : undefined;
    const subject = event.type === "m.room.member" && typeof event.state_key === "string" ? event.state_key : undefined;
    const known = this.rooms.get(roomId);
    const agentSender = sender !== undefined && this.deps.who.isAgent(sender);
    const agentSubject = subject !== undefined && this.deps.who.isAgent(subject);
    if (!known && !agentSender && !agentSubject) return;

    const at = typeof event.origin_server_ts === "number" ? Math.min(event.origin_server_ts, this.now()) : this.now();
    if (!known && event.type !== "m.room.member") this.earlyActivity.set(roomId, Math.max(at, this.earlyActivity.get(roomId) ?? 0));
    if (known && event.type !== "m.room.member") {
      if ((known.lastActivity ?? 0) < at) {
        known.lastActivity = at;
        this.activityDirty = true;
        this.schedulePersist();
      }
    }
    if (known && subject !== undefined) this.applyMembership(roomId, known, subject, event.content?.membership);
    const isState = typeof event.state_key === "string";
    if (!known || (isState && REFRESHING_TYPES.has(event.type))) {
      const hints = [agentSender ? sender : undefined, agentSubject ? subject : undefined].filter((u): u is string => u !== undefined);
      this.scheduleRefresh(roomId, hints);
    }
  }

  /** Keeps membership current between reads, so a read refused after the last agent left still leaves the right facts. */
  private applyMembership(roomId: string, room: HiveRoom, userId: string, membership: unknown): void {
    const joined = room.joined.filter((u) => u !== userId);
    const invited = room.invited.filter((u) => u !== userId);
    if (membership === "join") joined.push(userId);
    if (membership === "invite") invited.push(userId);
    this.update(roomId, { ...room, joined, invited }, `membership of ${userId} in ${roomId}`);
  }

  private scheduleRefresh(roomId: string, hints: string[]): void {
    const pending = this.refreshTimers.get(roomId);
    if (pending) {
      hints.forEach((h) => pending.hints.add(h));
      return;
    }
    const entry = {
      hints: new Set(hints),
      timer: setTimeout(() => {
        this.refreshTimers.delete(roomId);
        const run = this.refresh(roomId, [...entry.hints]).finally(() => this.inFlight.delete(run));
        this.inFlight.add(run);
      }, this.deps.refreshDelayMs ?? REFRESH_DELAY_MS),
    };
    entry.timer.unref();
    this.refreshTimers.set(roomId, entry);
  }

  /** Reads the room's state as one of its agents and updates the room. */
  private async refresh(roomId: string, hints: string[]): Promise<void> {
    if (this.stopped) return;
    const known = this.rooms.get(roomId);
    const candidates = [...new Set([...hints, ...(known?.joined ?? []).filter((u) => this.deps.who.isAgent(u))])];
    const early = this.earlyActivity.get(roomId);
    this.earlyActivity.delete(roomId);
    for (const userId of candidates) {
      let events: unknown;
      try {
        events = await this.deps.transport.request<unknown>("GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state`, {
          asUser: userId,
        });
      } catch (err) {
        // Not (or no longer) in the room as this agent: try another; the membership events stand meanwhile.
        this.log.debug({ roomId, userId, ...errorFields(err) }, "could not read a room's state as this agent");
        continue;
      }
      if (!Array.isArray(events)) continue;
      const facts = this.factsOf(events as RawState[]);
      // Synapse answers a user who left with the state at their leave; their own leave then says so.
      const base = this.rooms.get(roomId) ?? { joined: [], invited: [], firstSeen: this.now(), lastActivity: early };
      this.update(roomId, { ...base, ...facts }, `state of ${roomId}`);
      const replacement = facts.replacedBy;
      if (replacement && base.pinned && !this.rooms.get(replacement)?.pinned) this.inheritPin(replacement, base.pinned, candidates);
      return;
    }
  }

  /** The replacement of a room an operator added takes its place in the Space, as soon as an agent is in it. */
  private inheritPin(replacement: string, pin: z.infer<typeof markSchema>, agents: string[]): void {
    const room = this.rooms.get(replacement) ?? { joined: [], invited: [], firstSeen: this.now() };
    this.update(replacement, { ...room, pinned: pin }, `replacement ${replacement} inherits the listing`);
    this.scheduleRefresh(replacement, agents);
  }

  private factsOf(events: RawState[]): Pick<HiveRoom, "joined" | "invited" | "name" | "space" | "replacedBy"> {
    const joined: string[] = [];
    const invited: string[] = [];
    let name: string | undefined;
    let space: boolean | undefined;
    let replacedBy: string | undefined;
    for (const e of events) {
      if (typeof e.type !== "string" || typeof e.state_key !== "string") continue;
      const content = e.content && typeof e.content === "object" ? (e.content as Record<string, unknown>) : {};
      if (e.type === "m.room.member") {
        if (content.membership === "join") joined.push(e.state_key);
        else if (content.membership === "invite") invited.push(e.state_key);
      } else if (e.type === "m.room.name" && e.state_key === "" && typeof content.name === "string" && content.name !== "") {
        name = content.name.slice(0, 200);
      } else if (e.type === "m.room.create" && e.state_key === "" && content.type === "m.space") {
        space = true;
      } else if (e.type === "m.room.tombstone" && e.state_key === "" && Object.keys(content).length > 0) {
        replacedBy = typeof content.replacement_room === "string" ? content.replacement_room : "";
      }
    }
    return { joined: joined.sort(), invited: invited.sort(), name, space, replacedBy };
  }

  /** Sets a room's facts; when its verdict changed, writes the file now and asks for a reconcile. */
  private update(roomId: string, next: HiveRoom, what: string): void {
    const before = this.rooms.get(roomId);
    const wasListed = before ? classify(before, this.deps.who, this.policy) : undefined;
    this.rooms.set(roomId, next);
    const now = classify(next, this.deps.who, this.policy);
    const factsChanged = !before || JSON.stringify({ ...before, lastActivity: 0 }) !== JSON.stringify({ ...next, lastActivity: 0 });
    if (!factsChanged) return;
    this.persistNow();
    if ((wasListed?.listed ?? false) !== now.listed) {
      this.log.info({ roomId, listed: now.listed, why: now.why }, now.listed ? "hive room listed in the Space" : "hive room not listed");
      this.deps.changed(`${what}: ${now.listed ? "listed" : "not listed"}`);
    }
  }

  private schedulePersist(): void {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => this.flush(), PERSIST_MS);
    this.persistTimer.unref();
  }

  private persistNow(): void {
    this.activityDirty = true;
    this.flush();
  }

  /** Writes the file if anything changed. Logs instead of throwing: the next change writes again. */
  flush(): void {
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = undefined;
    if (!this.activityDirty || !this.loaded) return;
    this.activityDirty = false;
    try {
      this.deps.state.writeJson(HIVE_ROOMS_FILE, { version: 1, rooms: Object.fromEntries(this.rooms) });
    } catch (err) {
      this.log.error(errorFields(err), "could not save the hive's rooms");
    }
  }
}
