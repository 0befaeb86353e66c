/**
 * When each agent last sent an event, learnt from the transactions the appservice already
 * receives (agents are in its exclusive namespace, so every event they send comes through).
 * Membership changes do not count: hive-matrix makes those itself, as the agent. Only
 * the time and the room are kept, never content. Kept in `agent-activity.json`, written at most
 * once per `PERSIST_MS` (an agent chatting must not cost a synced file rewrite per message); a
 * crash loses at most that much, which only makes an agent look a little quieter than it was.
 *
 * An agent that spoke and then stays silent past `agents.activity.silentAfterSeconds` is reported
 * once ("agent-silent"), and once more when it speaks again ("agent-back"); whether it was
 * reported is kept in the file, so a restart does not report the same silence twice.
 */
import { Gauge } from "prom-client";
import { z } from "zod";
import type { Config } from "../config/schema";
import { errorFields, type Logger } from "../logging";
import type { Metrics } from "../metrics";
import type { StateStore } from "../store/state-store";
import type { MatrixEvent } from "../store/transactions";

export const ACTIVITY_FILE = "agent-activity.json";

const PERSIST_MS = 10_000;

const entrySchema = z.object({
  at: z.number(),
  roomId: z.string(),
  /** The silence since `at` has been reported; cleared when the agent speaks again. */
  silent: z.boolean().optional(),
});
const fileSchema = z.object({ version: z.literal(1), agents: z.record(entrySchema) });

export type ActivityEntry = z.infer<typeof entrySchema>;

export type ActivityReport = "agent-silent" | "agent-back";

export interface ActivityDeps {
  config: Config;
  state: StateStore;
  logger: Logger;
  metrics: Metrics;
  /** The agent name of a user ID of this hive, or undefined for anyone else. */
  agentName(userId: string): string | undefined;
  /** Agents whose silence matters (not removed). */
  isCurrent(name: string): boolean;
  report(kind: ActivityReport, text: string): void;
  now?: () => number;
  persistMs?: number;
}

/** How an agent's activity reads in chat: "active 2 min ago", "silent since …", "never spoke". */
export function describeActivity(entry: ActivityEntry | undefined, silentAfterSeconds: number, now: number): string {
  if (!entry) return "never spoke";
  const seconds = Math.max(0, (now - entry.at) / 1000);
  if (seconds < silentAfterSeconds) return `active ${ago(seconds)}`;
  return `silent since ${timestamp(entry.at)} (${ago(seconds)})`;
}

function ago(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** UTC, to the minute: operators in different time zones read the same thing. */
function timestamp(at: number): string {
  return `${new Date(at).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

export class AgentActivity {
  private readonly entries = new Map<string, ActivityEntry>();
  private readonly log: Logger;
  private readonly now: () => number;
  private loaded = false;
  private dirty = false;
  private persistTimer: NodeJS.Timeout | undefined;
  private checkTimer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: ActivityDeps) {
    this.log = deps.logger.child({ module: "activity" });
    this.now = deps.now ?? Date.now;
    this.registerMetrics();
  }

  private get silentAfterMs(): number {
    return this.deps.config.agents.activity.silentAfterSeconds * 1000;
  }

  /** Reads the file; a corrupted one is a StateError naming it. */
  load(): void {
    const file = this.deps.state.readJson(ACTIVITY_FILE, fileSchema);
    this.entries.clear();
    for (const [name, entry] of Object.entries(file?.agents ?? {})) this.entries.set(name, entry);
    this.loaded = true;
  }

  /** Starts the silence check (only when reports are on). */
  start(): void {
    if (!this.deps.config.agents.activity.report || this.checkTimer) return;
    // Often enough that a report comes at most a quarter of the threshold late, at most once a minute.
    const every = Math.min(60_000, Math.max(500, this.silentAfterMs / 4));
    this.checkTimer = setInterval(() => this.checkSilence(), every);
    this.checkTimer.unref();
  }

  stop(): void {
    if (this.checkTimer) clearInterval(this.checkTimer);
    this.checkTimer = undefined;
    this.flush();
  }

  get(name: string): ActivityEntry | undefined {
    return this.entries.get(name);
  }

  describe(name: string): string {
    return describeActivity(this.entries.get(name), this.deps.config.agents.activity.silentAfterSeconds, this.now());
  }

  /** For the service's event queue: records the event when an agent sent it. */
  observe(event: MatrixEvent): void {
    if (typeof event.sender !== "string" || typeof event.room_id !== "string") return;
    // hive-matrix itself joins agents to the hive rooms, as the agent: memberships say nothing of the agent being alive.
    if (event.type === "m.room.member") return;
    const name = this.deps.agentName(event.sender);
    if (name === undefined) return;
    const now = this.now();
    // The homeserver's clock may run ahead; the inbox replayed after a restart holds older events.
    const at = typeof event.origin_server_ts === "number" ? Math.min(event.origin_server_ts, now) : now;
    const previous = this.entries.get(name);
    if (previous && previous.at > at) return;
    if (previous?.silent && this.deps.config.agents.activity.report) {
      this.deps.report("agent-back", `${name} (silent since ${timestamp(previous.at)})`);
    }
    this.entries.set(name, { at, roomId: event.room_id });
    this.schedule();
  }

  /** Reports agents that went silent since the last check. Public for tests. */
  checkSilence(): void {
    if (!this.deps.config.agents.activity.report) return;
    const now = this.now();
    for (const [name, entry] of this.entries) {
      if (entry.silent || now - entry.at < this.silentAfterMs || !this.deps.isCurrent(name)) continue;
      entry.silent = true;
      this.deps.report("agent-silent", `${name} (last active ${timestamp(entry.at)})`);
      this.schedule();
    }
  }

  /** Writes the file now if anything changed. Never throws: losing activity is not worth a crash. */
  flush(): void {
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = undefined;
    if (!this.dirty || !this.loaded) return;
    this.dirty = false;
    try {
      this.deps.state.writeJson(ACTIVITY_FILE, { version: 1, agents: Object.fromEntries(this.entries) });
    } catch (err) {
      this.log.error(errorFields(err), "could not save agent activity");
    }
  }

  private schedule(): void {
    this.dirty = true;
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => this.flush(), this.deps.persistMs ?? PERSIST_MS);
    this.persistTimer.unref();
  }

  /**
   * One series per agent that has spoken: bounded by the hive's agents (1,000 agents are 1,000
   * series, a few tens of kB per scrape), computed at scrape time so that nothing ticks in between.
   * The count by state is the one to alert on.
   */
  private registerMetrics(): void {
    const registry = this.deps.metrics.registry;
    const entries = this.entries;
    const now = this.now;
    const silentAfter = (): number => this.silentAfterMs;
    const current = (name: string): boolean => this.deps.isCurrent(name);
    registry.removeSingleMetric("hive_matrix_agent_seconds_since_activity");
    registry.removeSingleMetric("hive_matrix_agents_by_activity");
    new Gauge({
      name: "hive_matrix_agent_seconds_since_activity",
      help: "Seconds since each agent last sent an event (agents that never did have no series).",
      labelNames: ["agent"] as const,
      registers: [registry],
      collect() {
        this.reset();
        const t = now();
        for (const [name, entry] of entries) if (current(name)) this.set({ agent: name }, Math.max(0, (t - entry.at) / 1000));
      },
    });
    const names = (): string[] => [...entries.keys()].filter(current);
    new Gauge({
      name: "hive_matrix_agents_by_activity",
      help: "Agents that spoke by whether they were active within agents.activity.silentAfterSeconds (active, silent).",
      labelNames: ["activity"] as const,
      registers: [registry],
      collect() {
        const t = now();
        let active = 0;
        let silent = 0;
        for (const name of names()) {
          const entry = entries.get(name);
          if (entry && t - entry.at < silentAfter()) active++;
          else silent++;
        }
        this.set({ activity: "active" }, active);
        this.set({ activity: "silent" }, silent);
      },
    });
  }
}

/** What surrounds an agent's name in its user ID, per config: asked for every event a hive's rooms send. */
const templates = new WeakMap<Config, { suffix: string; before: string; after: string }>();

function userIdTemplate(config: Config): { suffix: string; before: string; after: string } {
  let template = templates.get(config);
  if (!template) {
    const [before, after = ""] = config.agents.localpart.split("{name}");
    template = { suffix: `:${config.homeserver.domain}`, before, after };
    templates.set(config, template);
  }
  return template;
}

/**
 * The agent name in a user ID of the hive's template (`agent-{name}` → name), when the agent is
 * known to `records`; O(1) per event, unlike scanning every record.
 */
export function agentNameFromUserId(
  config: Config,
  userId: string,
  known: (name: string) => { userId: string } | undefined,
): string | undefined {
  const { suffix, before, after } = userIdTemplate(config);
  if (!userId.startsWith("@") || !userId.endsWith(suffix)) return undefined;
  const localpart = userId.slice(1, -suffix.length);
  if (localpart.length <= before.length + after.length || !localpart.startsWith(before) || !localpart.endsWith(after)) return undefined;
  const name = localpart.slice(before.length, localpart.length - after.length);
  return known(name)?.userId === userId ? name : undefined;
}
