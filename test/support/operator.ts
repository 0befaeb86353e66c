/** A real Matrix user talking to the run's homeserver through the client-server API, as an operator's client would. */
import { e2eEnv } from "../harness/slots";
import type { RegisteredUser } from "../../dev/server-process";

export interface RoomEvent {
  type: string;
  event_id: string;
  sender: string;
  state_key?: string;
  content: Record<string, unknown>;
}

/** A user of the run's Synapse, or of another one (a test's own Synapse) when `homeserverUrl` is set. */
export type ClientUser = RegisteredUser & { homeserverUrl?: string };

/** A client-server request (full path) with a token; any answer is returned with its status. */
export async function request(
  token: string,
  method: string,
  path: string,
  body?: unknown,
  homeserverUrl = e2eEnv().homeserver.url,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${homeserverUrl}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

/** A client-server request with the user's token; a non-2xx answer throws with the body. */
export async function cs<T>(
  token: string,
  method: string,
  path: string,
  body?: unknown,
  homeserverUrl = e2eEnv().homeserver.url,
): Promise<T> {
  const res = await fetch(`${homeserverUrl}/_matrix/client/v3${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

let txn = 0;
const run = `${Date.now().toString(36)}-${process.pid}`;

/** Sends a text message; returns its event ID. */
export async function say(user: ClientUser, roomId: string, body: string): Promise<string> {
  const path = `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t${run}-${++txn}`;
  const { event_id } = await cs<{ event_id: string }>(user.accessToken, "PUT", path, { msgtype: "m.text", body }, user.homeserverUrl);
  return event_id;
}

/** The room's latest events, newest first. */
export async function timeline(user: ClientUser, roomId: string, limit = 200): Promise<RoomEvent[]> {
  const res = await cs<{ chunk: RoomEvent[] }>(
    user.accessToken,
    "GET",
    `/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=${limit}`,
    undefined,
    user.homeserverUrl,
  );
  return res.chunk;
}

/** Messages from `sender` that reply to `eventId`. */
export async function repliesTo(user: ClientUser, roomId: string, eventId: string, sender: string): Promise<RoomEvent[]> {
  return (await timeline(user, roomId)).filter((e) => {
    const rel = e.content["m.relates_to"] as { "m.in_reply_to"?: { event_id?: string } } | undefined;
    return e.sender === sender && rel?.["m.in_reply_to"]?.event_id === eventId;
  });
}
