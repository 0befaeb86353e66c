/** CPU time of a process from /proc (Linux), to tell where the time of a scenario went. */
import { readFileSync } from "node:fs";

const TICKS_PER_SECOND = 100;

/** User + system CPU milliseconds used by `pid` so far; NaN when /proc cannot tell. */
export function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14 and 15 of /proc/<pid>/stat (utime, stime); the slice starts at field 3.
    return ((Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND) * 1000;
  } catch {
    return Number.NaN;
  }
}

/** Runs `fn` and returns its result with the CPU milliseconds `pid` used meanwhile. */
export async function withCpu<T>(pid: number | undefined, fn: () => Promise<T>): Promise<{ value: T; cpuMs: number }> {
  const before = cpuMs(pid);
  const value = await fn();
  return { value, cpuMs: cpuMs(pid) - before };
}
