/**
 * What a benchmark run produces: one result per scenario, each a list of metric rows that compare
 * hive-matrix with a baseline measured in the same run, rendered as JSON and as a markdown table.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProfileSummary } from "./cpuprofile";
import type { MachineInfo } from "./machine";
import { round } from "./stats";

/** How a row's goal is judged. Ratios are always hive-matrix / baseline. */
export type Goal =
  | { kind: "ratioAtLeast"; value: number }
  | { kind: "ratioAtMost"; value: number }
  | { kind: "atMost"; value: number; unit: string }
  | { kind: "atLeast"; value: number; unit: string };

export interface MetricRow {
  metric: string;
  unit: string;
  hive: number | null;
  baseline: number | null;
  goal?: Goal;
  /** Shown in the table after the value, e.g. "(token_written)". */
  note?: string;
}

export interface JudgedRow extends MetricRow {
  ratio: number | null;
  met: boolean | null;
}

export type ScenarioStatus = "ok" | "failed" | "incomplete";

export interface ScenarioResult {
  name: string;
  title: string;
  /** The command line that repeats this scenario alone. */
  command: string;
  status: ScenarioStatus;
  durationMs: number;
  rows: JudgedRow[];
  /** Caveats a reader must know (what was measured differently, what is missing). */
  notes: string[];
  /** Everything else worth keeping: profiles, per-round numbers, request counts. */
  details: Record<string, unknown>;
  error?: string;
}

export interface RunResult {
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  /** The command-line arguments of the run. */
  argv: string[];
  options: { quick: boolean; only: string[]; agents: number; fleet: number; profile: boolean; hiveNodeArgs: string[] };
  runDir: string;
  machine: MachineInfo;
  scenarios: ScenarioResult[];
  /** With --profile: CPU profile summaries of the children, by child name. */
  profiles?: Record<string, ProfileSummary[]>;
}

export function judge(row: MetricRow): JudgedRow {
  const ratio = row.hive !== null && row.baseline !== null && row.baseline !== 0 ? row.hive / row.baseline : null;
  let met: boolean | null = null;
  if (row.goal && row.hive !== null) {
    if (row.goal.kind === "atMost") met = row.hive <= row.goal.value;
    else if (row.goal.kind === "atLeast") met = row.hive >= row.goal.value;
    else if (ratio !== null) met = row.goal.kind === "ratioAtLeast" ? ratio >= row.goal.value : ratio <= row.goal.value;
  }
  return { ...row, ratio: ratio === null ? null : round(ratio), met };
}

export function goalText(goal: Goal | undefined): string {
  if (!goal) return "";
  if (goal.kind === "ratioAtLeast") return `≥ ${goal.value.toFixed(1)}×`;
  if (goal.kind === "ratioAtMost") return `≤ ${goal.value.toFixed(1)}×`;
  if (goal.kind === "atLeast") return `≥ ${goal.value} ${goal.unit}`.trim();
  return `≤ ${goal.value} ${goal.unit}`.trim();
}

function value(x: number | null, unit: string, note?: string): string {
  if (x === null) return "—";
  const shown = Number.isFinite(x) ? String(round(x)) : String(x);
  return `${shown}${unit ? ` ${unit}` : ""}${note ? ` ${note}` : ""}`;
}

function metText(met: boolean | null): string {
  if (met === null) return "";
  return met ? "yes" : "**no**";
}

export function machineLine(m: MachineInfo): string {
  return (
    `${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB RAM, ${m.os}; Node ${m.node}; ${m.homeserver}; ` +
    `load average ${m.loadAverageStart.join(" ")} at start, ${m.loadAverageEnd.join(" ")} at the end`
  );
}

export function markdownTable(scenarios: readonly ScenarioResult[]): string {
  const lines = ["| scenario | metric | hive-matrix | baseline | ratio | goal | met? |", "| --- | --- | --- | --- | --- | --- | --- |"];
  for (const s of scenarios) {
    if (s.rows.length === 0) {
      lines.push(
        `| ${s.name} | ${s.status === "ok" ? "(no rows)" : `${s.status}: ${(s.error ?? "").replace(/\|/g, "/").slice(0, 120)}`} | | | | | |`,
      );
      continue;
    }
    for (const row of s.rows) {
      lines.push(
        `| ${s.name} | ${row.metric} | ${value(row.hive, row.unit, row.note)} | ${value(row.baseline, row.unit)} | ` +
          `${row.ratio === null ? "—" : `${row.ratio}×`} | ${goalText(row.goal)} | ${metText(row.met)} |`,
      );
    }
  }
  return lines.join("\n");
}

export function markdownReport(run: RunResult): string {
  const out: string[] = [
    `# hive-matrix benchmark — ${run.finishedAt}`,
    "",
    `Run: \`npm run bench${run.argv.length ? ` -- ${run.argv.join(" ")}` : ""}\`, ` +
      `${Math.round(run.durationMs / 1000)} s, run dir \`${run.runDir}\`.`,
    "",
    `Machine: ${machineLine(run.machine)}.`,
    "",
    markdownTable(run.scenarios),
    "",
  ];
  for (const s of run.scenarios) {
    out.push(`## ${s.name}: ${s.title}`, "", `Repeat alone: \`${s.command}\` (${s.status}, ${Math.round(s.durationMs / 1000)} s)`, "");
    if (s.error) out.push(`Error: ${s.error}`, "");
    for (const note of s.notes) out.push(`- ${note}`);
    if (s.notes.length) out.push("");
  }
  for (const [name, summaries] of Object.entries(run.profiles ?? {})) {
    for (const p of summaries) {
      out.push(`## CPU profile: ${name}`, "", `${p.busyMs} ms busy, ${p.idleMs} ms idle (\`${p.file}\`).`, "");
      out.push(
        "| area | ms | % of busy |",
        "| --- | --- | --- |",
        ...p.areas.slice(0, 10).map((a) => `| ${a.name} | ${a.ms} | ${a.percent} |`),
        "",
      );
      out.push(
        "| function (self time) | ms | % of busy |",
        "| --- | --- | --- |",
        ...p.functions.slice(0, 15).map((f) => `| \`${f.name}\` | ${f.ms} | ${f.percent} |`),
        "",
      );
    }
  }
  return out.join("\n");
}

/** Writes latest.json, a timestamped copy and latest.md into `dir`; returns the paths written. */
export function writeResults(dir: string, run: RunResult): string[] {
  mkdirSync(dir, { recursive: true });
  const stamp = run.startedAt.replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  const json = `${JSON.stringify(run, null, 2)}\n`;
  const files = [join(dir, "latest.json"), join(dir, `${stamp}.json`), join(dir, "latest.md")];
  writeFileSync(files[0], json);
  writeFileSync(files[1], json);
  writeFileSync(files[2], markdownReport(run));
  return files;
}
