/**
 * No-op reconcile: with the agents onboarded and the rooms in shape, a reconcile of the Space and
 * hive-chat must write nothing and read little. Two reconciles are triggered; every request the
 * service makes to the homeserver during the second is counted by method (the service's own
 * request metrics). Baseline: the writes a blind re-apply of the same desired state would make.
 */
import type { BenchContext, Scenario, ScenarioOutcome } from "../lib/context";
import type { RunningHive } from "../lib/hive";
import { mainHive } from "../lib/onboard";
import type { RequestSnapshot } from "../lib/protocol";
import { diffRequests } from "../lib/requests";
import { round, sleep } from "../lib/stats";

function total(s: RequestSnapshot): number {
  return s.requests.reduce((sum, x) => sum + x.value, 0);
}

/** Waits until the service has made no homeserver request for `quietMs` (echoes of earlier writes settle). */
async function quiet(hive: RunningHive, quietMs: number, maxMs: number): Promise<void> {
  const deadline = Date.now() + maxMs;
  let last = total(await hive.host.call({ op: "requests" }));
  let since = Date.now();
  while (Date.now() < deadline) {
    await sleep(250);
    const current = total(await hive.host.call({ op: "requests" }));
    if (current !== last) {
      last = current;
      since = Date.now();
    } else if (Date.now() - since >= quietMs) return;
  }
}

export const reconcile: Scenario = {
  name: "reconcile",
  title: "A reconcile with nothing to change: requests to the homeserver",
  hives: ["main"],
  async run(ctx: BenchContext): Promise<ScenarioOutcome> {
    const main = await mainHive(ctx, ctx.options.agents);
    const { hive, agents } = main;
    ctx.log(`reconcile: ${agents.length} agents; first reconcile`);
    await hive.host.call({ op: "reconcile", reason: "bench: agents' reconcile" });
    const roomCount = ctx.options.quick ? 20 : 100;
    ctx.log(`reconcile: agents open ${roomCount} rooms with each other`);
    const opened = await hive.host.call({ op: "hiveRooms", agents, count: roomCount, timeoutMs: 300_000 });
    ctx.log(`reconcile: ${opened.listed} rooms listed in the Space after ${Math.round(opened.ms / 1000)} s; first reconcile`);
    const first = await hive.host.call({ op: "reconcile", reason: "bench: first reconcile" });
    await quiet(hive, 1500, 60_000);
    ctx.log("reconcile: second reconcile (measured)");
    const before = await hive.host.call({ op: "requests" });
    const second = await hive.host.call({ op: "reconcile", reason: "bench: second reconcile" });
    const after = await hive.host.call({ op: "requests" });
    const diff = diffRequests(before, after);
    const notes = [
      `The service's own rooms reconciler, triggered through its reconcile loop (as \`!hive sync\` does), with every agent joined to both rooms and ${opened.listed} rooms the agents opened with each other listed in the Space (of ${roomCount} opened); ` +
        "the service is left to go quiet (no homeserver request for 1.5 s) between the two reconciles, so the echoes of the first one's writes are not counted.",
      `First reconcile: ${first.changes.length} change(s), ${first.writes} write(s), ${Math.round(first.durationMs)} ms; second: ${second.changes.length} change(s), ${second.writes} write(s) by the reconciler's own count.`,
      `Requests during the second reconcile: ${diff.routes.map((r) => `${r.method} ${r.route} ×${r.count}`).join(", ") || "none"}; ` +
        `the service's homeserverWrites counter moved by ${Object.values(diff.writesByKind).reduce((s, x) => s + x, 0)}.`,
      `Baseline: a blind re-apply of the same desired state (every owned state event PUT again, every agent invited and joined to both rooms, operators invited) would make ${second.blindWrites} writes; computed from the desired state, not executed.`,
    ];
    if (second.problems.length > 0) notes.push(`Problems reported by the second reconcile: ${second.problems.join("; ")}`);
    return {
      rows: [
        {
          metric: `writes during a no-op reconcile (${agents.length} agents, ${opened.listed} agent rooms in the Space)`,
          unit: "",
          hive: diff.writes,
          baseline: second.blindWrites,
          goal: { kind: "atMost", value: 0, unit: "" },
        },
        {
          metric: "reads during a no-op reconcile",
          unit: "",
          hive: diff.reads,
          baseline: null,
          goal: { kind: "atMost", value: 10, unit: "" },
        },
        { metric: "no-op reconcile duration", unit: "ms", hive: second.durationMs, baseline: null },
      ],
      notes,
      details: {
        agents: agents.length,
        agentRooms: opened,
        first: { ...first, durationMs: round(first.durationMs) },
        second: { ...second, durationMs: round(second.durationMs) },
        requests: diff,
      },
      status: second.problems.length > 0 ? "incomplete" : "ok",
    };
  },
};
