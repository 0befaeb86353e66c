/**
 * The per-agent state machine, persisted in `<stateDir>/agents.json`:
 *   pending → registered → token_written → joined, or failed (with the reason), or removed.
 * The homeserver and the token files are the truth and every run re-derives from them, so a lost
 * progress update costs one extra check, never a duplicate. What cannot be re-derived (an agent
 * added or removed by an operator command, agents known before a removal) is written at once.
 *
 * Progress is group-committed: however many records change, the file is rewritten (and synced) at
 * most once per `debounceMs`, and an update that changes nothing but the timestamp writes nothing,
 * so a restart that finds every agent as it left it does not rewrite the file at all. The file
 * holds one agent per line, which keeps it readable and cheap to write for a thousand agents.
 */
import { z } from "zod";
import type { StateStore } from "../store/state-store";

export const AGENT_STATES = ["pending", "registered", "token_written", "joined", "failed", "removed"] as const;
export type AgentState = (typeof AGENT_STATES)[number];

const recordSchema = z.object({
  userId: z.string(),
  state: z.enum(AGENT_STATES),
  reason: z.string().optional(),
  /** Where the agent came from; "command" agents persist until removed by command. */
  source: z.enum(["discovered", "config", "command"]),
  /** Removed by an operator: not provisioned again until added back. */
  disabled: z.boolean().optional(),
  /**
   * Whose the Matrix account is to act on: "created" by hive-matrix's own /register, or "adopted"
   * because it was on agents.adopt. Without it an existing account is never logged in to, logged
   * out or written anywhere (manager.ts, accountTrust).
   */
  account: z.enum(["created", "adopted"]).optional(),
  /** A /register for this agent was sent and its answer not yet recorded (a crash or lost reply may hide a success). */
  registering: z.boolean().optional(),
  /** The agent must still leave the hive rooms (removal not yet reconciled). */
  leaving: z.boolean().optional(),
  tokenWrittenAt: z.number().optional(),
  createdAt: z.number(),
  updatedAt: z.number(),
});
export type AgentRecord = z.infer<typeof recordSchema>;

const fileSchema = z.object({ version: z.literal(1), agents: z.record(recordSchema) });
export const AGENTS_FILE = "agents.json";

/** Every field says something except `updatedAt`: it alone changing is no change. All fields are scalars. */
function sameRecord(a: AgentRecord, b: AgentRecord): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)] as (keyof AgentRecord)[]);
  keys.delete("updatedAt");
  return [...keys].every((key) => a[key] === b[key]);
}

export class AgentRecords {
  private readonly records = new Map<string, AgentRecord>();
  /** Names in order, kept while no name is added: callers list the records far more often than agents appear. */
  private sorted: string[] | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Records changed since the file was last written. */
  private dirty = false;
  /** Nothing is written before the file was read: an empty map must never overwrite real records. */
  private loaded = false;

  constructor(
    private readonly state: StateStore,
    private readonly onError: (err: unknown) => void,
    private readonly debounceMs = 1000,
  ) {}

  /** Loads the file; a corrupted file is an error naming it (StateError), never a silent reset. */
  load(): void {
    const file = this.state.readJson(AGENTS_FILE, fileSchema);
    this.records.clear();
    this.sorted = undefined;
    for (const [name, record] of Object.entries(file?.agents ?? {})) this.records.set(name, record);
    this.loaded = true;
  }

  get(name: string): AgentRecord | undefined {
    return this.records.get(name);
  }

  /** Every record, by name. */
  entries(): [string, AgentRecord][] {
    this.sorted ??= [...this.records.keys()].sort((a, b) => a.localeCompare(b));
    return this.sorted.map((name) => [name, this.records.get(name) as AgentRecord]);
  }

  /** Updates (or creates) a record. `durable` writes now; otherwise the write is coalesced. */
  set(name: string, patch: Partial<AgentRecord> & Pick<AgentRecord, "userId">, options: { durable?: boolean } = {}): AgentRecord {
    const now = Date.now();
    const previous = this.records.get(name);
    const next: AgentRecord = {
      state: "pending",
      source: "discovered",
      createdAt: now,
      ...previous,
      ...patch,
      updatedAt: now,
    };
    if (next.state !== "failed") delete next.reason;
    if (previous && sameRecord(previous, next)) {
      if (options.durable) this.flush();
      return previous;
    }
    if (!previous) this.sorted = undefined;
    this.records.set(name, next);
    this.dirty = true;
    if (options.durable) this.flush();
    else this.schedule();
    return next;
  }

  countsByState(): Record<AgentState, number> {
    const counts = Object.fromEntries(AGENT_STATES.map((s) => [s, 0])) as Record<AgentState, number>;
    for (const record of this.records.values()) counts[record.state]++;
    return counts;
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.loaded || !this.dirty) return;
    const lines = this.entries().map(([name, record]) => `${JSON.stringify(name)}: ${JSON.stringify(record)}`);
    this.state.writeText(AGENTS_FILE, `{"version": 1, "agents": {\n${lines.join(",\n")}\n}}\n`);
    this.dirty = false;
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      try {
        this.flush();
      } catch (err) {
        this.onError(err);
      }
    }, this.debounceMs);
    this.timer.unref();
  }
}
