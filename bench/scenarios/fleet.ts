/**
 * Fleet: a thousand agents (100 with --quick; --agents N) onboarded from nothing into one instance
 * running with the node flags it is deployed with, then that instance restarted with all of them
 * onboarded. Measures what scales with the number of agents: hive-matrix's own CPU per agent (from
 * /proc), requests per agent against the floor the homeserver needs, Synapse's CPU per agent, wall
 * times, resident memory after a forced GC (against a bare matrix-bot-sdk Appservice process, idle,
 * measured the same way), and for the restart: time to ready and to a quiet idle, the requests it
 * made, token files rewritten and daemons restarted. In full runs a diagnostic second instance
 * onboards the same number with node's defaults, which shows what the deployed flags are worth.
 */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { newToken } from "../../src/registration";
import { freePort } from "../../dev/server-process";
import type { BenchContext, Scenario, ScenarioOutcome } from "../lib/context";
import type { HiveKind, RunningHive } from "../lib/hive";
import { ChildHost } from "../lib/host";
import { onboardAgents, waitTimeoutMs, type OnboardMeasurement, type Phase } from "../lib/onboard";
import type { MemorySample, RequestSnapshot } from "../lib/protocol";
import { commandCpuMs, cpuMs, forkServerCpuMs, forkServerPid, rssBytes } from "../lib/proc";
import { restartArgv } from "../../src/agents/restart";
import { FORK_SERVER_NAME } from "../../src/agents/fork-server";
import type { MetricRow } from "../lib/report";
import { diffRequests, routesLine, type RequestDiff } from "../lib/requests";
import { elapsedMs, now, round } from "../lib/stats";
import { SERVER_NAME } from "../lib/synapse";

const MB = 1024 * 1024;

/**
 * The node flags of the deployed service: NODE_OPTIONS in nix/module.nix (keep the two in step).
 * Without it V8's young generation grows to 2 × 16 MB semi-spaces under the allocation rate of fetch.
 */
export const DEPLOYED_FLAGS = ["--max-semi-space-size=2"];

/**
 * Requests per agent the homeserver needs for an agent from nothing to joined, with the default
 * display name template ("{name}", which differs from the localpart): `/register` (which returns
 * the access token), the display name, the Space's invite and join (the Space is invite-only), and
 * the restricted join into hive-chat. Everything above it is reads or retries.
 */
export const REQUEST_FLOOR = 5;

/** How long the service's idle CPU is measured for. */
const IDLE_MS = 5000;

/** How long the service must stay quiet after a restart before it counts as idle. */
const QUIET_MS = 1000;

const EMPTY_SNAPSHOT: RequestSnapshot = { requests: [], writes: [], latencySum: [], latencyCount: [], reconcileRuns: 0 };

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

function phaseDetails(p: Phase, n: number): Record<string, unknown> {
  return {
    endMs: round(p.endMs),
    requestsPerAgent: round(p.requests.total / n),
    reconcileRuns: p.requests.reconcileRuns,
    cpuMsPerAgent: {
      hiveMatrix: round(p.cpuMs.hiveMatrix / n),
      service: round(p.cpuMs.service / n),
      forkServer: {
        counted: round(p.forkServer.counted / n),
        own: round(p.forkServer.own / n),
        children: round(p.forkServer.children / n),
        restartCommands: p.forkServer.restartCommands === null ? null : round(p.forkServer.restartCommands / n),
        restarts: p.forkServer.restarts,
      },
      serviceUser: round(p.serviceSplitMs.user / n),
      serviceSystem: round(p.serviceSplitMs.system / n),
      synapse: round(p.cpuMs.synapse / n),
      serviceByThread: Object.fromEntries(Object.entries(p.serviceThreadsMs).map(([name, ms]) => [name, round(ms / n)])),
    },
    routes: p.requests.routes.map((r) => ({ ...r, perAgent: round(r.count / n) })),
  };
}

/** Identity and timestamp of every token file: a rewrite (rename over it) changes the inode. */
function tokenFingerprints(hive: RunningHive, names: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of names) {
    try {
      const st = statSync(join(hive.spec.stateRoot, name, "state", "matrix-token"), { bigint: true });
      out.set(name, `${st.ino}:${st.mtimeNs}:${st.size}`);
    } catch {
      out.set(name, "missing");
    }
  }
  return out;
}

function restartCount(hive: RunningHive): number {
  try {
    return readFileSync(hive.spec.restartLog, "utf8").split("\n").filter(Boolean).length;
  } catch {
    return 0;
  }
}

interface RestartMeasurement {
  readyMs: number;
  quietMs: number;
  quietTimedOut: boolean;
  requests: RequestDiff;
  serviceCpuMs: number;
  synapseCpuMs: number;
  tokensRewritten: number;
  daemonRestarts: number;
  memory: MemorySample;
}

interface FleetRun {
  atRest: MemorySample;
  after: MemorySample;
  /** The fork server's resident memory when `after` was taken (null when none ran). */
  forkServerAfter: { rss: number; rssAnon: number } | null;
  measured: OnboardMeasurement;
  /** CPU ms of one run of the restart command alone. */
  restartCommandMs: number;
  /** CPU ms per second of the service with every agent onboarded and nothing happening. */
  idleCpuMsPerS: number;
  /** The restart with every agent onboarded, and the same restart before any agent existed. */
  restart?: { full: RestartMeasurement; empty: RestartMeasurement };
}

/**
 * Stops `hive` and starts its service again on the same state dir; measures the new process from
 * its spawn until it is quiet. Returns the running new instance.
 */
async function restart(
  ctx: BenchContext,
  hive: RunningHive,
  names: readonly string[],
  nodeArgs: string[],
): Promise<{ hive: RunningHive; measured: RestartMeasurement }> {
  const synapsePid = ctx.synapse.synapse.pid;
  await hive.stop();
  const tokens = tokenFingerprints(hive, names);
  const restarts = restartCount(hive);
  const synapse0 = cpuMs(synapsePid);
  const started = now();
  const again = await ctx.startHive(hive.spec.kind, nodeArgs);
  try {
    const readyMs = elapsedMs(started);
    const timeoutMs = waitTimeoutMs(names.length);
    const quiet = await again.host.call({ op: "quiet", quietMs: QUIET_MS, timeoutMs }, timeoutMs + 10_000);
    const quietMs = elapsedMs(started) - quiet.quietForMs;
    // The whole process, from its start: a restart's cost includes loading the service. Plus its
    // fork server, whole (commands included), should one have started (no daemon restart is due).
    const forkServer = forkServerCpuMs(forkServerPid(again.host.pid, FORK_SERVER_NAME));
    const serviceCpuMs = cpuMs(again.host.pid) + forkServer.own + forkServer.children;
    const synapseCpuMs = cpuMs(synapsePid) - synapse0;
    const requests = diffRequests(EMPTY_SNAPSHOT, await again.host.call({ op: "requests" }));
    const after = tokenFingerprints(again, names);
    const memory = await again.host.call({ op: "memory" });
    return {
      hive: again,
      measured: {
        readyMs,
        quietMs,
        quietTimedOut: quiet.timedOut,
        requests,
        serviceCpuMs,
        synapseCpuMs,
        tokensRewritten: names.filter((n) => after.get(n) !== tokens.get(n)).length,
        daemonRestarts: restartCount(again) - restarts,
        memory,
      },
    };
  } catch (err) {
    await again.stop();
    throw err;
  }
}

async function measureFleet(
  ctx: BenchContext,
  kind: HiveKind,
  nodeArgs: string[],
  n: number,
  prefix: string,
  options: { restart: boolean },
): Promise<FleetRun> {
  let hive = await ctx.startHive(kind, nodeArgs);
  try {
    const atRest = await hive.host.call({ op: "memory" });
    // The same restart with no agents: the baseline of the restart with all of them.
    let empty: RestartMeasurement | undefined;
    if (options.restart) ({ hive, measured: empty } = await restart(ctx, hive, [], nodeArgs));
    const names = ctx.names(prefix, n);
    // The restart command's own CPU, measured alone (into a scratch log, not the one that counts
    // restarts), to keep it out of hive-matrix's.
    const scratchLog = join(hive.spec.dir, "calibration.log");
    const argv = restartArgv(hive.spec.config.agents.restartCommand, "calibration").map((a) =>
      a === hive.spec.restartLog ? scratchLog : a,
    );
    const restartCommandMs = commandCpuMs(argv, n);
    const measured = await onboardAgents(hive, names, ctx.synapse.synapse.pid, restartCommandMs);
    const after = await hive.host.call({ op: "memory" });
    const forkServerAfter = rssBytes(forkServerPid(hive.host.pid, FORK_SERVER_NAME));
    // What the service costs while nothing happens: anything here is charged to every phase, per
    // second. Measured once the tail of the onboarding (a follow-up reconcile) is over.
    await hive.host.call({ op: "quiet", quietMs: QUIET_MS, timeoutMs: 120_000 }, 130_000);
    const idle0 = cpuMs(hive.host.pid);
    const idleStarted = now();
    await new Promise((resolve) => setTimeout(resolve, IDLE_MS));
    const idleCpuMsPerS = ((cpuMs(hive.host.pid) - idle0) / elapsedMs(idleStarted)) * 1000;
    let full: RestartMeasurement | undefined;
    if (options.restart) ({ hive, measured: full } = await restart(ctx, hive, names, nodeArgs));
    return {
      atRest,
      after,
      forkServerAfter,
      measured,
      restartCommandMs,
      idleCpuMsPerS,
      restart: full && empty ? { full, empty } : undefined,
    };
  } finally {
    await hive.stop();
  }
}

function restartDetails(r: RestartMeasurement): Record<string, unknown> {
  return {
    readyMs: round(r.readyMs),
    quietMs: round(r.quietMs),
    quietTimedOut: r.quietTimedOut,
    requests: r.requests,
    serviceCpuMs: round(r.serviceCpuMs),
    synapseCpuMs: round(r.synapseCpuMs),
    tokensRewritten: r.tokensRewritten,
    daemonRestarts: r.daemonRestarts,
    memory: mb(r.memory),
  };
}

/** How the fork server's CPU entered hive-matrix's, in numbers. */
function forkServerNote(m: OnboardMeasurement, n: number, restartCommandMs: number): string {
  const part = (p: Phase): string => {
    const f = p.forkServer;
    return (
      `service ${round(p.cpuMs.service / n)} + fork server ${round(f.counted / n)} ms per agent (itself ${round(f.own / n)}, ` +
      `the shells and commands below it ${round(f.children / n)}, less ${f.restarts ?? "?"} restart commands × ${round(restartCommandMs)} ms)`
    );
  };
  return (
    "hive-matrix's CPU is the service process's plus its fork server's (the shell that forks and runs the restart commands, " +
    "src/agents/fork-server.ts): the shell itself and the per-restart shells it forks, which wait for each command. " +
    "The restart commands' own CPU is left out, as a command spawned by the service never counted (a child's CPU is not in " +
    "its parent's utime/stime): everything below the fork server (reaped, alive or zombie, from /proc) less the restarts " +
    "counted in the restart log times the CPU of one run of the same command measured alone, just before the onboarding " +
    "(a shell running it " +
    `${n} times in a row, its children's CPU from \`times\`). Token phase: ${part(m.tokens)}; rooms phase: ${part(m.rooms)}.`
  );
}

function growth(h: FleetRun): string {
  return (
    `${round((h.after.rss - h.atRest.rss) / MB)} MB RSS (${round(((h.after.rssAnon ?? 0) - (h.atRest.rssAnon ?? 0)) / MB)} MB anonymous), ` +
    `${round((h.after.heapUsed - h.atRest.heapUsed) / MB)} MB heapUsed`
  );
}

export const fleet: Scenario = {
  name: "fleet",
  title: "A thousand agents: onboarding cost per agent, memory, and a restart with all of them onboarded",
  hives: ["fleet", "fleet-defaults"],
  async run(ctx: BenchContext): Promise<ScenarioOutcome> {
    const n = ctx.options.fleet;
    const flags = DEPLOYED_FLAGS.join(" ");

    ctx.log("fleet: memory baseline (bare matrix-bot-sdk Appservice)");
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

    ctx.log(`fleet: hive-matrix (${flags}, as deployed), onboarding ${n} agents, then a restart`);
    const deployed = await measureFleet(ctx, "fleet", DEPLOYED_FLAGS, n, "f", { restart: true });
    // The diagnostic doubles the scenario's time: full runs only.
    let defaults: FleetRun | undefined;
    if (!ctx.options.quick) {
      ctx.log(`fleet: hive-matrix with node's defaults (diagnostic), onboarding ${n} agents`);
      defaults = await measureFleet(ctx, "fleet-defaults", [], n, "d", { restart: false });
    }

    const m = deployed.measured;
    const hiveMatrixCpu = m.tokens.cpuMs.hiveMatrix + m.rooms.cpuMs.hiveMatrix;
    const synapseCpu = m.tokens.cpuMs.synapse + m.rooms.cpuMs.synapse;
    const r = deployed.restart;
    const rows: MetricRow[] = [
      {
        metric: `hive-matrix CPU per agent, onboarding ${n}`,
        unit: "ms",
        hive: hiveMatrixCpu / n,
        baseline: null,
        goal: { kind: "atMost", value: 5, unit: "ms" },
      },
      { metric: `wall time to token files, ${n} agents`, unit: "ms", hive: m.tokenMs, baseline: null },
      { metric: `wall time to joined, ${n} agents`, unit: "ms", hive: m.joinedMs, baseline: null },
      {
        metric: "homeserver requests per agent (baseline: the floor)",
        unit: "",
        hive: m.requests.total / n,
        baseline: REQUEST_FLOOR,
        goal: { kind: "ratioAtMost", value: 1.05 },
      },
      { metric: "homeserver CPU per agent", unit: "ms", hive: synapseCpu / n, baseline: null },
      { metric: `hive-matrix CPU while idle with ${n} agents`, unit: "ms/s", hive: deployed.idleCpuMsPerS, baseline: null },
      {
        metric: `RSS after ${n} agents (joined), as deployed, with the fork server's`,
        unit: "MB",
        hive: (deployed.after.rss + (deployed.forkServerAfter?.rss ?? 0)) / MB,
        baseline: base.rss / MB,
        goal: { kind: "atMost", value: 100, unit: "MB" },
      },
      { metric: `heapUsed after ${n} agents`, unit: "MB", hive: deployed.after.heapUsed / MB, baseline: base.heapUsed / MB },
      { metric: "RSS at rest (ready, no agents)", unit: "MB", hive: deployed.atRest.rss / MB, baseline: base.rss / MB },
    ];
    if (r) {
      const { full, empty } = r;
      rows.push(
        {
          metric: `restart with ${n} agents (baseline: with none): time to ready`,
          unit: "ms",
          hive: full.readyMs,
          baseline: empty.readyMs,
        },
        {
          metric: "restart: time to quiet idle",
          unit: "ms",
          hive: full.quietMs,
          baseline: empty.quietMs,
          note: full.quietTimedOut ? "(never quiet)" : undefined,
        },
        { metric: "restart: homeserver requests", unit: "", hive: full.requests.total, baseline: empty.requests.total },
        {
          metric: "restart: requests per agent (beyond the restart with none)",
          unit: "",
          hive: (full.requests.total - empty.requests.total) / n,
          baseline: null,
          goal: { kind: "atMost", value: 1, unit: "" },
        },
        {
          metric: "restart: hive-matrix CPU (whole process)",
          unit: "ms",
          hive: full.serviceCpuMs,
          baseline: empty.serviceCpuMs,
        },
        {
          metric: "restart: token files rewritten",
          unit: "",
          hive: full.tokensRewritten,
          baseline: null,
          goal: { kind: "atMost", value: 0, unit: "" },
        },
        {
          metric: "restart: daemons restarted",
          unit: "",
          hive: full.daemonRestarts,
          baseline: null,
          goal: { kind: "atMost", value: 0, unit: "" },
        },
      );
    }
    if (defaults) {
      rows.push({
        metric: `diagnostic: RSS after ${n} agents with node's defaults`,
        unit: "MB",
        hive: defaults.after.rss / MB,
        baseline: base.rss / MB,
      });
    }
    const notes = [
      `The service runs with ${flags}, as nix/module.nix deploys it (NODE_OPTIONS), alone in its process (plain JavaScript, no TypeScript hook). ` +
        `Onboarding ${n} agents from nothing: token files after ${Math.round(m.tokenMs / 1000)} s ` +
        `(${round(m.tokens.requests.total / n)} requests per agent: ${routesLine(m.tokens.requests, n)}; ` +
        `hive-matrix CPU ${round(m.tokens.cpuMs.hiveMatrix / n)} ms, homeserver CPU ${round(m.tokens.cpuMs.synapse / n)} ms per agent), ` +
        `all joined after ${Math.round(m.joinedMs / 1000)} s (rooms phase: ${m.rooms.requests.reconcileRuns} reconcile runs, ` +
        `${round(m.rooms.requests.total / n)} requests per agent: ${routesLine(m.rooms.requests, n)}; ` +
        `hive-matrix CPU ${round(m.rooms.cpuMs.hiveMatrix / n)} ms, homeserver CPU ${round(m.rooms.cpuMs.synapse / n)} ms per agent). ` +
        "CPU times are user + system from /proc/<pid>/stat, so they hold better than wall times on a loaded machine.",
      forkServerNote(m, n, deployed.restartCommandMs),
      `The request floor (${REQUEST_FLOOR} per agent) is what the homeserver needs: /register (which returns the token), the display name, ` +
        "the Space's invite and join (invite-only), hive-chat's restricted join.",
      `Memory after a forced GC (node --expose-gc, gc() twice): ${round((deployed.after.rssFile ?? 0) / MB)} MB file-backed ` +
        `(the node binary and libraries, shared with every node process), ${round((deployed.after.rssAnon ?? 0) / MB)} MB anonymous; ` +
        `V8 heap committed ${round(deployed.after.heapTotal / MB)} MB of which ${round(deployed.after.heapUsed / MB)} MB used. ` +
        `Growth from rest over ${n} agents: ${growth(deployed)}` +
        (defaults
          ? `; with node's defaults: ${growth(defaults)}, ${round(defaults.after.rss / MB)} MB in all.`
          : " (the diagnostic with node's defaults runs in full runs only).") +
        (deployed.forkServerAfter
          ? ` The fork server (a shell) adds ${round(deployed.forkServerAfter.rss / MB)} MB RSS ` +
            `(${round(deployed.forkServerAfter.rssAnon / MB)} MB anonymous), counted in the RSS row.`
          : " No fork server ran when memory was measured.") +
        " Baseline: a bare matrix-bot-sdk Appservice (express app listening, MemoryStorageProvider), idle, measured the same way (node's defaults).",
    ];
    if (r) {
      const { full, empty } = r;
      notes.push(
        `Restart: the service stopped cleanly with ${n} agents joined and started again on the same state dir; ready after ${Math.round(full.readyMs)} ms ` +
          `(from spawning node), quiet (nothing converging, no reconcile, no request for ${QUIET_MS} ms) after ${Math.round(full.quietMs)} ms. ` +
          `${full.requests.total} requests to the homeserver (${full.requests.reads} reads, ${full.requests.writes} writes): ${routesLine(full.requests, 1)}; ` +
          `homeserver CPU ${Math.round(full.synapseCpuMs)} ms; hive-matrix CPU ${Math.round(full.serviceCpuMs)} ms for the whole process; ` +
          `RSS after ${round(full.memory.rss / MB)} MB. The baseline is the same instance restarted before any agent existed ` +
          `(${empty.requests.total} requests: ${routesLine(empty.requests, 1)}). Token files are compared by inode, mtime and size before and after; ` +
          "daemon restarts are counted by the restart command, which appends the agent's name to a log.",
      );
    }
    return {
      rows,
      notes,
      details: {
        agents: n,
        flags: DEPLOYED_FLAGS,
        restartCommandCpuMs: round(deployed.restartCommandMs),
        onboarding: { tokens: phaseDetails(m.tokens, n), rooms: phaseDetails(m.rooms, n), states: m.wait.states },
        baseline: mb(base),
        hive: {
          atRest: mb(deployed.atRest),
          after: mb(deployed.after),
          forkServerAfter: deployed.forkServerAfter
            ? { rssMB: round(deployed.forkServerAfter.rss / MB), rssAnonMB: round(deployed.forkServerAfter.rssAnon / MB) }
            : null,
        },
        restart: r ? { full: restartDetails(r.full), empty: restartDetails(r.empty) } : null,
        defaults: defaults ? { atRest: mb(defaults.atRest), after: mb(defaults.after) } : null,
      },
    };
  },
};
