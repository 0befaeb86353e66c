import { AGENT_STATES, type HiveStatus } from "../api";
import { blocks, code, concat, duration, list, para, plural, table, text, type Rich } from "../render";
import type { LeafCommand } from "../table";

function ago(at: number, now: number): string {
  return `${duration((now - at) / 1000)} ago`;
}

/** The alias first: it is what a user joins by (a version 12 room ID has no server to join through). */
function roomCell(id: string | undefined, alias?: string): Rich {
  if (!id) return text(alias ? `(not set up; will be ${alias})` : "(not set up)");
  return alias ? concat(code(alias), " ", code(id)) : code(id);
}

const DROP_REASONS: Record<string, string> = {
  handler_failed: "handler failed",
  control_room_not_ready: "held for the control room before it was ready",
};

/** Transactions since start, and every event not handled: an operator sees drops here, not only in metrics. */
function intakeRows(i: NonNullable<HiveStatus["intake"]>): [string, Rich][] {
  const reused = i.reusedIds > 0 ? ` (${i.reusedIds} with a reused ID, likely after a homeserver restart)` : "";
  const dropped = Object.entries(i.dropped)
    .filter(([, n]) => n > 0)
    .map(([reason, n]) => `${n} ${DROP_REASONS[reason] ?? reason}`);
  return [
    ["Transactions since start", text(`${i.handled} handled${reused}, ${i.replays} replays skipped, ${i.refused} refused`)],
    ["Events dropped since start", text(dropped.length > 0 ? dropped.join(", ") : "none")],
  ];
}

export function renderStatus(s: HiveStatus, now = Date.now()): Rich {
  const counts = AGENT_STATES.filter((state) => (s.agents[state] ?? 0) > 0).map((state) => `${s.agents[state]} ${state}`);
  const total = AGENT_STATES.reduce((sum, state) => sum + (s.agents[state] ?? 0), 0);
  const ping = s.ping
    ? s.ping.ok
      ? text(`ok${s.ping.durationMs !== undefined ? `, ${s.ping.durationMs} ms` : ""}`)
      : text(`failed${s.ping.cause ? `: ${s.ping.cause}` : ""}`)
    : text("not tried");
  const reconcile = s.lastReconcile
    ? text(
        `${ago(s.lastReconcile.at, now)}, ${plural(s.lastReconcile.changes, "change")}, ${plural(s.lastReconcile.problems.length, "problem")}`,
      )
    : text("not yet");
  const rows: [string, Rich][] = [
    [
      "Homeserver",
      concat(
        code(s.homeserver.url),
        s.homeserver.reachable ? " reachable" : " UNREACHABLE",
        s.homeserver.version ? ` (${s.homeserver.version})` : "",
      ),
    ],
    ["Homeserver ping", ping],
    ["hive-matrix", text(`${s.version}, up ${duration(s.uptimeSeconds)}`)],
    ["Agents", text(total === 0 ? "none" : `${total}: ${counts.join(", ")}`)],
    ["Space", roomCell(s.rooms.spaceId, s.rooms.spaceAlias)],
    ["hive-chat", roomCell(s.rooms.chatId, s.rooms.chatAlias)],
    ["Control room", roomCell(s.rooms.controlRoomId)],
    ["Last reconcile", reconcile],
  ];
  if (s.intake) rows.push(...intakeRows(s.intake));
  const problems = s.lastReconcile?.problems ?? [];
  return blocks(
    table(["", "Status"], rows),
    problems.length > 0 ? para("Problems found by the last reconcile:") : undefined,
    problems.length > 0 ? list(problems) : undefined,
  );
}

export const status: LeafCommand = {
  name: "status",
  summary:
    "Show the homeserver, the ping, the version and uptime, agents by state, the rooms, the last reconcile, and the transactions handled and events dropped since start.",
  permission: "operator",
  async run(ctx) {
    return renderStatus(await ctx.api.status());
  },
};
