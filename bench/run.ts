/**
 * `npm run bench -- [--quick] [--only <scenario>[,...]] [--agents N] [--node-args FLAGS] [--profile]`
 *
 * Runs the benchmark scenarios against their baselines, measured in the same run on the same
 * machine, and writes bench/results/latest.json (plus a timestamped copy) and latest.md. Starts its
 * own Synapse under .cache/bench/<timestamp>/ and stops it, and every child, at the end, also when
 * a scenario fails or the run is interrupted.
 */
import { mkdirSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "../dev/synapse";
import { buildChildren } from "./lib/build";
import { summarizeProfiles } from "./lib/cpuprofile";
import { BenchContext, SCENARIO_NAMES, type BenchOptions, type Scenario, type ScenarioName } from "./lib/context";
import { stopAllChildren } from "./lib/host";
import { finishMachineInfo, machineInfo } from "./lib/machine";
import { judge, machineLine, markdownTable, writeResults, type RunResult, type ScenarioResult } from "./lib/report";
import { startBenchSynapse, type BenchSynapse } from "./lib/synapse";
import { command } from "./scenarios/command";
import { fleet } from "./scenarios/fleet";
import { ingest } from "./scenarios/ingest";
import { onboarding } from "./scenarios/onboarding";
import { reconcile } from "./scenarios/reconcile";

const SCENARIOS: readonly Scenario[] = [ingest, onboarding, reconcile, fleet, command];
const RESULTS_DIR = join(REPO_ROOT, "bench", "results");
const RUNS_ROOT = join(REPO_ROOT, ".cache", "bench");
const KEEP_RUNS = 5;

const USAGE = `usage: npm run bench -- [--quick] [--only <scenario>[,<scenario>...]] [--agents N] [--node-args FLAGS] [--profile]

  --quick        a small smoke run (well under 2 minutes): fewer agents, shorter load phases
  --only LIST    run only these scenarios: ${SCENARIO_NAMES.join(", ")}
  --agents N     agents onboarded by the onboarding and fleet scenarios (default 100 and 1000; 10 and 100 with --quick)
  --node-args F  extra node flags for the hive-matrix processes only (e.g. "--max-semi-space-size=4"),
                 to measure a proposed fix against the same baselines
  --profile      children write V8 CPU profiles into the run dir; the top functions go into the
                 results (profiling slows the children down and inflates memory: diagnostics only)

Writes bench/results/latest.json, a timestamped copy, and bench/results/latest.md.`;

class UsageError extends Error {}

function isScenarioName(name: string): name is ScenarioName {
  return (SCENARIO_NAMES as readonly string[]).includes(name);
}

export function parseArgs(argv: readonly string[]): BenchOptions | "help" {
  let quick = false;
  const only: ScenarioName[] = [];
  let agents: number | undefined;
  let profile = false;
  const hiveNodeArgs: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [flag, inline] =
      arg.startsWith("--") && arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const valueOf = (): string => {
      if (inline !== undefined) return inline;
      const value = argv[++i];
      // A separate value may itself be node flags: only --node-args takes one that starts with "--".
      if (value === undefined || (value.startsWith("--") && flag !== "--node-args")) throw new UsageError(`${flag} needs a value`);
      return value;
    };
    if (flag === "--help" || flag === "-h") return "help";
    else if (flag === "--quick") quick = true;
    else if (flag === "--profile") profile = true;
    else if (flag === "--node-args") hiveNodeArgs.push(...valueOf().split(/\s+/).filter(Boolean));
    else if (flag === "--only") {
      for (const name of valueOf()
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean)) {
        if (!isScenarioName(name))
          throw new UsageError(`unknown scenario ${JSON.stringify(name)}; the scenarios are ${SCENARIO_NAMES.join(", ")}`);
        if (!only.includes(name)) only.push(name);
      }
    } else if (flag === "--agents") {
      const value = valueOf();
      const n = Number(value);
      if (!/^\d+$/.test(value) || n < 1 || n > 5000)
        throw new UsageError(`--agents must be a whole number from 1 to 5000, not ${JSON.stringify(value)}`);
      agents = n;
    } else throw new UsageError(`unknown argument ${JSON.stringify(arg)}`);
  }
  return {
    quick,
    only,
    agents: agents ?? (quick ? 10 : 100),
    fleet: agents ?? (quick ? 100 : 1000),
    agentsGiven: agents !== undefined,
    profile,
    hiveNodeArgs,
  };
}

export function repeatCommand(name: ScenarioName, options: BenchOptions): string {
  const extra = [
    options.quick ? "--quick" : "",
    options.agentsGiven ? `--agents ${options.agents}` : "",
    options.hiveNodeArgs.length ? `--node-args="${options.hiveNodeArgs.join(" ")}"` : "",
  ];
  return `npm run bench -- --only ${name} ${extra.filter(Boolean).join(" ")}`.trim();
}

function stamp(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
}

/** Keeps the last few run dirs (Synapse databases, service logs) for inspection; older ones go. */
function pruneRuns(): void {
  let dirs: string[];
  try {
    dirs = readdirSync(RUNS_ROOT)
      .filter((d) => /^\d{8}T\d{6}Z/.test(d))
      .sort();
  } catch {
    return;
  }
  for (const dir of dirs.slice(0, Math.max(0, dirs.length - KEEP_RUNS))) rmSync(join(RUNS_ROOT, dir), { recursive: true, force: true });
}

async function runScenario(ctx: BenchContext, scenario: Scenario): Promise<ScenarioResult> {
  const cmd = repeatCommand(scenario.name, ctx.options);
  process.stderr.write(`\n== ${scenario.name}: ${scenario.title}\n   repeat alone: ${cmd}\n`);
  const started = process.hrtime.bigint();
  const ms = (): number => Number(process.hrtime.bigint() - started) / 1e6;
  try {
    const outcome = await scenario.run(ctx);
    const result: ScenarioResult = {
      name: scenario.name,
      title: scenario.title,
      command: cmd,
      status: outcome.status ?? "ok",
      durationMs: Math.round(ms()),
      rows: outcome.rows.map(judge),
      notes: outcome.notes,
      details: outcome.details,
    };
    process.stderr.write(`${markdownTable([result])}\n`);
    return result;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`!! ${scenario.name} failed: ${message}\n`);
    return {
      name: scenario.name,
      title: scenario.title,
      command: cmd,
      status: "failed",
      durationMs: Math.round(ms()),
      rows: [],
      notes: [],
      details: {},
      error: message,
    };
  }
}

async function main(): Promise<number> {
  let options: BenchOptions | "help";
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n\n${USAGE}\n`);
    return 2;
  }
  if (options === "help") {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const opts = options;
  const selected = SCENARIOS.filter((s) => opts.only.length === 0 || opts.only.includes(s.name));
  const startedAt = new Date();
  const t0 = process.hrtime.bigint();
  pruneRuns();
  const runDir = join(RUNS_ROOT, `${stamp(startedAt)}-${process.pid}`);
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  process.stderr.write(`bench: run dir ${runDir}${opts.quick ? " (quick)" : ""}; scenarios: ${selected.map((s) => s.name).join(", ")}\n`);

  const [serviceHost, baselineAppservice, httpOnly] = buildChildren(
    ["bench/child/service-host.ts", "bench/child/baseline-appservice.ts", "bench/child/http-only.ts"],
    join(runDir, "build"),
  );
  const machine = await machineInfo();
  let synapse: BenchSynapse | undefined;
  let ctx: BenchContext | undefined;
  const cleanUp = async (): Promise<void> => {
    await ctx?.mainHive?.hive.stop().catch(() => undefined);
    await stopAllChildren();
    await synapse?.synapse.stop().catch(() => undefined);
  };
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\nbench: ${signal}: stopping the services and the homeserver\n`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const results: ScenarioResult[] = [];
  try {
    const kinds = [...new Set(selected.flatMap((s) => s.hives))];
    if (kinds.length > 0) {
      process.stderr.write(`bench: starting ${machine.homeserver}\n`);
      synapse = await startBenchSynapse(runDir, kinds);
      process.stderr.write(
        `bench: ${synapse.synapse.version} ${synapse.synapse.url} (pid ${synapse.synapse.pid}) ready in ${synapse.startupMs} ms\n`,
      );
    }
    ctx = new BenchContext(opts, runDir, { serviceHost, baselineAppservice, httpOnly }, synapse);
    for (const scenario of selected) results.push(await runScenario(ctx, scenario));
  } finally {
    await cleanUp();
  }

  const run: RunResult = {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    durationMs: Math.round(Number(process.hrtime.bigint() - t0) / 1e6),
    argv: process.argv.slice(2),
    options: {
      quick: opts.quick,
      only: opts.only,
      agents: opts.agents,
      fleet: opts.fleet,
      profile: opts.profile,
      hiveNodeArgs: opts.hiveNodeArgs,
    },
    runDir,
    machine: finishMachineInfo(machine),
    scenarios: results,
    ...(opts.profile ? { profiles: summarizeProfiles(join(runDir, "profiles")) } : {}),
  };
  const files = writeResults(RESULTS_DIR, run);
  process.stdout.write(`\n${markdownTable(results)}\n\nMachine: ${machineLine(run.machine)}\n\nWritten: ${files.join(", ")}\n`);
  return results.some((r) => r.status === "failed") ? 1 : 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      void stopAllChildren().finally(() => process.exit(1));
    },
  );
}
