import type { LogEntry } from "../api";
import { blocks, code, concat, list, para, plural, r, text, truncate, type Rich } from "../render";
import type { LeafCommand } from "../table";

/** The ring keeps 200 lines; more than 50 in one reply would not be read anyway. */
const MAX_LINES = 50;
const DEFAULT_LINES = 10;
/** One entry's length in the reply: enough for a message and its error, not for a dump. */
const MAX_ENTRY = 400;

function field(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function renderEntry(e: LogEntry): Rich {
  const time = new Date(e.at).toISOString().slice(0, 19).replace("T", " ");
  const { module, ...rest } = e.fields;
  const extra = Object.entries(rest)
    .map(([k, v]) => `${k}=${field(v)}`)
    .join(" ");
  const line = `${e.message}${extra ? ` (${extra})` : ""}`;
  return concat(code(`${time} ${e.level.toUpperCase()}`), module ? ` [${field(module)}] ` : " ", text(truncate(line, MAX_ENTRY)));
}

export const log: LeafCommand = {
  name: "log",
  summary: "Show the last warnings and errors of the service log (secrets scrubbed as in the log).",
  details: `From memory: the last 200 warnings and errors since the service started. At most ${MAX_LINES} lines per reply.`,
  permission: "operator",
  args: [
    {
      name: "count",
      help: `How many lines (1 to ${MAX_LINES}, default ${DEFAULT_LINES}).`,
      optional: true,
      check: (value) =>
        /^\d+$/.test(value) && Number(value) >= 1 && Number(value) <= MAX_LINES ? undefined : `must be a number from 1 to ${MAX_LINES}`,
    },
  ],
  flags: [
    { name: "level", value: "level", help: "warn: warnings and errors (the default); error: errors only.", choices: ["warn", "error"] },
  ],
  async run(ctx) {
    const count = Number(ctx.optionalArg("count") ?? DEFAULT_LINES);
    const level = ctx.option("level") === "error" ? "error" : "warn";
    const entries = ctx.api.recentLogs(level, count);
    const what = level === "error" ? "errors" : "warnings or errors";
    if (entries.length === 0) return para(`No ${what} logged since the service started.`);
    return blocks(
      para(r`The last ${plural(entries.length, level === "error" ? "error" : "warning or error", what)}, oldest first (times in UTC):`),
      list(entries.map(renderEntry)),
    );
  },
};
