/**
 * What the rooms keep in the state dir: the two room IDs (`space-id`, `hive-chat-id`, one line
 * each, names fixed by docs/architecture.md) and `rooms.json`, the operators who left and are not to be
 * invited again until someone asks. A present, non-empty ID file is trusted as it is, also when an
 * older deployment wrote it; it is only ever written after this service created the room.
 */
import { z } from "zod";
import type { StateStore } from "../store/state-store";
import type { Departure, RoomKey } from "./types";
import { ROOM_ID_FILE } from "./types";

const ROOMS_FILE = "rooms.json";

const departureSchema = z.object({
  room: z.enum(["space", "chat"]),
  how: z.enum(["left", "kicked", "banned"]),
  at: z.number(),
});

const roomsFileSchema = z.object({
  operatorsWhoLeft: z.record(z.string(), departureSchema).default({}),
});

export type RecordedDeparture = z.infer<typeof departureSchema>;

export class RoomFiles {
  constructor(readonly state: StateStore) {}

  readId(room: RoomKey): string | undefined {
    return this.state.readText(ROOM_ID_FILE[room]);
  }

  writeId(room: RoomKey, roomId: string): void {
    this.state.writeText(ROOM_ID_FILE[room], roomId);
  }

  removeId(room: RoomKey): void {
    this.state.remove(ROOM_ID_FILE[room]);
  }

  idPath(room: RoomKey): string {
    return this.state.path(ROOM_ID_FILE[room]);
  }

  operatorsWhoLeft(): Map<string, RecordedDeparture> {
    const file = this.state.readJson(ROOMS_FILE, roomsFileSchema);
    return new Map(Object.entries(file?.operatorsWhoLeft ?? {}));
  }

  /** Adds departures not recorded yet; writes the file only when something was added. */
  recordDepartures(departures: readonly Departure[], at = Date.now()): Departure[] {
    const known = this.operatorsWhoLeft();
    const added: Departure[] = [];
    for (const d of departures) {
      if (known.has(d.userId)) continue;
      known.set(d.userId, { room: d.room, how: d.how, at });
      added.push(d);
    }
    if (added.length > 0) this.write(known);
    return added;
  }

  /** Forgets that `userId` left; true when they had. */
  clearDeparture(userId: string): boolean {
    const known = this.operatorsWhoLeft();
    if (!known.delete(userId)) return false;
    this.write(known);
    return true;
  }

  private write(known: Map<string, RecordedDeparture>): void {
    this.state.writeJson(ROOMS_FILE, { operatorsWhoLeft: Object.fromEntries(known) });
  }
}
