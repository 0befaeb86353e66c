/**
 * Memory: resident set of the service process after onboarding many agents, after a forced GC
 * (`node --expose-gc`, the service alone in its process), with the node flags the service is
 * deployed with. Baseline: a bare matrix-bot-sdk Appservice process, idle, measured the same way:
 * the floor any appservice built on the SDK pays. In full runs a diagnostic second instance runs
 * with node's defaults, which shows what the flags are worth (docs/performance.md).
 */
import { join } from "node:path";
import { newToken } from "../../src/registration";
import { freePort } from "../../dev/server-process";
import type { BenchContext, Scenario, ScenarioOutcome } from "../lib/context";
import type { HiveKind } from "../lib/hive";
import { ChildHost } from "../lib/host";
import { onboardAgents, type OnboardMeasurement } from "../lib/onboard";
import type { MemorySample } from "../lib/protocol";
import type { MetricRow } from "../lib/report";
import { round } from "../lib/stats";
import { SERVER_NAME } from "../lib/synapse";

const MB = 1024 * 1024;

/**
 * The node flags of the deployed service: NODE_OPTIONS in nix/module.nix (keep the two in step).
 * Without it V8's young generation grows to 2 × 16 MB semi-spaces under the allocation rate of fetch.
 */
export const DEPLOYED_FLAGS = ["--max-semi-space-size=2"];

function mb(sample: MemorySample): Record<string, unknown> {
  const m = (x: number | null): number | null => (x === null ? null : round(x / MB));
  return {
    rssMB: m(sample.rss),
    rssAnonMB: m(sample.rssAnon),
    rssFileMB: m(sample.rssFile),
    heapUsedMB: m(sample.heapUsed),
    heapTotalMB: m(sample.heapTotal),
    externalMB: m(sample.external),
    spacesMB: Object.fromEntries(
      sample.spaces.filter((s) => s.size > 0).map((s) => [s.name, { size: m(s.size), used: m(s.used), resident: m(s.physical) }]),
    ),
  };
}

interface HiveMemory {
  atRest: MemorySample;
  after: MemorySample;
  measured: OnboardMeasurement;
}

async function measureHive(ctx: BenchContext, kind: HiveKind, nodeArgs: string[], n: number, prefix: string): Promise<HiveMemory> {
  const hive = await ctx.startHive(kind, nodeArgs);
  try {
    const atRest = await hive.host.call({ op: "memory" });
    const measured = await onboardAgents(hive, ctx.names(prefix, n), ctx.synapse.synapse.pid);
    const after = await hive.host.call({ op: "memory" });
    return { atRest, after, measured };
  } finally {
    await hive.stop();
  }
}

function growth(h: HiveMemory): string {
  return (
    `${round((h.after.rss - h.atRest.rss) / MB)} MB RSS (${round(((h.after.rssAnon ?? 0) - (h.atRest.rssAnon ?? 0)) / MB)} MB anonymous), ` +
    `${round((h.after.heapUsed - h.atRest.heapUsed) / MB)} MB heapUsed`
  );
}

export const memory: Scenario = {
  name: "memory",
  title: "Resident memory after onboarding many agents",
  hives: ["memory", "memory-defaults"],
  async run(ctx: BenchContext): Promise<ScenarioOutcome> {
    const n = ctx.options.quick ? 100 : 1000;
    const flags = DEPLOYED_FLAGS.join(" ");

    ctx.log("memory: baseline (bare matrix-bot-sdk Appservice)");
    const port = await freePort();
    const baseline = await ChildHost.spawn({
      name: "matrix-bot-sdk Appservice (memory baseline)",
      script: ctx.scripts.baselineAppservice,
      args: [JSON.stringify({ port, serverName: SERVER_NAME, hsToken: newToken(), asToken: newToken() })],
      logFile: join(ctx.runDir, "baseline-memory.log"),
      readyTimeoutMs: 60_000,
      nodeArgs: ctx.nodeArgs("baseline-memory"),
    });
    let base: MemorySample;
    try {
      base = await baseline.call({ op: "memory" });
    } finally {
      await baseline.stop();
    }

    ctx.log(`memory: hive-matrix (${flags}, as deployed), onboarding ${n} agents`);
    const deployed = await measureHive(ctx, "memory", DEPLOYED_FLAGS, n, "m");
    // The diagnostic doubles the scenario's time: full runs only.
    let defaults: HiveMemory | undefined;
    if (!ctx.options.quick) {
      ctx.log(`memory: hive-matrix with node's defaults (diagnostic), onboarding ${n} agents`);
      defaults = await measureHive(ctx, "memory-defaults", [], n, "d");
    }

    const rows: MetricRow[] = [
      {
        metric: `RSS after ${n} agents (joined), as deployed`,
        unit: "MB",
        hive: deployed.after.rss / MB,
        baseline: base.rss / MB,
        goal: { kind: "atMost", value: 120, unit: "MB" },
      },
      { metric: `heapUsed after ${n} agents`, unit: "MB", hive: deployed.after.heapUsed / MB, baseline: base.heapUsed / MB },
      { metric: "RSS at rest (ready, no agents)", unit: "MB", hive: deployed.atRest.rss / MB, baseline: base.rss / MB },
    ];
    if (defaults) {
      rows.push({
        metric: `diagnostic: RSS after ${n} agents with node's defaults`,
        unit: "MB",
        hive: defaults.after.rss / MB,
        baseline: base.rss / MB,
      });
    }
    return {
      rows,
      notes: [
        `The service runs with ${flags}, as nix/module.nix deploys it (NODE_OPTIONS). After a forced GC (node --expose-gc, gc() twice), ` +
          `the service alone in its process (plain JavaScript, no TypeScript hook); onboarding ${n} agents took ` +
          `${Math.round(deployed.measured.joinedMs / 1000)} s (token files after ${Math.round(deployed.measured.tokenMs / 1000)} s).`,
        `RSS after ${n} agents: ${round((deployed.after.rssFile ?? 0) / MB)} MB file-backed (the node binary and libraries, shared with every node process), ` +
          `${round((deployed.after.rssAnon ?? 0) / MB)} MB anonymous; V8 heap committed ${round(deployed.after.heapTotal / MB)} MB of which ` +
          `${round(deployed.after.heapUsed / MB)} MB used.`,
        `Growth from rest over ${n} agents: ${growth(deployed)}` +
          (defaults
            ? `; with node's defaults: ${growth(defaults)}, ${round(defaults.after.rss / MB)} MB in all.`
            : " (the diagnostic with node's defaults runs in full runs only)."),
        "Baseline: a bare matrix-bot-sdk Appservice (express app listening, MemoryStorageProvider), idle, measured the same way (node's defaults).",
      ],
      details: {
        agents: n,
        flags: DEPLOYED_FLAGS,
        baseline: mb(base),
        hive: { atRest: mb(deployed.atRest), after: mb(deployed.after), requests: deployed.measured.requests.total },
        defaults: defaults ? { atRest: mb(defaults.atRest), after: mb(defaults.after) } : null,
      },
    };
  },
};
