/**
 * Keeps the hive's Space and hive-chat as the config says: reads the room IDs from the state
 * dir, creates what is missing, reads each room's state once, and applies only the difference
 * (see diff.ts). Rooms named by existing files are never replaced on its own: when one is
 * unusable the reconciler says so loudly and changes nothing until an operator decides.
 *
 * Runs, `invite` and `forgetRooms` are serialised, so an operator command never interleaves with a
 * reconcile half-way through.
 */
import { MatrixError } from "matrix-bot-sdk";
import type { Config } from "../config/schema";
import type { Logger } from "../logging";
import { errorFields } from "../logging";
import type { Metrics } from "../metrics";
import type { HomeserverTransport } from "../matrix/transport";
import type { StateStore } from "../store/state-store";
import type { MatrixEvent } from "../store/transactions";
import { actualRoom, unusableReason } from "./actual";
import { createRoomBody, desiredChat, desiredRoom, desiredSpace, inviteReason, roomAlias } from "./desired";
import { diffRoom } from "./diff";
import { roomsMetrics, type RoomsMetrics } from "./metrics";
import { RoomApi } from "./room-api";
import { Relevance } from "./relevance";
import { RoomFiles } from "./room-files";
import type { SpaceChildren } from "./space-children";
import type { ActualRoom, Change, Departure, DesiredMembers, ReconcileReport, RoomKey } from "./types";
import { ROOM_KEYS, ROOM_LABEL } from "./types";

/** What the reconciler needs from the service (a HiveMatrixService satisfies it as it is). */
export interface RoomsDeps {
  config: Config;
  transport: HomeserverTransport;
  botUserId: string;
  state: StateStore;
  logger: Logger;
  metrics: Metrics;
  /** Every operator, those added from chat included; `config.operators` when absent. */
  operators?: { all(): string[] };
  /** The hive's other rooms the Space lists (space-children.ts); none when absent. */
  hiveRooms?: { children(): SpaceChildren };
}

export interface InviteResult {
  userId: string;
  changes: string[];
  /** Labels ("Space", "hive-chat") of the rooms the user was in or invited to already. */
  unchanged: string[];
  problems: string[];
  writes: number;
}

const USER_ID = /^@[^:\s]+:\S+$/;

/** Answers that mean the room cannot be used by the bot (as opposed to a homeserver that is down). */
const UNUSABLE_ERRCODES = ["M_FORBIDDEN", "M_NOT_FOUND", "M_INVALID_PARAM", "M_UNKNOWN"];

function describeError(err: unknown): string {
  if (err instanceof MatrixError) return `${err.errcode}: ${err.error}`;
  return err instanceof Error ? err.message : String(err);
}

export class RoomsReconciler {
  private readonly files: RoomFiles;
  private readonly log: Logger;
  private readonly stats: RoomsMetrics;
  private tail: Promise<unknown> = Promise.resolve();
  private last: ReconcileReport | undefined;
  private ids: Partial<Record<RoomKey, string>> | undefined;
  /** Rooms each alias was moved away from by this instance: moving it from one of them again is a tug of war. */
  private readonly aliasTakenFrom = new Map<string, Set<string>>();
  private readonly relevance: Relevance;

  constructor(private readonly deps: RoomsDeps) {
    this.files = new RoomFiles(deps.state);
    this.log = deps.logger.child({ module: "rooms" });
    this.stats = roomsMetrics(deps.metrics);
    this.relevance = new Relevance(deps.botUserId);
  }

  get lastReport(): ReconcileReport | undefined {
    return this.last;
  }

  get spaceId(): string | undefined {
    return this.knownIds().space;
  }

  get chatId(): string | undefined {
    return this.knownIds().chat;
  }

  /** The configured aliases (`#name:domain`) of the Space and hive-chat; a room without one is left out. */
  get aliases(): Partial<Record<RoomKey, string>> {
    const aliases: Partial<Record<RoomKey, string>> = {};
    for (const key of ROOM_KEYS) {
      const alias = roomAlias(this.deps.config, key);
      if (alias) aliases[key] = alias;
    }
    return aliases;
  }

  /** The rooms `userId` is joined to, as the homeserver says now (not as the last reconcile left them). */
  async joinedRooms(userId: string): Promise<RoomKey[]> {
    const api = new RoomApi(this.deps.transport, this.deps.botUserId, this.log);
    const ids = this.knownIds();
    const joined: RoomKey[] = [];
    for (const key of ROOM_KEYS) {
      const roomId = ids[key];
      if (roomId !== undefined && (await api.membership(roomId, userId)) === "join") joined.push(key);
    }
    return joined;
  }

  /** Whether an appservice event changed something a reconcile of the two rooms owns (see relevance.ts). */
  isRelevant(event: MatrixEvent): boolean {
    return this.isHiveRoom(event.room_id) && this.relevance.isRelevant(event);
  }

  /** Whether `roomId` is the Space or hive-chat, as known now. */
  isHiveRoom(roomId: string | undefined): boolean {
    if (!roomId) return false;
    const ids = this.knownIds();
    return roomId === ids.space || roomId === ids.chat;
  }

  /** One full pass. Never throws: failures end up in the report's `problems` and in the log. */
  reconcile(members: DesiredMembers, reason?: string): Promise<ReconcileReport> {
    return this.exclusive(() => this.run(members, reason));
  }

  /**
   * Invites `userId` into both rooms (unbanning first if needed), also an operator who left:
   * this is how they ask to come back (`!hive invite`). Rooms they are in already are left alone.
   */
  invite(userId: string): Promise<InviteResult> {
    return this.exclusive(() => this.runInvite(userId));
  }

  /**
   * Deletes `space-id` and `hive-chat-id`, so that the next reconcile creates new rooms
   * (`!hive rooms recreate`). The old rooms are left as they are, history included.
   */
  forgetRooms(): Promise<Partial<Record<RoomKey, string>>> {
    return this.exclusive(async () => {
      const previous = { space: this.files.readId("space"), chat: this.files.readId("chat") };
      for (const key of ROOM_KEYS) this.files.removeId(key);
      this.ids = {};
      this.relevance.forget();
      this.log.warn({ previous }, "forgot the hive's rooms; the next reconcile creates new ones");
      return previous;
    });
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn);
    this.tail = result.catch(() => undefined);
    return result;
  }

  private knownIds(): Partial<Record<RoomKey, string>> {
    if (!this.ids) {
      try {
        this.ids = { space: this.files.readId("space"), chat: this.files.readId("chat") };
      } catch {
        return {}; // reported by the next reconcile, which reads the files again
      }
    }
    return this.ids;
  }

  private async run(members: DesiredMembers, reason: string | undefined): Promise<ReconcileReport> {
    const started = Date.now();
    const api = new RoomApi(this.deps.transport, this.deps.botUserId, this.log);
    const report: ReconcileReport = { changes: [], problems: [], writes: 0, at: started, durationMs: 0, ...(reason ? { reason } : {}) };
    let failed = false;
    try {
      await this.pass(api, members, report);
    } catch (err) {
      failed = true;
      const problem = `reconcile failed: ${describeError(err)}`;
      report.problems.push(problem);
      this.log.error({ reason, ...errorFields(err) }, problem);
    }
    report.writes = api.writes;
    report.durationMs = Date.now() - started;
    this.last = report;
    this.stats.problems.set(report.problems.length);
    this.stats.runs.inc({
      outcome: failed ? "failed" : report.problems.length > 0 ? "problems" : report.changes.length > 0 ? "changed" : "clean",
    });
    const summary = {
      reason,
      changes: report.changes.length,
      problems: report.problems.length,
      writes: report.writes,
      durationMs: report.durationMs,
    };
    if (report.changes.length > 0 || report.problems.length > 0) this.log.info(summary, "rooms reconciled");
    else this.log.debug(summary, "rooms reconciled, nothing to change");
    return report;
  }

  private async pass(api: RoomApi, members: DesiredMembers, report: ReconcileReport): Promise<void> {
    const { config, botUserId } = this.deps;
    const ids: Partial<Record<RoomKey, string>> = { space: this.files.readId("space"), chat: this.files.readId("chat") };
    // Shared, so that a room created below is known to isRelevant() even if this run fails later.
    this.ids = ids;
    report.spaceId = ids.space;
    report.chatId = ids.chat;

    const actual: Partial<Record<RoomKey, ActualRoom>> = {};
    const unusable: string[] = [];
    for (const key of ROOM_KEYS) {
      const roomId = ids[key];
      if (roomId === undefined) continue;
      const read = await this.readRoom(api, key, roomId);
      if (typeof read === "string")
        unusable.push(`${ROOM_LABEL[key]}: the room ${roomId} in ${this.files.idPath(key)} is unusable (${read})`);
      else actual[key] = read;
    }
    if (unusable.length > 0) {
      const fix =
        `hive-matrix does not replace rooms on its own: delete ${this.files.idPath("space")} (and ${this.files.idPath("chat")}) ` +
        "to create new rooms, or run `!hive rooms recreate`";
      for (const problem of unusable) {
        const text = `${problem}; ${fix}`;
        report.problems.push(text);
        this.log.error({ spaceId: ids.space, chatId: ids.chat }, text);
      }
      return;
    }

    const inputsBase = { botUserId, members, operators: this.deps.operators?.all(), children: this.deps.hiveRooms?.children() };
    if (ids.space === undefined) {
      const spaceId = await api.createRoom(createRoomBody(desiredSpace(config, inputsBase)));
      this.files.writeId("space", spaceId);
      ids.space = spaceId;
      this.created(report, "space", spaceId);
      actual.space = await this.readRoomOrThrow(api, "space", spaceId);
    }
    const spaceId = ids.space;
    if (ids.chat === undefined) {
      const chatId = await api.createRoom(createRoomBody(desiredChat(config, { ...inputsBase, spaceId })));
      this.files.writeId("chat", chatId);
      ids.chat = chatId;
      this.created(report, "chat", chatId);
      actual.chat = await this.readRoomOrThrow(api, "chat", chatId);
    }
    const chatId = ids.chat;
    report.spaceId = spaceId;
    report.chatId = chatId;

    const left = new Set(this.files.operatorsWhoLeft().keys());
    const departures: Departure[] = [];
    for (const key of ROOM_KEYS) {
      const room = actual[key];
      if (!room) continue;
      const desired = desiredRoom(key, config, { ...inputsBase, spaceId, chatId });
      this.relevance.learn(desired, room);
      const plan = diffRoom(desired, room, left);
      for (const problem of plan.problems) {
        report.problems.push(problem);
        this.log.error({ roomId: room.roomId }, problem);
      }
      departures.push(...plan.departures);
      await this.apply(api, room.roomId, plan.changes, report);
    }
    for (const d of this.files.recordDepartures(departures)) {
      this.log.info(
        { userId: d.userId, how: d.how },
        `operator ${d.userId} ${d.how === "left" ? "left" : `was ${d.how} from`} the ${ROOM_LABEL[d.room]}; ` +
          `not inviting them again until \`!hive invite ${d.userId}\``,
      );
    }
  }

  private created(report: ReconcileReport, key: RoomKey, roomId: string): void {
    const message = `${ROOM_LABEL[key]}: created ${roomId}`;
    report.changes.push(message);
    this.log.info({ roomId, file: this.files.idPath(key) }, message);
  }

  /** The room's actual state, or why the bot cannot use it. Transient failures throw. */
  private async readRoom(api: RoomApi, key: RoomKey, roomId: string): Promise<ActualRoom | string> {
    if (!roomId.startsWith("!")) return `${JSON.stringify(roomId)} is not a room ID`;
    let events: unknown[];
    try {
      events = await api.readState(roomId);
    } catch (err) {
      if (err instanceof MatrixError && err.statusCode < 500 && UNUSABLE_ERRCODES.includes(err.errcode)) return describeError(err);
      throw err;
    }
    const alias = roomAlias(this.deps.config, key);
    const room = actualRoom(roomId, events, alias === undefined ? undefined : await api.resolveAlias(alias));
    return unusableReason(room, this.deps.botUserId) ?? room;
  }

  private async readRoomOrThrow(api: RoomApi, key: RoomKey, roomId: string): Promise<ActualRoom> {
    const read = await this.readRoom(api, key, roomId);
    if (typeof read === "string") throw new Error(`the ${ROOM_LABEL[key]} just created (${roomId}) cannot be read: ${read}`);
    return read;
  }

  private async apply(api: RoomApi, roomId: string, changes: Change[], report: ReconcileReport): Promise<void> {
    // Room state first, in order; then memberships, which are independent of each other, a few at
    // a time: a hive of hundreds of agents joins in a fraction of the time one by one would take.
    const isMember = (c: Change): boolean => c.op === "invite" || c.op === "admit";
    let aliasFailed = false;
    for (const change of changes.filter((c) => !isMember(c))) {
      aliasFailed = await this.applyOne(api, roomId, change, report, aliasFailed);
    }
    const members = changes.filter(isMember);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < members.length) await this.applyOne(api, roomId, members[next++], report, aliasFailed);
    };
    await Promise.all(Array.from({ length: Math.min(this.deps.config.agents.concurrency, members.length) }, worker));
  }

  /** Applies one change, recording it or its problem in the report; returns whether the alias has failed so far. */
  private async applyOne(
    api: RoomApi,
    roomId: string,
    change: Change,
    report: ReconcileReport,
    aliasFailedBefore: boolean,
  ): Promise<boolean> {
    let aliasFailed = aliasFailedBefore;
    if (change.op === "state" && change.requiresAlias && aliasFailed) {
      const problem = `${change.message}: skipped, the alias does not point to the room`;
      report.problems.push(problem);
      this.log.error({ roomId }, problem);
      return aliasFailed;
    }
    if (change.op === "alias" && change.from && this.aliasTakenFrom.get(change.alias)?.has(change.from)) {
      // It was moved back after we took it: another service (a second hive on this homeserver,
      // an old deployment still running) wants it too. Moving it again would never end.
      aliasFailed = true;
      const problem =
        `${ROOM_LABEL[change.room]}: alias ${change.alias} was moved back to ${change.from} after this service took it; ` +
        `something else manages it too. Not moving it again: stop the other service, delete the alias, or change rooms.${change.room}.alias`;
      report.problems.push(problem);
      this.log.error({ roomId }, problem);
      return aliasFailed;
    }
    try {
      await this.applyChange(api, roomId, change);
      this.relevance.applied(roomId, change);
      if (change.op === "alias" && change.from) {
        const from = this.aliasTakenFrom.get(change.alias) ?? new Set<string>();
        this.aliasTakenFrom.set(change.alias, from.add(change.from));
      }
    } catch (err) {
      if (change.op === "alias") aliasFailed = true;
      const problem =
        change.op === "alias" && change.from
          ? `${ROOM_LABEL[change.room]}: alias ${change.alias} points to another room (${change.from}) and the bot cannot move it ` +
            `(${describeError(err)}); delete the alias or change rooms.${change.room}.alias`
          : `could not apply "${change.message}": ${describeError(err)}`;
      report.problems.push(problem);
      this.log.error({ roomId, ...errorFields(err) }, problem);
      return aliasFailed;
    }
    report.changes.push(change.message);
    const drift = change.op === "state" && change.drift;
    this.log[drift ? "warn" : "info"]({ roomId }, drift ? `drift repaired: ${change.message}` : change.message);
    return aliasFailed;
  }

  private async applyChange(api: RoomApi, roomId: string, change: Change): Promise<void> {
    switch (change.op) {
      case "state":
        return api.putState(roomId, change.type, change.stateKey, change.content, change.kind);
      case "alias":
        return api.setAlias(change.alias, roomId, change.from);
      case "invite":
        return api.invite(roomId, change.userId, inviteReason(this.deps.config));
      case "admit":
        // hive-chat lets members of the Space in (restricted), and the Space's joins were applied
        // just before: a direct join saves one membership event per agent. Refused (not in the
        // Space yet, or a server without restricted joins): invite, then join.
        if (change.invite && change.room === "chat") {
          try {
            return await api.join(roomId, change.userId);
          } catch (err) {
            if (!(err instanceof MatrixError && err.statusCode === 403)) throw err;
          }
        }
        if (change.invite) await api.invite(roomId, change.userId);
        return api.join(roomId, change.userId);
      case "leave":
        return api.leave(roomId, change.userId);
    }
  }

  private async runInvite(userId: string): Promise<InviteResult> {
    const api = new RoomApi(this.deps.transport, this.deps.botUserId, this.log);
    const result: InviteResult = { userId, changes: [], unchanged: [], problems: [], writes: 0 };
    if (!USER_ID.test(userId)) {
      result.problems.push(`${JSON.stringify(userId)} is not a Matrix user ID like @alice:${this.deps.config.homeserver.domain}`);
      return result;
    }
    if (this.files.clearDeparture(userId)) this.log.info({ userId }, `${userId} is no longer remembered as having left`);
    const ids = { space: this.files.readId("space"), chat: this.files.readId("chat") };
    if (ids.space === undefined && ids.chat === undefined) {
      result.problems.push("the rooms do not exist yet; the next reconcile creates them and invites the operators");
    }
    for (const key of ROOM_KEYS) {
      const roomId = ids[key];
      if (roomId === undefined) continue;
      const label = ROOM_LABEL[key];
      try {
        const membership = await api.membership(roomId, userId);
        if (membership === "join" || membership === "invite") {
          result.unchanged.push(label);
          continue;
        }
        if (membership === "ban") await api.unban(roomId, userId);
        await api.invite(roomId, userId, inviteReason(this.deps.config));
        const message = `${label}: ${userId} invited${membership === "ban" ? " (ban lifted)" : ""}`;
        result.changes.push(message);
        this.log.info({ roomId, userId }, message);
      } catch (err) {
        const problem = `${label}: could not invite ${userId}: ${describeError(err)}`;
        result.problems.push(problem);
        this.log.error({ roomId, userId, ...errorFields(err) }, problem);
      }
    }
    result.writes = api.writes;
    return result;
  }
}
