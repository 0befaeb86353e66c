/**
 * The desired state of the hive's Space and hive-chat, computed from the config and the current
 * inputs (room IDs, agents). Pure: the same inputs give the same rooms, so the diff is testable
 * without a homeserver, and a room is created with exactly what the reconciler later checks.
 */
import type { Config } from "../config/schema";
import { hasPrivilegedCreators } from "./actual";
import type { SpaceChildren } from "./space-children";
import {
  ROOM_KEYS,
  ROOM_LABEL,
  type DesiredMembers,
  type DesiredRoom,
  type DesiredStateEvent,
  type DesiredMembership,
  type RoomKey,
} from "./types";

export const MEGOLM = "m.megolm.v1.aes-sha2";

/** Restricted join rules need room version 8 or later; 10 is what the hive has always used. */
export const CHAT_ROOM_VERSION = "10";

export interface DesiredInputs {
  botUserId: string;
  members: DesiredMembers;
  /** The Space's ID: needed by hive-chat's join rule and parent event. */
  spaceId: string;
  /** hive-chat's ID: the Space's child event is desired once hive-chat exists. */
  chatId?: string;
  /** Every operator, those added from chat included; `config.operators` when not given. */
  operators?: readonly string[];
  /** The hive's other rooms the Space must list, and those it must not (see space-children.ts). */
  children?: SpaceChildren;
}

/**
 * Full alias of the Space or hive-chat, or undefined when `rooms.<space|chat>.alias` is empty.
 * Room IDs of version 12 rooms (the Space's, on current Synapse) have no server part, so some
 * clients can only join such a room through an alias.
 */
export function roomAlias(config: Config, key: RoomKey): string | undefined {
  const localpart = config.rooms[key].alias;
  return localpart ? `#${localpart}:${config.homeserver.domain}` : undefined;
}

/**
 * The reason sent with every invite into the Space or hive-chat: clients show it with the invite,
 * and it names the aliases to join by when a client cannot join a version 12 room by its ID.
 */
export function inviteReason(config: Config): string | undefined {
  const aliases = ROOM_KEYS.flatMap((key) => {
    const alias = roomAlias(config, key);
    return alias ? [`${alias} (${ROOM_LABEL[key]})`] : [];
  });
  return aliases.length > 0 ? `The hive's rooms: ${aliases.join(", ")}` : undefined;
}

/** The desired canonical alias event, which Synapse accepts only once the alias points to the room. */
function canonicalAlias(alias: string): DesiredStateEvent {
  return {
    type: "m.room.canonical_alias",
    stateKey: "",
    content: { alias },
    what: "canonical alias",
    summary: alias,
    kind: "state.canonical_alias",
    requiresAlias: true,
  };
}

export function membershipOf(
  config: Config,
  botUserId: string,
  members: DesiredMembers,
  allOperators: readonly string[] = config.operators,
): DesiredMembership {
  const agents = unique(members.agents.filter((u) => u !== botUserId));
  const operators = unique(allOperators.filter((u) => u !== botUserId && !agents.includes(u)));
  const leaving = unique(members.leaving.filter((u) => u !== botUserId && !agents.includes(u) && !operators.includes(u)));
  return { bot: botUserId, operators, agents, leaving };
}

/** Only these users' entries are ours; every other entry in `users` is kept as it is. */
export function powerUsers(config: Config, botUserId: string, operators: readonly string[] = config.operators): Record<string, number> {
  const users: Record<string, number> = {};
  for (const op of operators) users[op] = config.rooms.operatorPowerLevel;
  users[botUserId] = 100;
  return users;
}

function commonState(
  config: Config,
  botUserId: string,
  name: string,
  topic: string,
  operators: readonly string[] | undefined,
): DesiredStateEvent[] {
  const users = powerUsers(config, botUserId, operators);
  const levels = Object.entries(users)
    .map(([u, l]) => `${u} at ${l}`)
    .join(", ");
  return [
    { type: "m.room.name", stateKey: "", content: { name }, what: "name", summary: JSON.stringify(name), kind: "state.name" },
    { type: "m.room.topic", stateKey: "", content: { topic }, what: "topic", kind: "state.topic" },
    {
      type: "m.room.guest_access",
      stateKey: "",
      content: { guest_access: "forbidden" },
      what: "guest access",
      summary: "forbidden",
      kind: "state.guest_access",
    },
    {
      type: "m.room.history_visibility",
      stateKey: "",
      content: { history_visibility: "shared" },
      what: "history visibility",
      summary: "shared",
      kind: "state.history_visibility",
    },
    { type: "m.room.power_levels", stateKey: "", content: { users }, what: "power levels", summary: levels, kind: "state.power_levels" },
  ];
}

export function desiredSpace(config: Config, inputs: Omit<DesiredInputs, "spaceId"> & { spaceId?: string }): DesiredRoom {
  const domain = config.homeserver.domain;
  const alias = roomAlias(config, "space");
  const state: DesiredStateEvent[] = [
    {
      type: "m.room.join_rules",
      stateKey: "",
      content: { join_rule: "invite" },
      what: "join rule",
      summary: "invite",
      kind: "state.join_rules",
    },
    ...commonState(config, inputs.botUserId, config.rooms.space.name, config.rooms.space.topic, inputs.operators),
  ];
  if (inputs.chatId) {
    state.push({
      type: "m.space.child",
      stateKey: inputs.chatId,
      content: { via: [domain] },
      what: "child hive-chat",
      kind: "state.space_child",
    });
  }
  if (alias) state.push(canonicalAlias(alias));
  for (const roomId of inputs.children?.listed ?? []) {
    if (roomId === inputs.chatId) continue;
    state.push({ type: "m.space.child", stateKey: roomId, content: { via: [domain] }, what: `child ${roomId}`, kind: "state.space_child" });
  }
  const absent = (inputs.children?.unlisted ?? [])
    .filter((roomId) => roomId !== inputs.chatId)
    .map((roomId) => ({ type: "m.space.child", stateKey: roomId, what: `child ${roomId}`, kind: "state.space_child" }));
  return {
    key: "space",
    create: { type: "m.space" },
    state,
    alias,
    absent,
    encrypted: false,
    members: membershipOf(config, inputs.botUserId, inputs.members, inputs.operators),
  };
}

export function desiredChat(config: Config, inputs: DesiredInputs): DesiredRoom {
  const domain = config.homeserver.domain;
  const alias = roomAlias(config, "chat");
  const state: DesiredStateEvent[] = [
    {
      type: "m.room.join_rules",
      stateKey: "",
      content: { join_rule: "restricted", allow: [{ type: "m.room_membership", room_id: inputs.spaceId }] },
      what: "join rule",
      summary: "restricted",
      kind: "state.join_rules",
    },
    ...commonState(config, inputs.botUserId, config.rooms.chat.name, config.rooms.chat.topic, inputs.operators),
    {
      type: "m.space.parent",
      stateKey: inputs.spaceId,
      content: { via: [domain], canonical: true },
      what: "parent Space",
      kind: "state.space_parent",
    },
  ];
  if (config.rooms.chat.encrypted) {
    state.push({ type: "m.room.encryption", stateKey: "", content: { algorithm: MEGOLM }, what: "encryption", kind: "state.encryption" });
  }
  if (alias) state.push(canonicalAlias(alias));
  return {
    key: "chat",
    create: { roomVersion: CHAT_ROOM_VERSION },
    state,
    alias,
    encrypted: config.rooms.chat.encrypted,
    members: membershipOf(config, inputs.botUserId, inputs.members, inputs.operators),
  };
}

export function desiredRoom(key: RoomKey, config: Config, inputs: DesiredInputs): DesiredRoom {
  return key === "space" ? desiredSpace(config, inputs) : desiredChat(config, inputs);
}

/**
 * The /createRoom body that gives a new room its whole desired state at once, so that the first
 * reconcile after creation finds only memberships (and, for the Space, the child) to add. The alias
 * is never passed as `room_alias_name`: Synapse would create the room and then fail on a taken alias.
 */
export function createRoomBody(room: DesiredRoom): Record<string, unknown> {
  // Our users map names the bot, which a version-12 room refuses for its creator; when the version
  // is the server's choice, the room starts with the server's default levels and the first
  // reconcile adds the operators.
  const pinned = room.create.roomVersion !== undefined && !hasPrivilegedCreators(room.create.roomVersion);
  const powerLevels = pinned ? room.state.find((s) => s.type === "m.room.power_levels") : undefined;
  const initialState = room.state
    .filter((s) => s.type !== "m.room.power_levels" && !s.requiresAlias)
    .map((s) => ({ type: s.type, state_key: s.stateKey, content: s.content }));
  return {
    preset: "private_chat",
    visibility: "private",
    ...(room.create.type ? { creation_content: { type: room.create.type } } : {}),
    ...(room.create.roomVersion ? { room_version: room.create.roomVersion } : {}),
    ...(powerLevels ? { power_level_content_override: powerLevels.content } : {}),
    initial_state: initialState,
  };
}

function unique(list: string[]): string[] {
  return [...new Set(list)];
}
