/**
 * Who may command the hive: the config's `operators`, plus operators added from chat
 * (`!hive operator add`), kept in `<stateDir>/operators.json` (0600, written atomically at once:
 * an operator added must survive a crash a second later). Config operators are fixed by the
 * config file and cannot be removed from chat.
 */
import { z } from "zod";
import type { Config } from "./config/schema";
import type { StateStore } from "./store/state-store";

export const OPERATORS_FILE = "operators.json";

const entrySchema = z.object({ addedBy: z.string(), at: z.number() });
const fileSchema = z.object({ version: z.literal(1), operators: z.record(entrySchema) });

export type RuntimeOperator = z.infer<typeof entrySchema>;

export interface OperatorEntry {
  userId: string;
  source: "config" | "command";
  addedBy?: string;
  at?: number;
}

export class Operators {
  private readonly added = new Map<string, RuntimeOperator>();
  private loaded = false;

  constructor(
    private readonly config: Config,
    private readonly state: StateStore,
  ) {}

  /** Reads the file; a corrupted one is a StateError naming it, never a silent reset. */
  load(): void {
    const file = this.state.readJson(OPERATORS_FILE, fileSchema);
    this.added.clear();
    for (const [userId, entry] of Object.entries(file?.operators ?? {})) this.added.set(userId, entry);
    this.loaded = true;
  }

  isConfigured(userId: string): boolean {
    return this.config.operators.includes(userId);
  }

  isOperator(userId: string): boolean {
    return this.isConfigured(userId) || this.added.has(userId);
  }

  /** Every operator's user ID: the config's first, in its order, then the added ones by time. */
  all(): string[] {
    return this.list().map((o) => o.userId);
  }

  list(): OperatorEntry[] {
    const configured = this.config.operators.map((userId): OperatorEntry => ({ userId, source: "config" }));
    const added = [...this.added.entries()]
      .filter(([userId]) => !this.isConfigured(userId))
      .sort(([, a], [, b]) => a.at - b.at)
      .map(([userId, e]): OperatorEntry => ({ userId, source: "command", addedBy: e.addedBy, at: e.at }));
    return [...configured, ...added];
  }

  /** Adds an operator; false when they are one already (nothing is written then). */
  add(userId: string, addedBy: string, at = Date.now()): boolean {
    if (this.isOperator(userId)) return false;
    const next = new Map(this.added).set(userId, { addedBy, at });
    this.write(next);
    this.added.set(userId, { addedBy, at });
    return true;
  }

  /** Removes an operator added from chat; false when there is none by that ID. Config operators stay. */
  remove(userId: string): boolean {
    if (!this.added.has(userId) || this.isConfigured(userId)) return false;
    const next = new Map(this.added);
    next.delete(userId);
    this.write(next);
    this.added.delete(userId);
    return true;
  }

  /** Written before memory changes: an add or remove that could not be saved did not happen. */
  private write(entries: Map<string, RuntimeOperator>): void {
    if (!this.loaded) throw new Error("operators.json was not loaded; refusing to overwrite it");
    this.state.writeJson(OPERATORS_FILE, { version: 1, operators: Object.fromEntries(entries) });
  }
}
