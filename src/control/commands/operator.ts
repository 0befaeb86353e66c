import { CommandError, type OperatorView } from "../api";
import { blocks, code, duration, list, para, plural, r, table, text, type Rich } from "../render";
import { PREFIX, type CommandContext, type GroupCommand, type LeafCommand } from "../table";
import { userIdProblem } from "./checks";

const userArg = { name: "user-id", help: "A full Matrix user ID, e.g. @bob:hive.example.", check: userIdProblem };

function originCell(o: OperatorView, now: number): Rich {
  if (o.source === "config") return text("config file");
  const when = o.addedAt !== undefined ? `, ${duration((now - o.addedAt) / 1000)} ago` : "";
  return text(`added by ${o.addedBy ?? "?"}${when}`);
}

const listOperators: LeafCommand = {
  name: "list",
  summary: "List the operators: those of the config file and those added from chat.",
  permission: "operator",
  async run(ctx) {
    const all = ctx.api.operators();
    if (all.length === 0) return para("No operators.");
    const now = Date.now();
    return blocks(
      para(`${plural(all.length, "operator")}:`),
      table(
        ["Operator", "From"],
        all.map((o) => [code(o.userId), originCell(o, now)]),
      ),
    );
  },
};

const add: LeafCommand = {
  name: "add",
  summary: "Make a user an operator: they may command here and are invited into the hive rooms.",
  details:
    "Kept in operators.json in the state dir, so it survives restarts. They are invited into the Space, hive-chat and this room, with the operators' power level, like the operators of the config file.",
  permission: "operator",
  args: [userArg],
  async run(ctx) {
    const userId = ctx.arg("user-id");
    const done = await ctx.api.addOperator(userId, ctx.sender);
    return blocks(para(r`${code(userId)} is an operator now.`), list(done));
  },
};

/** The operator to remove, or a CommandError saying why they cannot be (checked again with --yes). */
function removable(ctx: CommandContext): string {
  const userId = ctx.arg("user-id");
  const found = ctx.api.operators().find((o) => o.userId === userId);
  if (!found) throw new CommandError(para(r`${code(userId)} is not an operator. ${code(`${PREFIX} operator list`)} lists them.`));
  if (found.source === "config") {
    throw new CommandError(
      para(
        r`${code(userId)} is an operator from the config file (${code("operators")}): remove them there and restart hive-matrix. Chat can only remove operators added from chat.`,
      ),
    );
  }
  return userId;
}

const remove: LeafCommand = {
  name: "remove",
  summary: "Take away operator rights given from chat; operators of the config file stay.",
  details:
    "Their commands are refused from then on. They stay in the rooms with the power level they have; kick them or lower it there if that is wanted. Operators listed in the config file can only be removed there (and a restart).",
  permission: "operator",
  args: [userArg],
  confirm(ctx) {
    const userId = removable(ctx);
    return para(
      r`This removes ${code(userId)} from the operators: their commands are refused from now on. They stay in the hive rooms with their power level.`,
    );
  },
  async run(ctx) {
    const userId = removable(ctx);
    await ctx.api.removeOperator(userId);
    return para(r`${code(userId)} is no longer an operator.`);
  },
};

export const operator: GroupCommand = {
  name: "operator",
  summary: "List, add or remove the hive's operators.",
  subcommands: [listOperators, add, remove],
};
