/**
 * Onboarding agents into a running hive-matrix: create their state dirs, nudge a rescan (the
 * file-system watch would notice too, after its debounce), and wait until every agent has its
 * token file, then until every agent has joined both rooms. Also the shared main instance that
 * later scenarios (reconcile, command) reuse.
 */
import { readFileSync } from "node:fs";
import { FORK_SERVER_NAME } from "../../src/agents/fork-server";
import type { BenchContext, OnboardedHive } from "./context";
import type { RunningHive } from "./hive";
import type { AgentGoal, AgentWait, RequestSnapshot } from "./protocol";
import { cpuMs, cpuSplitMs, forkServerCpuMs, forkServerPid, threadCpuMs } from "./proc";
import { diffRequests, type RequestDiff } from "./requests";
import { elapsedMs, now } from "./stats";

export interface Phase {
  /** Wall time from the start of onboarding to the end of the phase. */
  endMs: number;
  requests: RequestDiff;
  /**
   * `hiveMatrix`: the service process plus what its fork server costs (forkServer.counted), the
   * figure to hold against the goal; `service`: the service process alone.
   */
  cpuMs: { hiveMatrix: number; service: number; synapse: number };
  forkServer: ForkServerCpu;
  /** The service's CPU split into user and system time. */
  serviceSplitMs: { user: number; system: number };
  /** The service's CPU by thread ("main", "libuv-worker", V8's helpers), of threads alive at both ends. */
  serviceThreadsMs: Record<string, number>;
}

export interface OnboardMeasurement {
  agents: number;
  /** Until every agent had its token file. */
  tokens: Phase;
  /** From then until every agent had joined both rooms. */
  rooms: Phase;
  wait: AgentWait;
  /** The whole onboarding. */
  requests: RequestDiff;
  tokenMs: number;
  joinedMs: number;
}

/**
 * The fork server that runs the restart commands (src/agents/fork-server.ts), in CPU ms. `own`:
 * the shell itself. `children`: the shells it forks per restart plus the restart commands they
 * run. `restartCommands`: the commands' own share of it, `restarts` × the command's CPU measured
 * alone (see commandCpuMs); it is not hive-matrix's, as a command spawned by the service never
 * counted either (a child's CPU is not in its parent's utime/stime). Null where not measured.
 * `counted` = own + children − restartCommands: all of it when the commands were not measured.
 */
export interface ForkServerCpu {
  own: number;
  children: number;
  restarts: number | null;
  restartCommands: number | null;
  counted: number;
}

/** Restart commands run so far, by the log the `fleet` instances' command appends to; null without one. */
function restartsLogged(hive: RunningHive): number | null {
  try {
    return readFileSync(hive.spec.restartLog, "utf8").split("\n").filter(Boolean).length;
  } catch {
    return null;
  }
}

interface Snapshot {
  requests: RequestSnapshot;
  service: { user: number; system: number };
  forkServer: { pid: number | undefined; own: number; children: number };
  restarts: number | null;
  threads: Record<string, number>;
  synapse: number;
}

function forkServerSnapshot(hive: RunningHive): Pick<Snapshot, "forkServer" | "restarts"> {
  // The log first: a restart logged after the fork server was read would be subtracted without
  // its CPU being in the fork server's figure.
  const restarts = restartsLogged(hive);
  const pid = forkServerPid(hive.host.pid, FORK_SERVER_NAME);
  return { forkServer: { pid, ...forkServerCpuMs(pid) }, restarts };
}

function forkServerDelta(from: Snapshot, to: Snapshot, commandMs: number | undefined): ForkServerCpu {
  // A fork server started (or started anew) within the phase counts from zero.
  const base = from.forkServer.pid === to.forkServer.pid ? from.forkServer : { own: 0, children: 0 };
  const own = to.forkServer.own - base.own;
  const children = to.forkServer.children - base.children;
  const restarts = to.restarts === null ? null : to.restarts - (from.restarts ?? 0);
  const restartCommands = restarts === null || commandMs === undefined ? null : restarts * commandMs;
  return { own, children, restarts, restartCommands, counted: own + children - (restartCommands ?? 0) };
}

export function waitTimeoutMs(agents: number): number {
  return 120_000 + agents * 2_000;
}

/**
 * Waits until the rooms are in place (the service's startup reconcile creates them in the
 * background), so that the onboarding clock measures agents, not room creation.
 */
export async function settle(hive: RunningHive): Promise<void> {
  await hive.host.call({ op: "reconcile", reason: "bench: rooms in place before the clock" });
}

/**
 * `restartCommandMs`: CPU of one run of the hive's restart command alone (commandCpuMs), kept out
 * of hive-matrix's CPU; without it, everything below the fork server counts.
 */
export async function onboardAgents(
  hive: RunningHive,
  names: string[],
  synapsePid: number | undefined,
  restartCommandMs?: number,
): Promise<OnboardMeasurement> {
  await settle(hive);
  const snapshot = async (): Promise<Snapshot> => ({
    requests: await hive.host.call({ op: "requests" }),
    service: cpuSplitMs(hive.host.pid),
    threads: threadCpuMs(hive.host.pid),
    synapse: cpuMs(synapsePid),
    ...forkServerSnapshot(hive),
  });
  const phase = (from: Snapshot, to: Snapshot, endMs: number): Phase => {
    const service = to.service.user + to.service.system - from.service.user - from.service.system;
    const forkServer = forkServerDelta(from, to, restartCommandMs);
    return {
      endMs,
      requests: diffRequests(from.requests, to.requests),
      cpuMs: { hiveMatrix: service + forkServer.counted, service, synapse: to.synapse - from.synapse },
      forkServer,
      serviceSplitMs: { user: to.service.user - from.service.user, system: to.service.system - from.service.system },
      serviceThreadsMs: Object.fromEntries(Object.entries(to.threads).map(([name, ms]) => [name, ms - (from.threads[name] ?? 0)])),
    };
  };

  const s0 = await snapshot();
  const started = now();
  hive.makeAgentDirs(names);
  await hive.host.call({ op: "rescan" });
  const timeoutMs = waitTimeoutMs(names.length);
  const waitFor = async (until: AgentGoal): Promise<AgentWait> => {
    const wait = await hive.host.call({ op: "waitAgents", names, until, timeoutMs }, timeoutMs + 10_000);
    if (wait.timedOut || wait.failed > 0) {
      throw new Error(
        `onboarding ${names.length} agents did not reach ${until}: ${JSON.stringify(wait.states)}` +
          `${wait.reasons.length ? `; e.g. ${wait.reasons.join("; ")}` : ""}`,
      );
    }
    return wait;
  };
  await waitFor("token_written");
  const tokenMs = elapsedMs(started);
  const s1 = await snapshot();
  const wait = await waitFor("joined");
  const joinedMs = elapsedMs(started);
  const s2 = await snapshot();
  return {
    agents: names.length,
    tokens: phase(s0, s1, tokenMs),
    rooms: phase(s1, s2, joinedMs),
    wait,
    requests: diffRequests(s0.requests, s2.requests),
    tokenMs,
    joinedMs,
  };
}

/** The main instance with `count` agents onboarded: the one the onboarding scenario left, or a new one. */
export async function mainHive(ctx: BenchContext, count: number): Promise<OnboardedHive> {
  if (ctx.mainHive) return ctx.mainHive;
  ctx.log(`starting hive-matrix (main) and onboarding ${count} agents`);
  const hive = await ctx.startHive("main");
  ctx.mainHive = { hive, agents: [] };
  const names = ctx.names("a", count);
  await onboardAgents(hive, names, ctx.synapse.synapse.pid);
  ctx.mainHive = { hive, agents: names };
  return ctx.mainHive;
}
