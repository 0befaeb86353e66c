/**
 * From a room event to a command and its one reply. Filters first (silently): other rooms, other
 * event types, the appservice's own users (so bots cannot loop), anything but an `m.text` starting
 * with `!hive`, edits, events already handled. Then permission, before anything is written: a
 * command its sender may not run is never recorded in commands-seen.json (anyone in the room could
 * otherwise make the bot rewrite that file at will), and its sender gets at most one refusal per
 * `REFUSAL_INTERVAL_MS`. Then, in order, one command at a time: parsing and validation against the
 * table, confirmation of destructive commands, the handler. Nothing escapes: every failure becomes
 * a reply and a log line.
 */
import { Counter } from "prom-client";
import type { Config } from "../config/schema";
import { errorFields, type Logger } from "../logging";
import type { Metrics } from "../metrics";
import { HomeserverUnreachableError } from "../matrix/transport";
import type { MatrixEvent } from "../store/transactions";
import { CommandError, type HiveApi } from "./api";
import { bind } from "./bind";
import { COMMANDS } from "./commands";
import { commandText, parseLine, quoteWord } from "./parser";
import { blocks, code, para, r, type Rich } from "./render";
import type { Progress, Replies, ReplyTarget } from "./replies";
import type { SeenCommands } from "./seen";
import { PREFIX, type CommandContext, type CommandDef, type Invocation, type Permission } from "./table";

export type IgnoreReason =
  | "other-room"
  | "not-a-message"
  | "not-a-command"
  | "appservice-user"
  | "edit"
  | "no-event-id"
  | "duplicate"
  /** Not allowed, and its sender was refused less than REFUSAL_INTERVAL_MS ago: no reply. */
  | "refusal-throttled";

/** A sender who may not command gets at most one refusal per this interval. */
export const REFUSAL_INTERVAL_MS = 60_000;
/** Refused event IDs remembered (in memory) so that a redelivery is not refused twice. */
const REFUSED_REMEMBERED = 1000;

export type Outcome =
  | { kind: "ignored"; reason: IgnoreReason }
  /** Not allowed: a short refusal was sent. */
  | { kind: "refused" }
  /** Invalid input (unknown command, bad arguments, too long): the reply says what is wrong. */
  | { kind: "rejected"; command?: string }
  /** A destructive command without --yes: the reply says what it would do and what to send. */
  | { kind: "confirm"; command: string }
  | { kind: "done"; command: string }
  | { kind: "failed"; command?: string; internal: boolean };

export interface ProcessorDeps {
  api: HiveApi;
  config: Config;
  logger: Logger;
  replies: Replies;
  seen: SeenCommands;
  /** The bot and every user of the appservice's namespace: never obeyed, never answered. */
  isAppserviceUser(userId: string): boolean;
  controlRoomId(): string | undefined;
  /** Who may command: `config.operators` when absent. */
  isOperator?(userId: string): boolean;
  metrics?: Metrics;
  table?: readonly CommandDef[];
  /** Called with every outcome (tests and diagnostics). */
  onOutcome?: (eventId: string | undefined, outcome: Outcome) => void;
}

interface Job {
  target: ReplyTarget;
  /** The text after `!hive`. */
  line: string;
  /** Set when the event could not be recorded as seen: then it must not run. */
  unrecorded?: unknown;
  /** Its sender may not run it: the job is the refusal (never recorded as seen). */
  refuse?: boolean;
}

interface Running {
  command?: string;
  progress?: Progress;
}

const REFUSAL = para("Sorry, only the hive's operators can give commands here.");

function record(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

function commandsCounter(metrics: Metrics | undefined): Counter<"command" | "outcome"> | undefined {
  if (!metrics) return undefined;
  const name = "hive_matrix_commands_total";
  const existing = metrics.registry.getSingleMetric(name);
  if (existing) return existing as Counter<"command" | "outcome">;
  return new Counter({
    name,
    help: "Control-room commands by command and outcome (done, confirm, rejected, refused, failed).",
    labelNames: ["command", "outcome"] as const,
    registers: [metrics.registry],
  });
}

export class CommandProcessor {
  private readonly table: readonly CommandDef[];
  private readonly counter: Counter<"command" | "outcome"> | undefined;
  private queue: Promise<void> = Promise.resolve();
  private pending = 0;
  /** Sender → when they were last refused; refused event IDs (insertion order = age). */
  private readonly lastRefusal = new Map<string, number>();
  private readonly refused = new Set<string>();

  constructor(private readonly deps: ProcessorDeps) {
    this.table = deps.table ?? COMMANDS;
    this.counter = commandsCounter(deps.metrics);
  }

  /**
   * For the service's event queue: admits the event now (recording it as seen; `process` does
   * that before its first await) and runs the command after the ones before it, without holding
   * up the other event handlers. Never throws.
   */
  handleEvent(event: MatrixEvent): Promise<void> {
    this.process(event).catch((err: unknown) => {
      this.deps.logger.error({ eventId: event.event_id, ...errorFields(err) }, "control-room command handling failed");
    });
    return Promise.resolve();
  }

  /** Admits and runs the event's command, resolving with what happened. Never rejects. */
  async process(event: MatrixEvent): Promise<Outcome> {
    let admitted: ReturnType<CommandProcessor["admit"]>;
    try {
      admitted = this.admit(event);
    } catch (err) {
      this.deps.logger.error({ eventId: event.event_id, ...errorFields(err) }, "could not look at a control-room event");
      return { kind: "failed", internal: true };
    }
    if ("ignored" in admitted) {
      const outcome: Outcome = { kind: "ignored", reason: admitted.ignored };
      this.report(event.event_id, outcome);
      return outcome;
    }
    return this.enqueue(admitted.job);
  }

  /** Resolves once every admitted command has run. */
  async idle(): Promise<void> {
    while (this.pending > 0) await this.queue;
  }

  private enqueue(job: Job): Promise<Outcome> {
    this.pending++;
    const run = this.queue.then(() => this.execute(job));
    this.queue = run.then(
      () => {
        this.pending--;
      },
      () => {
        this.pending--;
      },
    );
    return run;
  }

  private admit(event: MatrixEvent): { ignored: IgnoreReason } | { job: Job } {
    const roomId = this.deps.controlRoomId();
    if (!roomId || event.room_id !== roomId) return { ignored: "other-room" };
    if (event.type !== "m.room.message" || event.state_key !== undefined) return { ignored: "not-a-message" };
    const sender = event.sender;
    if (typeof sender !== "string") return { ignored: "not-a-message" };
    if (this.deps.isAppserviceUser(sender)) return { ignored: "appservice-user" };
    const content = record(event.content);
    if (!content || content.msgtype !== "m.text" || typeof content.body !== "string") return { ignored: "not-a-command" };
    const line = commandText(content.body);
    if (line === undefined) return { ignored: "not-a-command" };
    const relates = record(content["m.relates_to"]);
    if (content["m.new_content"] !== undefined || relates?.rel_type === "m.replace") return { ignored: "edit" };
    const eventId = event.event_id;
    if (typeof eventId !== "string" || eventId === "") return { ignored: "no-event-id" };
    if (this.deps.seen.has(eventId) || this.refused.has(eventId)) return { ignored: "duplicate" };
    const threadId = relates?.rel_type === "m.thread" && typeof relates.event_id === "string" ? relates.event_id : undefined;
    const target: ReplyTarget = { roomId, eventId, sender, threadId };
    if (!this.isOperator(sender) && !this.memberMayRun(line)) {
      if (!this.refusalDue(sender)) return { ignored: "refusal-throttled" };
      this.refused.add(eventId);
      if (this.refused.size > REFUSED_REMEMBERED) this.refused.delete(this.refused.values().next().value as string);
      return { job: { target, line, refuse: true } };
    }
    // An operator now (e.g. added since a refusal): a refusal after a removal is said at once.
    if (this.isOperator(sender)) this.lastRefusal.delete(sender);
    try {
      this.deps.seen.add(eventId, target);
    } catch (err) {
      return { job: { target, line, unrecorded: err } };
    }
    return { job: { target, line } };
  }

  /** Configured operators and those added from chat. */
  private isOperator(userId: string): boolean {
    return this.deps.isOperator ? this.deps.isOperator(userId) : this.deps.config.operators.includes(userId);
  }

  /** Whether a non-operator may run `line`: a command of the table open to every member. */
  private memberMayRun(line: string): boolean {
    const parsed = parseLine(line);
    if (!parsed.ok) return false;
    const bound = bind(parsed.value, this.table, { config: this.deps.config, isAppserviceUser: this.deps.isAppserviceUser });
    return bound.ok && allowed(bound.invocation.command.permission, false);
  }

  /** True (and the time noted) when `sender` was not refused within the interval. */
  private refusalDue(sender: string): boolean {
    const now = Date.now();
    const last = this.lastRefusal.get(sender);
    if (last !== undefined && now - last < REFUSAL_INTERVAL_MS) return false;
    // Re-inserted, so the map stays ordered by time and the oldest entry is dropped first.
    this.lastRefusal.delete(sender);
    this.lastRefusal.set(sender, now);
    if (this.lastRefusal.size > REFUSED_REMEMBERED) this.lastRefusal.delete(this.lastRefusal.keys().next().value as string);
    return true;
  }

  private async execute(job: Job): Promise<Outcome> {
    const { target } = job;
    // Filled in by `run` as it gets there, so a failure can name the command and replace its progress message.
    const running: Running = {};
    const reply = async (message: Rich): Promise<void> => {
      if (running.progress) await running.progress.finish(message);
      else await this.deps.replies.notice(target.roomId, message, target);
    };
    let outcome: Outcome;
    try {
      outcome = await this.run(job, reply, running);
    } catch (err) {
      outcome = { kind: "failed", command: running.command, internal: !(err instanceof CommandError) };
      await reply(this.failure(err, running.command, target)).catch((sendErr: unknown) => {
        this.deps.logger.warn({ eventId: target.eventId, ...errorFields(sendErr) }, "could not send the error reply to a command");
      });
    }
    try {
      this.deps.seen.finish(target.eventId);
    } catch (err) {
      this.deps.logger.warn({ eventId: target.eventId, ...errorFields(err) }, "could not mark a command as finished");
    }
    this.report(target.eventId, outcome, target.sender);
    return outcome;
  }

  /** Everything that may throw; `execute` turns a throw into an error reply. */
  private async run(job: Job, reply: (message: Rich) => Promise<void>, running: Running): Promise<Outcome> {
    const { target } = job;
    if (job.refuse) {
      await reply(REFUSAL);
      return { kind: "refused" };
    }
    if (job.unrecorded !== undefined) {
      this.deps.logger.error(
        { eventId: target.eventId, ...errorFields(job.unrecorded) },
        "could not record a command as handled; not running it",
      );
      await reply(
        para(
          "I could not record this command in my state directory, so I did not run it (it could otherwise run twice). See the service log.",
        ),
      );
      return { kind: "failed", internal: true };
    }
    const operator = this.isOperator(target.sender);
    const refuse = async (): Promise<Outcome> => {
      await reply(REFUSAL);
      return { kind: "refused" };
    };

    const parsed = parseLine(job.line);
    if (!parsed.ok) {
      if (!operator) return refuse();
      await reply(para(r`I could not read that command: ${parsed.error}.`));
      return { kind: "rejected" };
    }
    const env = { config: this.deps.config, isAppserviceUser: this.deps.isAppserviceUser };
    const bound = bind(parsed.value, this.table, env);
    if (!bound.ok) {
      if (!operator) return refuse();
      await reply(bound.message);
      return { kind: "rejected", command: bound.path?.join(" ") };
    }
    const inv = bound.invocation;
    const name = inv.path.join(" ");
    if (!allowed(inv.command.permission, operator)) return refuse();
    running.command = name;

    const ctx = this.context(inv, target, running);
    if (inv.command.confirm && inv.flags.yes !== true) {
      const what = await inv.command.confirm(ctx);
      await reply(blocks(what, para(r`Send ${code(confirmLine(inv))} to confirm.`)));
      return { kind: "confirm", command: name };
    }
    if (inv.command.progress) {
      running.progress = this.deps.replies.progress(target, r`Running ${code(`${PREFIX} ${name}`)}…`, (progressId) => {
        try {
          this.deps.seen.setProgress(target.eventId, progressId);
        } catch (err) {
          this.deps.logger.warn({ eventId: target.eventId, ...errorFields(err) }, "could not record a progress message");
        }
      });
    }
    this.deps.logger.info({ eventId: target.eventId, sender: target.sender, command: name }, "running a control-room command");
    const result = await inv.command.run(ctx);
    await reply(result);
    return { kind: "done", command: name };
  }

  private context(inv: Invocation, target: ReplyTarget, running: Running): CommandContext {
    const { api, config, isAppserviceUser, logger } = this.deps;
    return {
      api,
      config,
      sender: target.sender,
      invocation: inv,
      table: this.table,
      isAppserviceUser,
      arg(name) {
        const value = inv.args[name];
        // The table says the argument is required and bind checked the count: a miss is a bug in the table.
        if (value === undefined)
          throw new Error(`command ${inv.path.join(" ")} read argument ${name}, which it does not declare as required`);
        return value;
      },
      optionalArg: (name) => inv.args[name],
      flag: (name) => inv.flags[name] === true,
      option: (name) => {
        const v = inv.flags[name];
        return typeof v === "string" ? v : undefined;
      },
      progress(line) {
        if (running.progress) running.progress.update(line);
        else logger.debug({ command: inv.path.join(" "), line }, "progress from a command that shows none");
      },
    };
  }

  private failure(err: unknown, command: string | undefined, target: ReplyTarget): Rich {
    if (err instanceof CommandError) return err.display;
    const what = command ? code(`${PREFIX} ${command}`) : "the command";
    if (err instanceof HomeserverUnreachableError) {
      this.deps.logger.warn(
        { eventId: target.eventId, command, ...errorFields(err) },
        "control-room command failed: homeserver unreachable",
      );
      return para(r`Could not run ${what}: the homeserver is unreachable (${err.reason}). Try again when it is back.`);
    }
    this.deps.logger.error(
      { eventId: target.eventId, sender: target.sender, command, ...errorFields(err), stack: err instanceof Error ? err.stack : undefined },
      "control-room command failed",
    );
    return para(r`Internal error while running ${what}; see the service log.`);
  }

  private report(eventId: string | undefined, outcome: Outcome, sender?: string): void {
    if (outcome.kind !== "ignored") {
      const command = "command" in outcome && outcome.command ? outcome.command : "(none)";
      this.counter?.inc({ command, outcome: outcome.kind });
      this.deps.logger.info({ eventId, sender, command, outcome: outcome.kind }, "control-room command handled");
    } else if (outcome.reason === "duplicate" || outcome.reason === "edit") {
      this.deps.logger.info({ eventId, reason: outcome.reason }, "control-room command not run again");
    }
    try {
      this.deps.onOutcome?.(eventId, outcome);
    } catch (err) {
      this.deps.logger.warn(errorFields(err), "outcome listener failed");
    }
  }
}

function allowed(permission: Permission, operator: boolean): boolean {
  return permission === "member" || operator;
}

/** The exact command that confirms `inv`: its words, arguments (quoted when needed), flags and --yes. */
export function confirmLine(inv: Invocation): string {
  const args = (inv.command.args ?? []).flatMap((a) => (inv.args[a.name] === undefined ? [] : [quoteWord(inv.args[a.name])]));
  const flags = Object.entries(inv.flags)
    .filter(([name]) => name !== "yes")
    .map(([name, value]) => (value === true ? `--${name}` : `--${name}=${quoteWord(value)}`));
  return [PREFIX, ...inv.path, ...args, ...flags, "--yes"].join(" ");
}
