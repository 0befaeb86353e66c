/**
 * Stand-ins for the control-room tests: a HiveApi that records every call, a bot client that
 * records what it sends, a config and room events.
 */
import { MatrixError } from "matrix-bot-sdk";
import { configSchema, type Config, type ConfigInput } from "../../src/config/schema";
import type {
  AgentState,
  AgentView,
  HiveApi,
  HiveRoomInfo,
  HiveStatus,
  LogEntry,
  OperatorView,
  ProgressSink,
  SyncReport,
} from "../../src/control/api";
import { CommandError } from "../../src/control/api";
import type { MatrixEvent } from "../../src/store/transactions";

export const DOMAIN = "hive.test";
export const OPERATOR = `@op:${DOMAIN}`;
export const STRANGER = `@stranger:${DOMAIN}`;
export const BOT = `@hive:${DOMAIN}`;
export const ROOM = `!control:${DOMAIN}`;

export function isHiveUser(userId: string): boolean {
  return userId === BOT || /^@agent-[a-z0-9-]+:hive\.test$/.test(userId);
}

export function testConfig(stateDir: string, overrides: Partial<ConfigInput> = {}): Config {
  return configSchema.parse({
    homeserver: { url: "http://127.0.0.1:1", domain: DOMAIN },
    stateDir,
    operators: [OPERATOR],
    agents: { stateRoot: "/srv/agents" },
    ...overrides,
  });
}

export interface ApiCall {
  method: keyof HiveApi;
  args: unknown[];
}

/** Methods that change something: none may run for invalid input or an unconfirmed destructive command. */
export const MUTATIONS: readonly (keyof HiveApi)[] = [
  "addAgent",
  "removeAgent",
  "rotateAgent",
  "invite",
  "sync",
  "addOperator",
  "removeOperator",
  "setRoomListed",
];

export function agentView(name: string, state: AgentState = "joined", extra: Partial<AgentView> = {}): AgentView {
  return {
    name,
    userId: `@agent-${name}:${DOMAIN}`,
    state,
    stateDir: `/srv/agents/${name}/state`,
    tokenFile: state === "joined" ? "ok" : "missing",
    rooms: state === "joined" ? ["hive", "hive-chat"] : [],
    source: "discovered",
    updatedAt: Date.now() - 60_000,
    activity: "never spoke",
    ...extra,
  };
}

/** Records every call; knows the agents it is given; unknown agents are a CommandError like the real one. */
export class RecordingApi implements HiveApi {
  readonly calls: ApiCall[] = [];
  readonly agentMap = new Map<string, AgentView>();
  /** Lines `sync` and `addAgent` report as progress. */
  progressLines: string[] = [];
  /** When set, the next call throws it. */
  failWith: Error | undefined;

  constructor(
    private readonly initial: AgentView[] = [agentView("x"), agentView("bee", "failed", { reason: "token file not writable <b>" })],
  ) {
    this.reset();
  }

  /** Back to the initial agents, with no calls recorded. */
  reset(): void {
    this.calls.length = 0;
    this.agentMap.clear();
    this.initial.forEach((a) => this.agentMap.set(a.name, a));
    this.progressLines = [];
    this.failWith = undefined;
    this.addedOperators.clear();
  }

  mutations(): ApiCall[] {
    return this.calls.filter((c) => MUTATIONS.includes(c.method));
  }

  private record(method: keyof HiveApi, ...args: unknown[]): void {
    this.calls.push({ method, args });
    const fail = this.failWith;
    if (fail) {
      this.failWith = undefined;
      throw fail;
    }
  }

  private known(name: string): AgentView {
    const a = this.agentMap.get(name);
    if (!a) throw new CommandError(`There is no agent ${name}.`);
    return a;
  }

  async status(): Promise<HiveStatus> {
    this.record("status");
    return {
      homeserver: { url: "http://127.0.0.1:8008", reachable: true, version: "Synapse 1.x" },
      ping: { ok: true, durationMs: 12 },
      version: "0.1.0",
      uptimeSeconds: 3725,
      agents: { joined: 1, failed: 1 },
      // The Space as current Synapse makes it: room version 12, an ID of 43 characters without a server part.
      rooms: {
        spaceId: "!Rm9vYmFyYmF6cXV4cXV1eHF1dXpjb3JnZ3JhdWx0Z2F",
        chatId: "!chat:hive.test",
        controlRoomId: ROOM,
        spaceAlias: `#hive:${DOMAIN}`,
        chatAlias: `#hive-chat:${DOMAIN}`,
      },
      lastReconcile: { at: Date.now() - 120_000, changes: 2, problems: ["hive-chat: <power> levels"] },
      intake: { handled: 120, reusedIds: 5, replays: 3, refused: 1, dropped: { handler_failed: 2, control_room_not_ready: 0 } },
    };
  }

  agents(): AgentView[] {
    this.record("agents");
    return [...this.agentMap.values()];
  }

  agent(name: string): AgentView | undefined {
    this.record("agent", name);
    return this.agentMap.get(name);
  }

  async addAgent(name: string, progress?: ProgressSink): Promise<AgentView> {
    this.record("addAgent", name);
    for (const line of this.progressLines) progress?.(line);
    const view = agentView(name, "joined", { source: "command" });
    this.agentMap.set(name, view);
    return view;
  }

  async removeAgent(name: string): Promise<AgentView> {
    this.record("removeAgent", name);
    const view = { ...this.known(name), state: "removed" as const };
    this.agentMap.set(name, view);
    return view;
  }

  async rotateAgent(name: string): Promise<AgentView> {
    this.record("rotateAgent", name);
    return this.known(name);
  }

  async invite(userId: string): Promise<string[]> {
    this.record("invite", userId);
    return [`invited ${userId} to the Space`, `invited ${userId} to hive-chat`];
  }

  async sync(progress?: ProgressSink): Promise<SyncReport> {
    this.record("sync");
    for (const line of this.progressLines) progress?.(line);
    return { changes: ["hive-chat: power level of @op fixed"], problems: [] };
  }

  /** Operators added with addOperator (the config's OPERATOR is always listed first). */
  readonly addedOperators = new Map<string, string>();

  /** What hiveRooms answers; setRoomListed changes these. */
  rooms: HiveRoomInfo[] = [];

  hiveRooms(): HiveRoomInfo[] {
    this.record("hiveRooms");
    return this.rooms;
  }

  async setRoomListed(roomId: string, listed: boolean, by: string): Promise<HiveRoomInfo> {
    this.record("setRoomListed", roomId, listed, by);
    const room = this.rooms.find((x) => x.roomId === roomId);
    if (!room) throw new CommandError(`No agent of the hive is known to be in ${roomId}.`);
    room.listed = listed;
    room.why = `${listed ? "added" : "removed"} by ${by}`;
    return room;
  }

  /** What recentLogs answers. */
  logs: LogEntry[] = [];

  recentLogs(level: "warn" | "error", n: number): LogEntry[] {
    this.record("recentLogs", level, n);
    return this.logs.filter((e) => level === "warn" || e.level !== "warn").slice(-n);
  }

  operators(): OperatorView[] {
    this.record("operators");
    return [
      { userId: OPERATOR, source: "config" },
      ...[...this.addedOperators].map(([userId, addedBy]): OperatorView => ({ userId, source: "command", addedBy, addedAt: Date.now() })),
    ];
  }

  async addOperator(userId: string, addedBy: string): Promise<string[]> {
    this.record("addOperator", userId, addedBy);
    if (userId === OPERATOR || this.addedOperators.has(userId)) throw new CommandError(`${userId} is an operator already.`);
    this.addedOperators.set(userId, addedBy);
    return [`${userId} invited to the Space`];
  }

  async removeOperator(userId: string): Promise<void> {
    this.record("removeOperator", userId);
    if (!this.addedOperators.delete(userId)) throw new CommandError(`${userId} is not an operator.`);
  }

  roomIds(): { spaceId?: string; chatId?: string } {
    return { spaceId: "!space:hive.test", chatId: "!chat:hive.test" };
  }

  async recreateRooms(progress?: ProgressSink): Promise<SyncReport> {
    this.record("recreateRooms");
    for (const line of this.progressLines) progress?.(line);
    return { changes: ["Space: created !new-space:hive.test", "hive-chat: created !new-chat:hive.test"], problems: [] };
  }
}

export interface SentMessage {
  roomId: string;
  content: Record<string, unknown>;
  eventId: string;
}

function notFound(what: string): MatrixError {
  return new MatrixError({ errcode: "M_NOT_FOUND", error: `${what} not found` }, 404, {});
}

/**
 * The bot's client as the control room uses it: records messages, invites and created rooms;
 * room state lives in `state` (room → "type|key" → content).
 */
export class FakeBot {
  readonly sent: SentMessage[] = [];
  readonly created: Record<string, unknown>[] = [];
  readonly joined = new Set<string>();
  readonly invites: { userId: string; roomId: string }[] = [];
  readonly aliases = new Map<string, string>();
  readonly state = new Map<string, Map<string, Record<string, unknown>>>();
  /** When set, sendMessage rejects with it. */
  sendError: Error | undefined;
  /** When set, createRoom rejects with it. */
  createError: Error | undefined;
  private n = 0;

  constructor(readonly botUserId = BOT) {}

  setState(roomId: string, type: string, key: string, content: Record<string, unknown>): void {
    const room = this.state.get(roomId) ?? new Map<string, Record<string, unknown>>();
    this.state.set(roomId, room);
    room.set(`${type}|${key}`, content);
  }

  async sendMessage(roomId: string, content: Record<string, unknown>): Promise<string> {
    if (this.sendError) throw this.sendError;
    const eventId = `$sent${++this.n}`;
    this.sent.push({ roomId, content, eventId });
    return eventId;
  }

  async createRoom(properties: Record<string, unknown>): Promise<string> {
    if (this.createError) throw this.createError;
    this.created.push(properties);
    const roomId = `!created${this.created.length}:${DOMAIN}`;
    this.joined.add(roomId);
    this.setState(roomId, "m.room.member", this.botUserId, { membership: "join" });
    for (const s of (properties.initial_state as { type: string; state_key: string; content: Record<string, unknown> }[]) ?? []) {
      this.setState(roomId, s.type, s.state_key, s.content);
    }
    return roomId;
  }

  async joinRoom(roomIdOrAlias: string): Promise<string> {
    const roomId = this.aliases.get(roomIdOrAlias) ?? roomIdOrAlias;
    if (!this.state.has(roomId)) throw new MatrixError({ errcode: "M_FORBIDDEN", error: "You are not invited to this room." }, 403, {});
    this.joined.add(roomId);
    this.setState(roomId, "m.room.member", this.botUserId, { membership: "join" });
    return roomId;
  }

  async resolveRoom(roomIdOrAlias: string): Promise<string> {
    if (roomIdOrAlias.startsWith("!")) return roomIdOrAlias;
    const roomId = this.aliases.get(roomIdOrAlias);
    if (!roomId) throw notFound(`alias ${roomIdOrAlias}`);
    return roomId;
  }

  async getRoomStateEvent(roomId: string, type: string, stateKey: string): Promise<unknown> {
    const content = this.state.get(roomId)?.get(`${type}|${stateKey}`);
    if (!content) throw notFound(`${type} ${stateKey}`);
    return content;
  }

  async sendStateEvent(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string> {
    this.setState(roomId, type, stateKey, content);
    return `$state${++this.n}`;
  }

  async getJoinedRooms(): Promise<string[]> {
    return [...this.joined];
  }

  async inviteUser(userId: string, roomId: string): Promise<unknown> {
    this.invites.push({ userId, roomId });
    this.setState(roomId, "m.room.member", userId, { membership: "invite" });
    return {};
  }

  /** Replies to `eventId` (by m.in_reply_to). */
  repliesTo(eventId: string): SentMessage[] {
    return this.sent.filter((m) => {
      const rel = m.content["m.relates_to"] as { "m.in_reply_to"?: { event_id?: string } } | undefined;
      return rel?.["m.in_reply_to"]?.event_id === eventId;
    });
  }
}

let counter = 0;

/** An m.room.message event as a transaction delivers it. */
export function message(
  body: string,
  opts: { sender?: string; roomId?: string; eventId?: string; content?: Record<string, unknown> } = {},
): MatrixEvent {
  return {
    type: "m.room.message",
    event_id: opts.eventId ?? `$cmd${++counter}-${Date.now()}`,
    room_id: opts.roomId ?? ROOM,
    sender: opts.sender ?? OPERATOR,
    origin_server_ts: Date.now(),
    content: { msgtype: "m.text", body, ...(opts.content ?? {}) },
  };
}

/** The tags the renderer emits; anything else in a formatted_body came from input. */
export const OWN_TAGS = new Set(["p", "br", "code", "strong", "em", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"]);

/** Every tag in `html` (name, or the whole tag when it has attributes or is malformed). */
export function foreignTags(html: string): string[] {
  const tags = html.match(/<[^>]*>?/g) ?? [];
  return tags.filter((t) => {
    const m = /^<\/?([a-z]+)>$/.exec(t);
    return !m || !OWN_TAGS.has(m[1]);
  });
}
