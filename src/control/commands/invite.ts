import { blocks, code, list, para, r } from "../render";
import type { LeafCommand } from "../table";
import { userIdProblem } from "./checks";

export const invite: LeafCommand = {
  name: "invite",
  summary: "Invite a user into the hive Space and hive-chat.",
  permission: "operator",
  args: [{ name: "user-id", help: "A full Matrix user ID, e.g. @bob:hive.example.", check: userIdProblem }],
  async run(ctx) {
    const userId = ctx.arg("user-id");
    const done = await ctx.api.invite(userId);
    if (done.length === 0) return para(r`Nothing to do: ${code(userId)} is in the Space and hive-chat, or invited, already.`);
    return blocks(para(r`Inviting ${code(userId)} into the Space and hive-chat:`), list(done));
  },
};
