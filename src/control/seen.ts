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
 * The set is bounded (oldest IDs forgotten first); a few thousand covers any realistic replay
 * window, since redelivery concerns recent events only.
 */
import { z } from "zod";
import type { StateStore } from "../store/state-store";

export const SEEN_FILE = "commands-seen.json";

const seenSchema = z.object({ version: z.literal(1), eventIds: z.array(z.string()) });

export class SeenCommands {
  private readonly ids = new Set<string>();
  private order: string[] = [];

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
  }

  has(eventId: string): boolean {
    return this.ids.has(eventId);
  }

  /** Remembers `eventId` durably. Throws (and remembers nothing) when the file cannot be written. */
  add(eventId: string): void {
    if (this.ids.has(eventId)) return;
    const next = [...this.order, eventId];
    const forgotten = next.length > this.capacity ? next.splice(0, next.length - this.capacity) : [];
    this.state.writeJson(SEEN_FILE, { version: 1, eventIds: next });
    this.order = next;
    forgotten.forEach((id) => this.ids.delete(id));
    this.ids.add(eventId);
  }
}
