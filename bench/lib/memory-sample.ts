/** Resident memory of this process, after a forced GC when node runs with --expose-gc. */
import { readFileSync } from "node:fs";
import { getHeapSpaceStatistics } from "node:v8";
import type { MemorySample } from "./protocol";

function procStatus(field: string): number | null {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(readFileSync("/proc/self/status", "utf8"));
    return match ? Number(match[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export async function sampleMemory(): Promise<MemorySample> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    // A second collection after a turn of the event loop catches what finalizers released.
    await new Promise((resolve) => setTimeout(resolve, 50));
    gc();
  }
  const m = process.memoryUsage();
  return {
    rss: m.rss,
    heapUsed: m.heapUsed,
    heapTotal: m.heapTotal,
    external: m.external,
    arrayBuffers: m.arrayBuffers,
    gcExposed: !!gc,
    rssAnon: procStatus("RssAnon"),
    rssFile: procStatus("RssFile"),
    spaces: getHeapSpaceStatistics().map((s) => ({
      name: s.space_name,
      size: s.space_size,
      used: s.space_used_size,
      physical: s.physical_space_size,
    })),
  };
}
