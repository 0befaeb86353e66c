import { blocks, list, para, plural } from "../render";
import type { LeafCommand } from "../table";

export const sync: LeafCommand = {
  name: "sync",
  summary: "Reconcile the hive now (users, rooms, members, power levels) and report what changed.",
  details:
    "It first re-reads the registration file (as SIGHUP does), so agents waiting for a registration refresh are retried. " +
    "The same reconcile also runs on its own every rooms.reconcileIntervalSeconds.",
  permission: "operator",
  progress: true,
  async run(ctx) {
    const report = await ctx.api.sync((line) => ctx.progress(line));
    const { changes, problems } = report;
    return blocks(
      para(
        changes.length === 0 && problems.length === 0
          ? "Sync done: everything was as it should be."
          : `Sync done: ${plural(changes.length, "change")}, ${plural(problems.length, "problem")}.`,
      ),
      changes.length > 0 ? blocks(para("Changed:"), list(changes)) : undefined,
      problems.length > 0 ? blocks(para("Problems (not repaired):"), list(problems)) : undefined,
    );
  },
};
