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
 *
 * An update that must be on disk before the caller goes on (`durable`) is appended as one line to
 * `agents.journal`, opened with O_DSYNC: its cost does not grow with the number of agents, where
 * rewriting the whole file for each of them would (a thousand agents onboarding make two such
 * updates each). The next rewrite of `agents.json` records the last journal line it covers and
 * empties the journal; loading replays the lines after that one.
 */
import { closeSync, constants, fsyncSync, ftruncateSync, openSync } from "node:fs";
import { z } from "zod";
import { writeAllSync } from "../store/atomic-file";
import { readJournalLines } from "../store/journal-lines";
import { StateError, type StateStore } from "../store/state-store";

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

const fileSchema = z.object({
  version: z.literal(1),
  agents: z.record(recordSchema),
  /** The last journal line this file includes: later lines are replayed on load. */
  journalSeq: z.number().int().optional(),
});
const journalLineSchema = z.object({ seq: z.number().int(), name: z.string(), record: recordSchema });
export const AGENTS_FILE = "agents.json";
export const AGENTS_JOURNAL = "agents.journal";

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
  /**
   * Each record's line of `agents.json`, made when the record changes: a rewrite while a thousand
   * agents onboard serialises only the few that changed since the last one, not all of them.
   */
  private readonly lines = new Map<string, string>();
  /** Records by state, kept as records change: the gauge asks after every agent's run. */
  private readonly counts = new Map<AgentState, number>();
  private timer: NodeJS.Timeout | undefined;
  /** Records changed since the file was last written. */
  private dirty = false;
  /** The last journal line written (or replayed), and the journal's descriptor once opened. */
  private journalSeq = 0;
  private journalFd: number | undefined;
  /** Nothing is written before the file was read: an empty map must never overwrite real records. */
  private loaded = false;

  constructor(
    private readonly state: StateStore,
    private readonly onError: (err: unknown) => void,
    private readonly debounceMs = 1000,
  ) {}

  /** Loads the file and replays the journal; a corrupted file is an error naming it (StateError), never a silent reset. */
  load(): void {
    const file = this.state.readJson(AGENTS_FILE, fileSchema);
    this.records.clear();
    this.lines.clear();
    this.counts.clear();
    this.sorted = undefined;
    for (const [name, record] of Object.entries(file?.agents ?? {})) this.put(name, record);
    this.journalSeq = file?.journalSeq ?? 0;
    const covered = this.journalSeq;
    const path = this.state.path(AGENTS_JOURNAL);
    const journal = readJournalLines(path, journalLineSchema, "restore the file or remove it deliberately");
    // Its caller never went on; the next append must not be glued to it.
    if (journal.torn) this.dropTornTail(path, journal.wholeBytes);
    for (const { seq, name, record } of journal.entries) {
      if (seq <= covered) continue;
      this.put(name, record);
      this.journalSeq = Math.max(this.journalSeq, seq);
      this.dirty = true;
    }
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
    if (previous && sameRecord(previous, next)) return previous;
    if (!previous) this.sorted = undefined;
    this.put(name, next);
    this.dirty = true;
    if (options.durable && this.loaded) this.append(name, next);
    this.schedule();
    return next;
  }

  countsByState(): Record<AgentState, number> {
    return Object.fromEntries(AGENT_STATES.map((s) => [s, this.counts.get(s) ?? 0])) as Record<AgentState, number>;
  }

  /** The one place a record is stored: keeps the counts and the cached line in step with it. */
  private put(name: string, record: AgentRecord): void {
    const previous = this.records.get(name);
    if (previous) this.counts.set(previous.state, (this.counts.get(previous.state) ?? 0) - 1);
    this.counts.set(record.state, (this.counts.get(record.state) ?? 0) + 1);
    this.records.set(name, record);
    this.lines.delete(name);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (!this.loaded || !this.dirty) return;
    const lines = this.entries().map(([name, record]) => {
      let line = this.lines.get(name);
      if (line === undefined) this.lines.set(name, (line = `${JSON.stringify(name)}: ${JSON.stringify(record)}`));
      return line;
    });
    this.state.writeText(AGENTS_FILE, `{"version": 1, "journalSeq": ${this.journalSeq}, "agents": {\n${lines.join(",\n")}\n}}\n`);
    this.dirty = false;
    // Everything in the journal is in the file now (which is on disk): a crash before this line
    // only leaves lines that loading skips.
    if (this.journalFd !== undefined) ftruncateSync(this.journalFd, 0);
  }

  /** Closes the journal (at stop, after the last flush). */
  close(): void {
    if (this.journalFd !== undefined) closeSync(this.journalFd);
    this.journalFd = undefined;
  }

  /** Cuts the journal back to its last whole line, durably, before anything is appended to it. */
  private dropTornTail(path: string, length: number): void {
    let fd: number | undefined;
    try {
      fd = openSync(path, constants.O_WRONLY | constants.O_NOFOLLOW);
      ftruncateSync(fd, length);
      fsyncSync(fd);
    } catch (err) {
      throw new StateError(path, `cannot drop the line a crash cut off (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  /** One line, on disk when this returns. */
  private append(name: string, record: AgentRecord): void {
    const path = this.state.path(AGENTS_JOURNAL);
    try {
      this.journalFd ??= openSync(
        path,
        constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC | constants.O_NOFOLLOW,
        0o600,
      );
      writeAllSync(this.journalFd, Buffer.from(`${JSON.stringify({ seq: ++this.journalSeq, name, record })}\n`));
    } catch (err) {
      throw new StateError(path, `cannot write (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
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
