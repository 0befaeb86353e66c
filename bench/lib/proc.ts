/** CPU time of a process from /proc (Linux), to tell where the time of a scenario went. */
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
