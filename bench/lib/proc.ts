/** CPU time of a process from /proc (Linux), to tell where the time of a scenario went. */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

const TICKS_PER_SECOND = 100;

/** User and system CPU milliseconds used by `pid` so far; NaN when /proc cannot tell. */
export function cpuSplitMs(pid: number | undefined): { user: number; system: number } {
  if (pid === undefined) return { user: Number.NaN, system: Number.NaN };
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of /proc/<pid>/stat (utime, stime); the slice starts at field 3.
    return { user: (Number(fields[11]) / TICKS_PER_SECOND) * 1000, system: (Number(fields[12]) / TICKS_PER_SECOND) * 1000 };
  } catch {
    return { user: Number.NaN, system: Number.NaN };
  }
}

/** User + system CPU milliseconds used by `pid` so far; NaN when /proc cannot tell. */
export function cpuMs(pid: number | undefined): number {
  const { user, system } = cpuSplitMs(pid);
  return user + system;
}

/** Runs `fn` and returns its result with the CPU milliseconds `pid` used meanwhile. */
export async function withCpu<T>(pid: number | undefined, fn: () => Promise<T>): Promise<{ value: T; cpuMs: number }> {
  const before = cpuMs(pid);
  const value = await fn();
  return { value, cpuMs: cpuMs(pid) - before };
}

/**
 * CPU milliseconds (user + system) of `pid`'s live threads, by thread name: the main thread is
 * the process's own name ("node"), libuv's pool "libuv-worker", V8's helpers "V8 DefaultWorke".
 * A CPU profile sees the main thread only; this says what the other threads cost.
 */
export function threadCpuMs(pid: number | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  if (pid === undefined) return out;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const ms = ((Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND) * 1000;
      const key = tid === String(pid) ? "main" : name;
      out[key] = (out[key] ?? 0) + ms;
    } catch {
      /* the thread ended meanwhile */
    }
  }
  return out;
}

/** Fields 14–17 of /proc/<pid>/stat in ms: own user + system, and that of its reaped children. */
function cpuOwnAndChildrenMs(pid: number): { own: number; children: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat
      .slice(stat.lastIndexOf(")") + 2)
      .split(" ")
      .map(Number);
    const ms = (ticks: number): number => (ticks / TICKS_PER_SECOND) * 1000;
    return { own: ms(f[11] + f[12]), children: ms(f[13] + f[14]) };
  } catch {
    return undefined;
  }
}

function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        out.push(...readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").split(" ").filter(Boolean).map(Number));
      } catch {
        /* the thread ended meanwhile */
      }
    }
  } catch {
    /* the process ended */
  }
  return out;
}

/** The service's fork server (src/agents/fork-server.ts: a shell with FORK_SERVER_NAME as its $0), if it runs. */
export function forkServerPid(servicePid: number | undefined, name: string): number | undefined {
  if (servicePid === undefined) return undefined;
  return childPids(servicePid).find((pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").includes(name);
    } catch {
      return false;
    }
  });
}

/**
 * CPU ms of the fork server `pid`: its own, and that of everything below it (the shells it forks
 * per restart and the restart commands they run): reaped (its cutime), or alive or zombie still.
 */
export function forkServerCpuMs(pid: number | undefined): { own: number; children: number } {
  if (pid === undefined) return { own: 0, children: 0 };
  const tree = childPids(pid);
  for (let i = 0; i < tree.length; i++) tree.push(...childPids(tree[i]));
  // Deepest first, the fork server last: a process reaped between two reads is then counted twice
  // (alive, and in its parent's cutime), never not at all.
  let children = 0;
  for (const below of tree.reverse()) {
    const c = cpuOwnAndChildrenMs(below);
    if (c) children += c.own + c.children;
  }
  const self = cpuOwnAndChildrenMs(pid);
  return self ? { own: self.own, children: children + self.children } : { own: 0, children: 0 };
}

/** Resident memory of `pid` in bytes (VmRSS, RssAnon); null when /proc cannot tell. */
export function rssBytes(pid: number | undefined): { rss: number; rssAnon: number } | null {
  if (pid === undefined) return null;
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN) * 1024;
    return { rss: kb("VmRSS"), rssAnon: kb("RssAnon") };
  } catch {
    return null;
  }
}

/**
 * CPU ms of one run of `argv` alone: a shell runs it `runs` times in a row, each forked and
 * waited for as the fork server's per-restart shell does, and `times` gives its children's total
 * (accumulated exactly, rounded once to the 10 ms tick).
 */
export function commandCpuMs(argv: readonly string[], runs: number): number {
  const loop = 'n=$1; shift; i=0; while [ "$i" -lt "$n" ]; do (exec "$@") </dev/null >/dev/null; i=$((i+1)); done; times';
  const out = execFileSync("/bin/sh", ["-c", loop, "sh", String(runs), ...argv], { encoding: "utf8" });
  // Second line: the children's user and system time, as `1m2.345s` (dash and bash alike).
  const children = out.trim().split("\n")[1] ?? "";
  const ms = [...children.matchAll(/(\d+)m([\d.]+)s/g)].reduce((sum, [, m, s]) => sum + (Number(m) * 60 + Number(s)) * 1000, 0);
  return ms / runs;
}
