/**
 * Summaries of V8 CPU profiles (`node --cpu-prof`, written by children when the bench runs with
 * --profile): where a process spent its busy time, by area (hive-matrix's own code, each package,
 * node internals, GC) and by function.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { round } from "./stats";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples?: number[];
  timeDeltas?: number[];
}

export interface Share {
  name: string;
  ms: number;
  /** Percent of the busy (non-idle) time. */
  percent: number;
}

export interface ProfileSummary {
  file: string;
  busyMs: number;
  idleMs: number;
  areas: Share[];
  functions: Share[];
}

function area(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (!url) return functionName.startsWith("(") ? functionName : "(native)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg) return pkg[1];
  if (url.startsWith("node:")) return url.split("/")[0];
  // The last src/, bench/ or test/ in the path: children run from a build dir under .cache/bench/.
  const own = /.*\/(src|bench|test)\/([^/]+)/.exec(url);
  if (own) return `${own[1]}/${own[2]}`;
  return url;
}

function shares(map: Map<string, number>, busy: number, top: number): Share[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, us]) => ({ name, ms: round(us / 1000), percent: round((us / busy) * 100) }));
}

export function summarizeProfile(file: string, top = 15): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  const areas = new Map<string, number>();
  const functions = new Map<string, number>();
  let idle = 0;
  let busy = 0;
  samples.forEach((id, i) => {
    const node = byId.get(id);
    const us = Math.max(0, deltas[i] ?? 0);
    if (!node) return;
    if (node.callFrame.functionName === "(idle)") {
      idle += us;
      return;
    }
    busy += us;
    const a = area(node.callFrame);
    areas.set(a, (areas.get(a) ?? 0) + us);
    const where = node.callFrame.url
      ? ` ${node.callFrame.url.replace(/^.*\/(node_modules|src|bench)\//, "$1/")}:${node.callFrame.lineNumber + 1}`
      : "";
    const fn = `${node.callFrame.functionName || "(anonymous)"}${where}`;
    functions.set(fn, (functions.get(fn) ?? 0) + us);
  });
  return {
    file,
    busyMs: round(busy / 1000),
    idleMs: round(idle / 1000),
    areas: shares(areas, busy, top),
    functions: shares(functions, busy, top),
  };
}

/** Summaries of every profile under `<dir>/<child name>/`, keyed by child name. */
export function summarizeProfiles(dir: string): Record<string, ProfileSummary[]> {
  const out: Record<string, ProfileSummary[]> = {};
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    const files = readdirSync(join(dir, name)).filter((f) => f.endsWith(".cpuprofile"));
    out[name] = files.map((f) => summarizeProfile(join(dir, name, f)));
  }
  return out;
}
