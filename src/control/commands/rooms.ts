import { CommandError, type HiveRoomInfo } from "../api";
import { blocks, code, duration, list, para, plural, r, table, text, truncate, type Rich } from "../render";
import { PREFIX, type ArgDef, type GroupCommand, type LeafCommand } from "../table";

/** Enough for any real hive; more rows would not fit in one event. */
const MAX_ROWS = 100;

const ROOM_ID = /^![\x21-\x7e]+$/;

const roomArg: ArgDef = {
  name: "room-id",
  help: "The room's ID, e.g. !abc:hive.example (as `!hive rooms --all` shows it).",
  check: (value) => (value.length <= 255 && ROOM_ID.test(value) ? undefined : "is not a room ID like !abc:hive.example"),
};

function membersCell(room: HiveRoomInfo): Rich {
  const shown = room.members.slice(0, 4).join(", ");
  const more = room.members.length > 4 ? ` and ${room.members.length - 4} more` : "";
  return text(`${room.members.length}: ${shown}${more}`);
}

function activityCell(room: HiveRoomInfo, now: number): string {
  return room.lastActivity === undefined ? "none seen" : `${duration((now - room.lastActivity) / 1000)} ago`;
}

function roomRow(room: HiveRoomInfo, now: number): Rich[] {
  return [
    text(room.name ? truncate(room.name, 60) : "(no name)"),
    code(room.roomId),
    membersCell(room),
    text(activityCell(room, now)),
    text(room.why),
  ];
}

const listRooms: LeafCommand = {
  name: "list",
  summary: "List the rooms the Space lists besides hive-chat: name, members, last activity, why each is listed.",
  details:
    "The Space lists, on its own, the rooms an agent is in whose members are all agents and operators (rooms.listing in the config); rooms with outsiders only when an operator adds them. `--all` also shows the rooms agents are in that are not listed, and why not.",
  permission: "operator",
  flags: [{ name: "all", help: "Also the rooms agents are in that the Space does not list." }],
  async run(ctx) {
    const all = ctx.api.hiveRooms();
    const shown = ctx.flag("all") ? all : all.filter((room) => room.listed);
    const now = Date.now();
    const unlisted = all.length - all.filter((room) => room.listed).length;
    const hint =
      !ctx.flag("all") && unlisted > 0
        ? para(
            r`${plural(unlisted, "other room")} agents are in ${unlisted === 1 ? "is" : "are"} not listed: ${code(`${PREFIX} rooms --all`)}.`,
          )
        : undefined;
    if (shown.length === 0) return blocks(para("The Space lists no rooms besides hive-chat yet."), hint);
    return blocks(
      para(
        ctx.flag("all")
          ? `${plural(shown.length, "room")} agents are in:`
          : `The Space lists ${plural(shown.length, "room")} besides hive-chat:`,
      ),
      table(
        ctx.flag("all")
          ? ["Room", "ID", "Members", "Last activity", "Listed because / not listed because"]
          : ["Room", "ID", "Members", "Last activity", "Listed because"],
        shown.slice(0, MAX_ROWS).map((room) => roomRow(room, now)),
      ),
      shown.length > MAX_ROWS ? para(`… and ${shown.length - MAX_ROWS} more.`) : undefined,
      hint,
    );
  },
};

const add: LeafCommand = {
  name: "add",
  summary: "List a room in the Space even though outsiders are in it (or it was removed).",
  details:
    "An agent of the hive must be in the room. It stays listed until removed, closed (tombstoned: the replacement takes its place) or left by every agent.",
  permission: "operator",
  args: [roomArg],
  async run(ctx) {
    const room = await ctx.api.setRoomListed(ctx.arg("room-id"), true, ctx.sender);
    if (!room.listed) throw new CommandError(para(r`${code(room.roomId)} cannot be listed: ${room.why}.`));
    return para(r`The Space lists ${code(room.roomId)}${room.name ? ` (${room.name})` : ""} now.`);
  },
};

const remove: LeafCommand = {
  name: "remove",
  summary: "Take a room out of the Space and keep it out, until `rooms add`.",
  permission: "operator",
  args: [roomArg],
  confirm(ctx) {
    const roomId = ctx.arg("room-id");
    const room = ctx.api.hiveRooms().find((x) => x.roomId === roomId);
    if (!room)
      throw new CommandError(
        para(r`No agent of the hive is known to be in ${code(roomId)}; ${code(`${PREFIX} rooms --all`)} lists the rooms.`),
      );
    return para(
      r`This takes ${code(roomId)}${room.name ? ` (${room.name})` : ""} out of the Space and keeps it out until ${code(`${PREFIX} rooms add ${roomId}`)}. The room itself is not touched.`,
    );
  },
  async run(ctx) {
    const room = await ctx.api.setRoomListed(ctx.arg("room-id"), false, ctx.sender);
    return para(r`The Space no longer lists ${code(room.roomId)}${room.name ? ` (${room.name})` : ""}.`);
  },
};

const recreate: LeafCommand = {
  name: "recreate",
  summary: "Forget the Space and hive-chat and create new ones (when the old ones are unusable).",
  details:
    "Use it when the rooms are reported unusable (the homeserver was wiped, the bot was removed). The old rooms are left as they are, history included; agents and operators are brought into the new ones.",
  permission: "operator",
  progress: true,
  confirm(ctx) {
    const { spaceId, chatId } = ctx.api.roomIds();
    return para(
      r`This forgets the Space ${code(spaceId ?? "(none)")} and hive-chat ${code(chatId ?? "(none)")} and creates new rooms; everyone is invited into the new ones.`,
    );
  },
  async run(ctx) {
    const report = await ctx.api.recreateRooms((line) => ctx.progress(line));
    if (!report.changes.length && report.problems.length)
      throw new CommandError(blocks(para("New rooms could not be created:"), list(report.problems)));
    return blocks(
      para("New rooms created."),
      report.changes.length > 0 ? list(report.changes) : undefined,
      report.problems.length > 0 ? blocks(para("Problems:"), list(report.problems)) : undefined,
    );
  },
};

export const rooms: GroupCommand = {
  name: "rooms",
  summary: "The hive's rooms: list what the Space lists (`!hive rooms` alone), add or remove a room, recreate the Space and hive-chat.",
  subcommands: [listRooms, add, remove, recreate],
  default: "list",
};
