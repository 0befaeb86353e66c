/**
 * The control room as one component the service wires in: it finds or creates the room, watches
 * its encryption, hands room messages to the command processor, and owns the notifier for the
 * bot's own reports. Setting the room up never stops the service: a failure is logged and retried,
 * and the rest of the hive keeps working without commands meanwhile.
 */
import type { Config } from "../config/schema";
import { errorFields, type Logger } from "../logging";
import type { Metrics } from "../metrics";
import type { StateStore } from "../store/state-store";
import type { MatrixEvent } from "../store/transactions";
import type { HiveApi } from "./api";
import { Notifier, type ReportKind } from "./notifier";
import { CommandProcessor, type Outcome } from "./processor";
import { code, para, r, type Rich } from "./render";
import { Replies, type MessageClient } from "./replies";
import { CONTROL_ROOM_FILE, isEncrypted, locateControlRoom, reconcileOperators, type LocatedRoom, type RoomClient } from "./room";
import { SeenCommands } from "./seen";
import { PREFIX, type CommandDef } from "./table";

export { CommandError } from "./api";
export type { AgentState, AgentView, HiveApi, HiveStatus, ProgressSink, SyncReport } from "./api";
export type { ReportKind } from "./notifier";
export type { Outcome } from "./processor";
export { appserviceUserPredicate } from "./senders";

export interface ControlRoomDeps {
  /** The bot's HiveMatrixClient. */
  bot: RoomClient & MessageClient;
  botUserId: string;
  state: StateStore;
  config: Config;
  logger: Logger;
  metrics: Metrics;
  api: HiveApi;
  /** Who may command and is invited into the control room; `config.operators` when absent. */
  operators?: { isOperator(userId: string): boolean; all(): string[] };
  /** True for the bot and every user in the appservice's namespace (see appserviceUserPredicate). */
  isAppserviceUser(userId: string): boolean;
  /** Tests: another command table, faster edits and retries, outcome hook. */
  table?: readonly CommandDef[];
  editIntervalMs?: number;
  retryDelayMs?: (attempt: number) => number;
  onOutcome?: (eventId: string | undefined, outcome: Outcome) => void;
}

/** 30 s, 1 min, 2 min … at most 10 min between attempts to set the room up. */
function retryDelay(attempt: number): number {
  return Math.min(600_000, 30_000 * 2 ** Math.min(attempt, 5));
}

/** Event types held while the room is not set up yet, and how many. */
const EARLY_TYPES = new Set(["m.room.message", "m.room.encryption", "m.room.encrypted"]);
const MAX_EARLY = 200;

/** Encrypted messages get the warning again at most this often. */
const ENCRYPTED_REMINDER_MS = 10 * 60_000;

export class ControlRoom {
  readonly notifier: Notifier;
  private readonly logger: Logger;
  private readonly replies: Replies;
  private readonly seen: SeenCommands;
  private readonly processor: CommandProcessor;
  private readonly isHiveUser: (userId: string) => boolean;
  private room: LocatedRoom | undefined;
  private encrypted = false;
  private lastEncryptionWarning = 0;
  private retryTimer: NodeJS.Timeout | undefined;
  private attempts = 0;
  private settingUp: Promise<boolean> | undefined;
  private stopped = false;
  private readonly early: MatrixEvent[] = [];
  /** Whether dropping held events was logged since the room was last ready. */
  private dropWarned = false;

  constructor(private readonly deps: ControlRoomDeps) {
    this.logger = deps.logger.child({ module: "control" });
    this.isHiveUser = (userId) => userId === deps.botUserId || deps.isAppserviceUser(userId);
    this.replies = new Replies(deps.bot, this.logger, deps.editIntervalMs);
    this.seen = new SeenCommands(deps.state);
    const operators = deps.operators;
    this.processor = new CommandProcessor({
      api: deps.api,
      config: deps.config,
      logger: this.logger,
      replies: this.replies,
      seen: this.seen,
      isAppserviceUser: this.isHiveUser,
      controlRoomId: () => this.room?.roomId,
      isOperator: operators ? (userId) => operators.isOperator(userId) : undefined,
      metrics: deps.metrics,
      table: deps.table,
      onOutcome: deps.onOutcome,
    });
    this.notifier = new Notifier({
      intervalSeconds: deps.config.control.notifyIntervalSeconds,
      logger: this.logger,
      send: (message) => (this.room ? this.send(message) : undefined),
    });
  }

  /** The control room's ID once it is set up. */
  get roomId(): string | undefined {
    return this.room?.roomId;
  }

  /**
   * Loads the handled-commands file (a corrupted one throws a StateError naming it), then sets up
   * the room. Resolves true when the room is ready; false when setting it up failed and a retry is
   * scheduled. Call after the service's startup, before events are handled.
   */
  async start(): Promise<boolean> {
    this.seen.load();
    return this.setUp();
  }

  /** For service.onEvent. Never throws; a command runs after the ones before it, without holding up other handlers. */
  handleEvent(event: MatrixEvent): Promise<void> | void {
    // Nearly every event is in another room: answered without a promise (the event queue then
    // goes on without a round through the microtask queue).
    if (this.stopped || (this.room && event.room_id !== this.room.roomId)) return;
    return this.handle(event);
  }

  private async handle(event: MatrixEvent): Promise<void> {
    try {
      if (!this.room) {
        if (this.isInviteForBot(event)) void this.setUp();
        this.holdEarly(event);
        return;
      }
      await this.dispatch(event);
    } catch (err) {
      this.logger.error({ eventId: event.event_id, ...errorFields(err) }, "control room: handling an event failed");
    }
  }

  /**
   * Events can arrive before the room is set up (the inbox replayed at startup, a retry pending);
   * room messages among them are kept, boundedly, and handled once the room is known, so that a
   * command accepted by the service is not silently lost.
   */
  private holdEarly(event: MatrixEvent): void {
    if (!EARLY_TYPES.has(event.type)) return;
    this.early.push(event);
    if (this.early.length > MAX_EARLY) this.dropEarly(this.early.splice(0, this.early.length - MAX_EARLY), "more arrived than are held");
  }

  /** Held events that will not be handled: counted, and logged once per batch, since commands may be among them. */
  private dropEarly(events: MatrixEvent[], why: string): void {
    if (events.length === 0) return;
    this.deps.metrics.eventsDropped.inc({ reason: "control_room_not_ready" }, events.length);
    if (this.dropWarned) return;
    this.dropWarned = true;
    this.logger.warn(
      { dropped: events.length, oldest: events[0]?.event_id },
      `room messages held until the control room is set up were dropped (${why}); commands among them get no answer and must be sent again`,
    );
  }

  private async dispatch(event: MatrixEvent): Promise<void> {
    if (!this.room || event.room_id !== this.room.roomId) return;
    const recentlyWarned = Date.now() - this.lastEncryptionWarning < ENCRYPTED_REMINDER_MS;
    if (event.type === "m.room.encryption" && event.state_key === "") {
      // Warned already at startup when the room was encrypted then (an early event may repeat that news).
      const news = !this.encrypted || !recentlyWarned;
      this.encrypted = true;
      if (news) await this.warnEncrypted();
      return;
    }
    if (event.type === "m.room.encrypted" && typeof event.sender === "string" && !this.isHiveUser(event.sender)) {
      if (!recentlyWarned) await this.warnEncrypted();
      return;
    }
    await this.processor.handleEvent(event);
  }

  /** Queues a report for the control room (summarised, rate-limited). */
  report(kind: ReportKind, text: string): void {
    this.notifier.report(kind, text);
  }

  /** What setting up the room and inviting its operators needs; the operator list as it is now. */
  private roomDeps() {
    return {
      client: this.deps.bot,
      botUserId: this.deps.botUserId,
      state: this.deps.state,
      config: this.deps.config,
      logger: this.logger,
      operators: this.deps.operators?.all(),
    };
  }

  /** Invites operators added since the room was set up (and raises their power in a room the bot made). */
  async refreshOperators(): Promise<void> {
    const room = this.room;
    if (!room) return;
    const deps = this.roomDeps();
    await reconcileOperators(deps, room);
  }

  /** Resolves once every admitted command has run (tests, shutdown). */
  idle(): Promise<void> {
    return this.processor.idle();
  }

  /** Lets running commands finish, sends queued reports, and stops retrying. Later events are ignored. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.processor.idle();
    await this.notifier.stop();
    this.dropWarned = false;
    this.dropEarly(this.early.splice(0), "hive-matrix stopped first");
  }

  private isInviteForBot(event: MatrixEvent): boolean {
    return (
      event.type === "m.room.member" &&
      event.state_key === this.deps.botUserId &&
      event.content?.membership === "invite" &&
      this.deps.config.control.room !== ""
    );
  }

  private setUp(): Promise<boolean> {
    this.settingUp ??= this.trySetUp().finally(() => {
      this.settingUp = undefined;
    });
    return this.settingUp;
  }

  private async trySetUp(): Promise<boolean> {
    if (this.room || this.stopped) return this.room !== undefined;
    const deps = this.roomDeps();
    try {
      const room = await locateControlRoom(deps);
      await reconcileOperators(deps, room);
      this.encrypted = await isEncrypted(this.deps.bot, room.roomId);
      this.room = room;
      this.attempts = 0;
      this.dropWarned = false;
      this.logger.info({ roomId: room.roomId, origin: room.origin, encrypted: this.encrypted }, "control room ready");
      if (this.encrypted) await this.warnEncrypted();
      await this.answerInterrupted();
      const early = this.early.splice(0);
      for (const event of early) await this.handleEvent(event);
      void this.notifier.flush();
      return true;
    } catch (err) {
      const delay = (this.deps.retryDelayMs ?? retryDelay)(this.attempts++);
      this.logger.error(
        { ...errorFields(err), retryInSeconds: Math.round(delay / 1000) },
        `control room not available, commands are off until it is: ${err instanceof Error ? err.message : String(err)}`,
      );
      if (!this.stopped) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          void this.setUp();
        }, delay);
        this.retryTimer.unref();
      }
      return false;
    }
  }

  /** Commands cut off by a crash get one reply saying so; they are not run again (see seen.ts). */
  private async answerInterrupted(): Promise<void> {
    for (const target of this.seen.interrupted()) {
      try {
        if (target.roomId === this.room?.roomId) {
          const message = para(
            "hive-matrix was restarted while this command was running, so it may be half done. It was not run again: check with ",
            code(`${PREFIX} agents`),
            " or ",
            code(`${PREFIX} status`),
            " and send it again if needed.",
          );
          // The progress message, if one was shown, becomes the answer; otherwise a new reply.
          if (target.progressEventId) await this.replies.edit(target.roomId, target.progressEventId, message);
          else await this.replies.notice(target.roomId, message, target);
        }
        this.seen.finish(target.eventId);
      } catch (err) {
        this.logger.warn({ eventId: target.eventId, ...errorFields(err) }, "could not answer a command interrupted by a restart");
      }
    }
  }

  private async warnEncrypted(): Promise<void> {
    const room = this.room;
    if (!room) return;
    this.lastEncryptionWarning = Date.now();
    this.logger.warn({ roomId: room.roomId }, "encryption is on in the control room; commands cannot be read");
    const fix =
      room.origin === "configured"
        ? r`set ${code("control.room")} to an unencrypted room (or leave it empty to have one created) and restart hive-matrix.`
        : r`delete ${code(this.deps.state.path(CONTROL_ROOM_FILE))} and restart hive-matrix; I will create a new, unencrypted control room and invite the operators.`;
    await this.send(
      para(
        r`Encryption is switched on in this room, and I cannot read encrypted messages, so I cannot see commands here any more. Encryption cannot be switched off again. To get a working control room: `,
        fix,
      ),
    ).catch((err: unknown) => this.logger.warn(errorFields(err), "could not send the encryption warning"));
  }

  private async send(message: Rich): Promise<void> {
    const room = this.room;
    if (!room) return;
    await this.replies.notice(room.roomId, message);
  }
}
