/**
 * Onboarding: N agents from nothing (fresh state dirs, fresh names) to token files written and
 * both rooms joined; against the older flow on the same Synapse: one registration-token UIAA
 * registration per agent, then the token file and the daemon restart, with the same concurrency.
 */
import { join } from "node:path";
import type { BenchContext, Scenario, ScenarioOutcome } from "../lib/context";
import { onboardLegacy, type LegacyTimings } from "../lib/legacy";
import { onboardAgents, type Phase } from "../lib/onboard";
import { pool } from "../lib/pool";
import { cpuMs } from "../lib/proc";
import { routesLine } from "../lib/requests";
import { elapsedMs, now, round, roundSummary, summarize } from "../lib/stats";
import { createRegistrationToken } from "../lib/synapse";

function phaseDetails(p: Phase, n: number): Record<string, unknown> {
  return {
    endMs: round(p.endMs),
    requestsPerAgent: round(p.requests.total / n),
    reconcileRuns: p.requests.reconcileRuns,
    // hiveMatrix: the service plus its fork server, whose figure includes the `true` commands here.
    cpuMs: { hiveMatrix: round(p.cpuMs.hiveMatrix), service: round(p.cpuMs.service), synapse: round(p.cpuMs.synapse) },
    routes: p.requests.routes.map((r) => ({ ...r, perAgent: round(r.count / n) })),
  };
}

export const onboarding: Scenario = {
  name: "onboarding",
  title: "Agents from nothing to token files and rooms joined, against registration-token UIAA",
  hives: ["main"],
  async run(ctx: BenchContext): Promise<ScenarioOutcome> {
    const n = ctx.options.agents;
    const bench = ctx.synapse;
    const spec = bench.hives.get("main");
    if (!spec) throw new Error("no main instance was prepared");
    const concurrency = spec.config.agents.concurrency;

    ctx.log("onboarding: starting hive-matrix (main)");
    const hive = await ctx.startHive("main");
    // Registered at once, so the run's clean-up stops it even when onboarding fails.
    ctx.mainHive = { hive, agents: [] };
    const names = ctx.names("a", n);
    ctx.log(`onboarding: hive-matrix, ${n} agents`);
    const measured = await onboardAgents(hive, names, bench.synapse.pid);
    ctx.mainHive = { hive, agents: names };

    ctx.log(`onboarding: baseline (registration token + UIAA), ${n} agents, concurrency ${concurrency}`);
    const token = await createRegistrationToken(bench, n);
    const legacyNames = ctx.names("u", n);
    const legacyRoot = join(ctx.runDir, "legacy", "agents");
    const synapseCpu0 = cpuMs(bench.synapse.pid);
    const started = now();
    const timings: LegacyTimings[] = await pool(legacyNames, concurrency, (name) =>
      onboardLegacy(bench.synapse.url, legacyRoot, name, token, spec.config.agents.restartCommand),
    );
    const legacyMs = elapsedMs(started);
    const legacySynapseCpu = cpuMs(bench.synapse.pid) - synapseCpu0;

    const hiveSynapseCpu = measured.tokens.cpuMs.synapse + measured.rooms.cpuMs.synapse;
    const legacyRequests = timings.reduce((s, t) => s + t.requestsMs.length, 0);
    const byStage = new Map<number, number[]>();
    for (const t of timings) t.requestsMs.forEach((ms, i) => byStage.set(i, [...(byStage.get(i) ?? []), ms]));
    const stageNames = ["open session (401)", ...(timings[0]?.stages ?? [])];
    const notes = [
      "Both flows start from nothing: the clock starts before the agents' state dirs are created and stops when the last agent is done " +
        "(hive-matrix: after the service's startup reconcile has created the rooms, so room creation is not counted). " +
        `The restart command is \`${spec.config.agents.restartCommand.join(" ")}\` for both; token files are written by the same symlink-safe writer (0600).`,
      "hive-matrix is measured to both rooms joined; the baseline joins no rooms, so the goal row is conservative for hive-matrix. " +
        `Token phase: ${Math.round(measured.tokenMs)} ms, ${round(measured.tokens.requests.total / n)} requests per agent (${routesLine(measured.tokens.requests, n, true)}), ` +
        `homeserver CPU ${round(measured.tokens.cpuMs.synapse / n)} ms per agent. ` +
        `Rooms phase: ${Math.round(measured.joinedMs - measured.tokenMs)} ms more, ${measured.rooms.requests.reconcileRuns} reconcile runs, ` +
        `${round(measured.rooms.requests.total / n)} requests per agent (${routesLine(measured.rooms.requests, n, true)}), ` +
        `homeserver CPU ${round(measured.rooms.cpuMs.synapse / n)} ms per agent (${Math.round((measured.rooms.cpuMs.synapse / (measured.joinedMs - measured.tokenMs)) * 100)}% of the phase's wall time).`,
      `Baseline: POST /register (401 + session) then one POST per stage of [${stageNames.slice(1).join(", ")}]; Synapse hashes the password (bcrypt) for every account. ` +
        `Request latency by stage (p50): ${stageNames.map((s, i) => `${s} ${round(summarize(byStage.get(i) ?? []).p50)} ms`).join(", ")}.`,
    ];
    return {
      rows: [
        {
          metric: `wall time, ${n} agents (concurrency ${concurrency})`,
          unit: "ms",
          hive: measured.joinedMs,
          baseline: legacyMs,
          note: "(joined)",
          goal: { kind: "ratioAtMost", value: 0.5 },
        },
        { metric: `wall time to token files, ${n} agents`, unit: "ms", hive: measured.tokenMs, baseline: legacyMs },
        { metric: "homeserver requests per agent", unit: "", hive: measured.requests.total / n, baseline: legacyRequests / n },
        { metric: "homeserver CPU per agent", unit: "ms", hive: hiveSynapseCpu / n, baseline: legacySynapseCpu / n },
      ],
      notes,
      details: {
        agents: n,
        concurrency,
        hive: {
          tokens: phaseDetails(measured.tokens, n),
          rooms: phaseDetails(measured.rooms, n),
          states: measured.wait.states,
        },
        baseline: {
          wallMs: round(legacyMs),
          requests: legacyRequests,
          synapseCpuMs: round(legacySynapseCpu),
          stageLatencyMs: stageNames.map((s, i) => ({ stage: s, ...roundSummary(summarize(byStage.get(i) ?? [])) })),
          tokenFileMs: roundSummary(summarize(timings.map((t) => t.tokenFileMs))),
          restartMs: roundSummary(summarize(timings.map((t) => t.restartMs))),
        },
      },
    };
  },
};
