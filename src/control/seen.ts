/**
 * The command events already handled, so that a command runs at most once although the
 * homeserver may deliver its event again (a new transaction after it lost track, the inbox
 * replayed after a crash, a restart).
 *
 * At most once, not at least once: the ID is written (atomically, fsynced) BEFORE the command
 * runs. A crash in between loses that command, and the operator, who sees no reply, sends it
 * again; the other order could run `agent remove --yes` or `agent rotate --yes` twice, or invite
 * twice, which is worse than asking for a resend.
 *
 * Admitted commands stay listed as `pending` until they finished (replied). Those still pending
 * at the next start were cut off by a crash: they are not run again, but the operator gets a reply
 * saying so, so that every command gets exactly one answer.
 *
 * The set is bounded (oldest IDs forgotten first); a few thousand covers any realistic replay
 * window, since redelivery concerns recent events only.
 */
import { z } from "zod";
import type { StateStore } from "../store/state-store";

export const SEEN_FILE = "commands-seen.json";

const targetSchema = z.object({
  roomId: z.string(),
  eventId: z.string(),
  sender: z.string(),
  threadId: z.string().optional(),
  /** The progress message shown for the command, if any: the answer to an interrupted command replaces it. */
  progressEventId: z.string().optional(),
});
export type PendingCommand = z.infer<typeof targetSchema>;

const seenSchema = z.object({ version: z.literal(1), eventIds: z.array(z.string()), pending: z.array(targetSchema).optional() });

export class SeenCommands {
  private readonly ids = new Set<string>();
  private order: string[] = [];
  private pending: PendingCommand[] = [];
  private interruptedAtLoad: PendingCommand[] = [];

  constructor(
    private readonly state: StateStore,
    readonly capacity = 3000,
  ) {}

  /** Reads the file; a corrupted one is a StateError naming it (never silently reset: commands would run again). */
  load(): void {
    const saved = this.state.readJson(SEEN_FILE, seenSchema);
    this.ids.clear();
    this.order = (saved?.eventIds ?? []).slice(-this.capacity);
    this.order.forEach((id) => this.ids.add(id));
    this.interruptedAtLoad = saved?.pending ?? [];
    this.pending = [...this.interruptedAtLoad];
  }

  /** Commands admitted before the last stop that never finished; `finish` each once it is answered. */
  interrupted(): PendingCommand[] {
    return [...this.interruptedAtLoad];
  }

  /** Remembers the progress message of a pending command. */
  setProgress(eventId: string, progressEventId: string): void {
    if (!this.pending.some((p) => p.eventId === eventId)) return;
    const pending = this.pending.map((p) => (p.eventId === eventId ? { ...p, progressEventId } : p));
    this.state.writeJson(SEEN_FILE, { version: 1, eventIds: this.order, pending });
    this.pending = pending;
  }

  /** The command was answered: no longer pending. */
  finish(eventId: string): void {
    if (!this.pending.some((p) => p.eventId === eventId)) return;
    const pending = this.pending.filter((p) => p.eventId !== eventId);
    this.state.writeJson(SEEN_FILE, { version: 1, eventIds: this.order, pending });
    this.pending = pending;
    this.interruptedAtLoad = this.interruptedAtLoad.filter((p) => p.eventId !== eventId);
  }

  has(eventId: string): boolean {
    return this.ids.has(eventId);
  }

  /** Remembers `eventId` durably, as pending when `target` is given. Throws (and remembers nothing) when the file cannot be written. */
  add(eventId: string, target?: PendingCommand): void {
    if (this.ids.has(eventId)) return;
    const next = [...this.order, eventId];
    const forgotten = next.length > this.capacity ? next.splice(0, next.length - this.capacity) : [];
    const pending = target ? [...this.pending, target] : this.pending;
    this.state.writeJson(SEEN_FILE, { version: 1, eventIds: next, pending });
    this.order = next;
    this.pending = pending;
    forgotten.forEach((id) => this.ids.delete(id));
    this.ids.add(eventId);
  }
}
