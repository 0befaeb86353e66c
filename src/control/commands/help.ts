import { CommandError } from "../api";
import { commandHelp, overview } from "../help";
import { code, para, r } from "../render";
import { closest } from "../suggest";
import { leaves, PREFIX, type LeafCommand } from "../table";

export const help: LeafCommand = {
  name: "help",
  summary: "List the commands, or explain one.",
  details: `\`${PREFIX}\` alone does the same as \`${PREFIX} help\`.`,
  permission: "operator",
  args: [{ name: "command", help: "A command, e.g. `agent remove`.", optional: true, rest: true }],
  async run(ctx) {
    const words = ctx.optionalArg("command")?.split(" ") ?? [];
    if (words.length === 0) return overview(ctx.table);
    const found = commandHelp(ctx.table, words);
    if (found) return found;
    const asked = words.join(" ");
    const guess = closest(asked, [...ctx.table.map((d) => d.name), ...leaves(ctx.table).map((l) => l.path.join(" "))]);
    throw new CommandError(
      para(r`There is no command ${code(asked)}.`, guess ? r` Did you mean ${code(guess)}?` : "", r` Send ${code(PREFIX)} for the list.`),
    );
  },
};
