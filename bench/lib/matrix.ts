/**
 * A minimal client-server API client for the bench's own users (the operator, an observer, the
 * older flow's registrations). The service under test talks to the homeserver through its own
 * transport; this is only the other side of the conversation.
 */
import { randomBytes } from "node:crypto";

export class MatrixHttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: Record<string, unknown>,
    what: string,
  ) {
    super(
      `${what}: HTTP ${status} ${typeof body.errcode === "string" ? body.errcode : ""} ${typeof body.error === "string" ? body.error : ""}`.trim(),
    );
  }
}

export interface HttpAnswer {
  status: number;
  json: Record<string, unknown>;
}

export async function call(
  baseUrl: string,
  method: string,
  path: string,
  options: { token?: string; body?: unknown } = {},
): Promise<HttpAnswer> {
  const headers: Record<string, string> = {};
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`${baseUrl}${path}`, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: AbortSignal.timeout(120_000),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    const parsed: unknown = text ? JSON.parse(text) : {};
    if (parsed && typeof parsed === "object" && !Array.isArray(parsed)) json = parsed as Record<string, unknown>;
  } catch {
    json = { error: text.slice(0, 200) };
  }
  return { status: res.status, json };
}

export async function callOk(
  baseUrl: string,
  method: string,
  path: string,
  options: { token?: string; body?: unknown } = {},
): Promise<Record<string, unknown>> {
  const answer = await call(baseUrl, method, path, options);
  if (answer.status < 200 || answer.status >= 300) throw new MatrixHttpError(answer.status, answer.json, `${method} ${path.split("?")[0]}`);
  return answer.json;
}

export interface TimelineEvent {
  type: string;
  event_id: string;
  sender: string;
  content: Record<string, unknown>;
  origin_server_ts?: number;
}

export interface SyncBatch {
  nextBatch: string;
  /** Timeline events of joined rooms, by room ID. */
  timeline: Map<string, TimelineEvent[]>;
  invites: string[];
}

const enc = encodeURIComponent;

/** A logged-in user of the bench (operator, observer). */
export class BenchUser {
  constructor(
    readonly baseUrl: string,
    readonly userId: string,
    readonly token: string,
  ) {}

  request(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    return callOk(this.baseUrl, method, path, { token: this.token, body });
  }

  async join(roomIdOrAlias: string): Promise<string> {
    const res = await this.request("POST", `/_matrix/client/v3/join/${enc(roomIdOrAlias)}`, {});
    return String(res.room_id);
  }

  async createRoom(body: Record<string, unknown>): Promise<string> {
    const res = await this.request("POST", "/_matrix/client/v3/createRoom", body);
    return String(res.room_id);
  }

  async send(roomId: string, content: Record<string, unknown>): Promise<string> {
    const txn = randomBytes(8).toString("hex");
    const res = await this.request("PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/${txn}`, content);
    return String(res.event_id);
  }

  /**
   * One /sync. Only timelines and invites are asked for (a filter keeps the payload small); with
   * `since` and `timeoutMs` it long-polls until something arrives.
   */
  async sync(since: string | undefined, timeoutMs: number): Promise<SyncBatch> {
    const filter = JSON.stringify({
      presence: { types: [] },
      account_data: { types: [] },
      room: { state: { lazy_load_members: true }, ephemeral: { types: [] }, account_data: { types: [] }, timeline: { limit: 50 } },
    });
    const query = new URLSearchParams({ timeout: String(timeoutMs), filter });
    if (since) query.set("since", since);
    const res = await this.request("GET", `/_matrix/client/v3/sync?${query.toString()}`);
    const timeline = new Map<string, TimelineEvent[]>();
    const rooms = (res.rooms ?? {}) as {
      join?: Record<string, { timeline?: { events?: TimelineEvent[] } }>;
      invite?: Record<string, unknown>;
    };
    for (const [roomId, room] of Object.entries(rooms.join ?? {})) timeline.set(roomId, room.timeline?.events ?? []);
    return { nextBatch: String(res.next_batch), timeline, invites: Object.keys(rooms.invite ?? {}) };
  }
}
