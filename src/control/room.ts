/**
 * Finding the control room: the configured room (ID or alias, which the bot joins), else the one
 * whose ID is in `control-room-id`, else a new one the bot creates: private, unencrypted, the
 * operators invited and at power 100.
 *
 * Creation cannot be made atomic with recording the ID, so it is made recoverable: a nonce is
 * written to `control-room-pending` first and put into the new room as a state event; if the
 * service dies before `control-room-id` is written, the next start finds the room by its nonce
 * among the bot's rooms instead of creating a second one.
 */
import { randomBytes } from "node:crypto";
import type { Config } from "../config/schema";
import { errorFields, type Logger } from "../logging";
import { isMatrixError } from "../matrix/transport";
import type { StateStore } from "../store/state-store";

export const CONTROL_ROOM_FILE = "control-room-id";
export const PENDING_FILE = "control-room-pending";
/** State event marking a room the bot created as a control room. */
export const MARKER_EVENT = "org.hyperhive.control_room";

/** The part of the bot's HiveMatrixClient used here (all requests go through the transport). */
export interface RoomClient {
  createRoom(properties: Record<string, unknown>): Promise<string>;
  joinRoom(roomIdOrAlias: string): Promise<string>;
  resolveRoom(roomIdOrAlias: string): Promise<string>;
  getRoomStateEvent(roomId: string, type: string, stateKey: string): Promise<unknown>;
  sendStateEvent(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string>;
  getJoinedRooms(): Promise<string[]>;
  inviteUser(userId: string, roomId: string): Promise<unknown>;
}

/** How the room was found: it decides what the bot may change there and how to fix encryption. */
export type RoomOrigin = "configured" | "file" | "created";

export interface LocatedRoom {
  roomId: string;
  origin: RoomOrigin;
}

export class ControlRoomError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ControlRoomError";
  }
}

export interface RoomDeps {
  client: RoomClient;
  botUserId: string;
  state: StateStore;
  config: Config;
  logger: Logger;
  /** Every operator, those added from chat included; `config.operators` when absent. */
  operators?: readonly string[];
}

const OPERATOR_POWER = 100;

export function defaultRoomName(config: Config): string {
  return config.control.name || `hive control (${config.homeserver.domain})`;
}

export async function locateControlRoom(deps: RoomDeps): Promise<LocatedRoom> {
  const configured = deps.config.control.room;
  if (configured) return { roomId: await joinConfigured(deps, configured), origin: "configured" };
  const saved = deps.state.readText(CONTROL_ROOM_FILE);
  if (saved) {
    await ensureJoined(
      deps,
      saved,
      `the room in ${CONTROL_ROOM_FILE} (${saved})`,
      `delete ${deps.state.path(CONTROL_ROOM_FILE)} to have a new one created`,
    );
    return { roomId: saved, origin: "file" };
  }
  return { roomId: await createOrRecover(deps), origin: "created" };
}

async function joinConfigured(deps: RoomDeps, room: string): Promise<string> {
  let roomId = room;
  if (room.startsWith("#")) {
    try {
      roomId = await deps.client.resolveRoom(room);
    } catch (err) {
      if (isMatrixError(err, "M_NOT_FOUND")) throw new ControlRoomError(`control.room: no room has the alias ${room}`);
      throw err;
    }
  }
  // Joining by alias lets the homeserver find the room even when it is not (yet) on this server.
  await ensureJoined(deps, roomId, `control.room ${room}`, `invite ${deps.botUserId} to it`, room);
  return roomId;
}

async function membership(deps: RoomDeps, roomId: string, userId: string): Promise<string | undefined> {
  try {
    const content = (await deps.client.getRoomStateEvent(roomId, "m.room.member", userId)) as { membership?: unknown };
    return typeof content.membership === "string" ? content.membership : undefined;
  } catch (err) {
    // Not found, or not visible because the bot is not in the room.
    if (isMatrixError(err, "M_NOT_FOUND") || isMatrixError(err, "M_FORBIDDEN")) return undefined;
    throw err;
  }
}

/** Joins unless joined already, so that a restart changes nothing. */
async function ensureJoined(deps: RoomDeps, roomId: string, what: string, fix: string, via = roomId): Promise<void> {
  if ((await membership(deps, roomId, deps.botUserId)) === "join") return;
  try {
    await deps.client.joinRoom(via);
    deps.logger.info({ roomId }, "joined the control room");
  } catch (err) {
    if (isMatrixError(err, "M_FORBIDDEN") || isMatrixError(err, "M_NOT_FOUND") || isMatrixError(err, "M_UNKNOWN")) {
      throw new ControlRoomError(`the bot ${deps.botUserId} cannot join ${what} (${err.errcode}: ${err.error}); ${fix}`);
    }
    throw err;
  }
}

async function createOrRecover(deps: RoomDeps): Promise<string> {
  const { state, logger } = deps;
  let nonce = state.readText(PENDING_FILE);
  if (nonce) {
    const found = await findByNonce(deps, nonce);
    if (found) {
      logger.info({ roomId: found }, "found the control room created before an interrupted start");
      state.writeText(CONTROL_ROOM_FILE, found);
      state.remove(PENDING_FILE);
      return found;
    }
  } else {
    nonce = randomBytes(16).toString("hex");
    state.writeText(PENDING_FILE, nonce);
  }
  const roomId = await deps.client.createRoom(createOptions(deps, nonce));
  state.writeText(CONTROL_ROOM_FILE, roomId);
  state.remove(PENDING_FILE);
  logger.info({ roomId, operators: deps.config.operators }, "created the control room");
  return roomId;
}

async function findByNonce(deps: RoomDeps, nonce: string): Promise<string | undefined> {
  for (const roomId of await deps.client.getJoinedRooms()) {
    try {
      const marker = (await deps.client.getRoomStateEvent(roomId, MARKER_EVENT, "")) as { nonce?: unknown };
      if (marker.nonce === nonce) return roomId;
    } catch (err) {
      if (!isMatrixError(err, "M_NOT_FOUND"))
        deps.logger.debug({ roomId, ...errorFields(err) }, "could not read a room's control-room marker");
    }
  }
  return undefined;
}

export function createOptions(deps: Pick<RoomDeps, "botUserId" | "config">, nonce: string): Record<string, unknown> {
  const { config, botUserId } = deps;
  const users: Record<string, number> = { [botUserId]: 100 };
  for (const op of config.operators) users[op] = OPERATOR_POWER;
  return {
    preset: "private_chat",
    visibility: "private",
    // The version of hive-chat; power levels of creators work the same as in the hive's other rooms.
    room_version: "10",
    name: defaultRoomName(config),
    topic: "Operator commands for this hive: send !hive help",
    invite: config.operators,
    power_level_content_override: { users },
    initial_state: [
      { type: "m.room.guest_access", state_key: "", content: { guest_access: "forbidden" } },
      { type: "m.room.history_visibility", state_key: "", content: { history_visibility: "shared" } },
      { type: MARKER_EVENT, state_key: "", content: { nonce } },
    ],
  };
}

/** Whether `m.room.encryption` is set in the room. */
export async function isEncrypted(client: RoomClient, roomId: string): Promise<boolean> {
  try {
    const content = (await client.getRoomStateEvent(roomId, "m.room.encryption", "")) as { algorithm?: unknown };
    return typeof content.algorithm === "string";
  } catch (err) {
    if (isMatrixError(err, "M_NOT_FOUND")) return false;
    throw err;
  }
}

/**
 * Invites operators who are not in the room (nor invited, nor banned), and, in a room the bot
 * made, raises operators below power 100. Problems are logged, never fatal: commands still work
 * for the operators who are there.
 */
export async function reconcileOperators(deps: RoomDeps, room: LocatedRoom): Promise<void> {
  const { client, logger } = deps;
  const operators = deps.operators ?? deps.config.operators;
  for (const op of operators) {
    try {
      const m = await membership(deps, room.roomId, op);
      if (m === "join" || m === "invite") continue;
      if (m === "ban") {
        logger.warn({ roomId: room.roomId, operator: op }, "an operator is banned from the control room; not inviting them");
        continue;
      }
      await client.inviteUser(op, room.roomId);
      logger.info({ roomId: room.roomId, operator: op }, "invited an operator to the control room");
    } catch (err) {
      logger.warn({ roomId: room.roomId, operator: op, ...errorFields(err) }, "could not invite an operator to the control room");
    }
  }
  if (room.origin === "configured" || operators.length === 0) return;
  try {
    const levels = (await client.getRoomStateEvent(room.roomId, "m.room.power_levels", "")) as { users?: Record<string, number> };
    const users = { ...(levels.users ?? {}) };
    const low = operators.filter((op) => (users[op] ?? 0) < OPERATOR_POWER);
    if (low.length === 0) return;
    for (const op of low) users[op] = OPERATOR_POWER;
    await client.sendStateEvent(room.roomId, "m.room.power_levels", "", { ...levels, users });
    logger.info({ roomId: room.roomId, operators: low }, "raised operators to power 100 in the control room");
  } catch (err) {
    logger.warn({ roomId: room.roomId, ...errorFields(err) }, "could not check the operators' power in the control room");
  }
}
