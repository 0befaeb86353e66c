/** What every scenario gets: options, the run dir, the run's Synapse, the child scripts. */
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { startHive, type HiveKind, type RunningHive } from "./hive";
import type { MetricRow, ScenarioStatus } from "./report";
import type { BenchSynapse } from "./synapse";

export const SCENARIO_NAMES = ["ingest", "onboarding", "reconcile", "fleet", "command"] as const;
export type ScenarioName = (typeof SCENARIO_NAMES)[number];

export interface BenchOptions {
  quick: boolean;
  only: ScenarioName[];
  /** Agents onboarded by the onboarding scenario (100; 10 with --quick; --agents N). */
  agents: number;
  /** Agents of the fleet scenario (1,000; 100 with --quick; --agents N). */
  fleet: number;
  /** Whether --agents was given (it is then part of every repeat command). */
  agentsGiven: boolean;
  /** --profile: children write V8 CPU profiles, summarised in the results. */
  profile: boolean;
  /** --node-args: extra node flags for the hive-matrix children only (to try a fix, e.g. --max-semi-space-size=4). */
  hiveNodeArgs: string[];
}

export interface ScenarioOutcome {
  rows: MetricRow[];
  notes: string[];
  details: Record<string, unknown>;
  /** "incomplete" when part of the scenario could not be measured (said in the notes). */
  status?: ScenarioStatus;
}

export interface Scenario {
  name: ScenarioName;
  title: string;
  /** hive-matrix instances whose registrations Synapse must load. */
  hives: readonly HiveKind[];
  run(ctx: BenchContext): Promise<ScenarioOutcome>;
}

/** The main instance once it has onboarded agents (to both rooms joined): later scenarios (reconcile, command) reuse it. */
export interface OnboardedHive {
  hive: RunningHive;
  agents: string[];
}

export class BenchContext {
  /** Set by whichever scenario first onboards agents into the main instance. */
  mainHive: OnboardedHive | undefined;
  private readonly tag = randomBytes(2).readUInt16BE(0).toString(36).padStart(3, "0").slice(-3);
  private counter = 0;

  constructor(
    readonly options: BenchOptions,
    readonly runDir: string,
    readonly scripts: { serviceHost: string; baselineAppservice: string; httpOnly: string },
    private readonly bench: BenchSynapse | undefined,
  ) {}

  get synapse(): BenchSynapse {
    if (!this.bench) throw new Error("this scenario needs Synapse, but none was started");
    return this.bench;
  }

  /** Node flags for a child named `name`: a CPU profile into <runDir>/profiles/<name>/ with --profile. */
  nodeArgs(name: string): string[] {
    return this.options.profile ? ["--cpu-prof", `--cpu-prof-dir=${join(this.runDir, "profiles", name)}`] : [];
  }

  /** Starts the service of the prepared instance `kind` in a child process (`nodeArgs`: extra node flags; --node-args come after them and win). */
  startHive(kind: HiveKind, nodeArgs: string[] = []): Promise<RunningHive> {
    const spec = this.synapse.hives.get(kind);
    if (!spec) throw new Error(`no ${kind} instance was prepared`);
    return startHive(spec, this.scripts.serviceHost, [...nodeArgs, ...this.options.hiveNodeArgs, ...this.nodeArgs(`hive-${kind}`)]);
  }

  /** Fresh agent names: lower case, at most 9 characters, unique in the run (`<prefix><tag><n>`). */
  names(prefix: string, count: number): string[] {
    const out: string[] = [];
    for (let i = 0; i < count; i++) out.push(`${prefix}${this.tag}${(this.counter++).toString(36).padStart(4, "0")}`.slice(0, 9));
    return out;
  }

  /** Progress for the person running the bench (stderr, so stdout stays the report). */
  log(message: string): void {
    process.stderr.write(`bench: ${message}\n`);
  }
}
