import { CommandError } from "../api";
import { blocks, code, list, para, r } from "../render";
import type { GroupCommand, LeafCommand } from "../table";

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
  summary: "Manage the hive Space and hive-chat.",
  subcommands: [recreate],
};
