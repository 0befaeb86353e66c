/**
 * Reports the bot makes on its own in the control room. Reports are collected for
 * control.notifyIntervalSeconds after the first one and then sent as one summarised message
 * ("3 agents onboarded: a, b, c"), so a burst (a restart onboarding every agent, a flapping
 * homeserver) is one message, not a flood. With an interval of 0 each report is sent at once.
 */
import { errorFields, type Logger } from "../logging";
import { blocks, concat, list, para, text, type Rich } from "./render";

interface KindSpec {
  /** "Agent onboarded" (one), "agents onboarded" (after a count). */
  one: string;
  many: string;
}

const KINDS = {
  "agent-onboarded": { one: "Agent onboarded", many: "agents onboarded" },
  "agent-failed": { one: "Agent failed", many: "agents failed" },
  "agent-removed": { one: "Agent removed", many: "agents removed" },
  "agent-silent": { one: "Agent silent", many: "agents silent" },
  "agent-back": { one: "Agent active again", many: "agents active again" },
  "registration-refresh": { one: "Registration refresh needed", many: "registration refreshes needed" },
  "homeserver-down": { one: "Homeserver unreachable", many: "times the homeserver was unreachable" },
  "homeserver-back": { one: "Homeserver reachable again", many: "times the homeserver came back" },
  "drift-repaired": { one: "Room drift repaired", many: "room drifts repaired" },
  "rooms-unusable": { one: "Rooms unusable", many: "room problems" },
} satisfies Record<string, KindSpec>;

export type ReportKind = keyof typeof KINDS;

/** Items listed per kind; the rest are counted. */
const MAX_LISTED = 20;
/** Items kept per kind while waiting; beyond this only the count grows. */
const MAX_KEPT = 200;

export interface NotifierDeps {
  /** Sends one message to the control room; undefined when there is no control room (yet). */
  send(message: Rich): Promise<void> | undefined;
  intervalSeconds: number;
  logger: Logger;
}

interface Batch {
  items: string[];
  count: number;
}

export class Notifier {
  private batches = new Map<ReportKind, Batch>();
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly deps: NotifierDeps) {}

  /** Queues a report; `text` names the subject (an agent, a room) and may add why. Never throws. */
  report(kind: ReportKind, text: string): void {
    if (this.stopped) {
      this.deps.logger.debug({ kind, text }, "report after stop dropped");
      return;
    }
    const batch = this.batches.get(kind) ?? { items: [], count: 0 };
    this.batches.set(kind, batch);
    if (!batch.items.includes(text)) {
      batch.count++;
      if (batch.items.length < MAX_KEPT) batch.items.push(text);
    }
    if (this.deps.intervalSeconds <= 0) void this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        void this.flush();
      }, this.deps.intervalSeconds * 1000);
      this.timer.unref();
    }
  }

  /** Sends what is queued now. Reports stay queued while there is no control room. */
  flush(): Promise<void> {
    this.sending = this.sending.then(() => this.send());
    return this.sending;
  }

  /** Sends what is queued and takes no more reports. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  private async send(): Promise<void> {
    if (this.batches.size === 0) return;
    const message = summarise(this.batches);
    const sent = this.deps.send(message);
    if (!sent) {
      this.deps.logger.debug({ kinds: [...this.batches.keys()] }, "no control room yet; keeping reports");
      return;
    }
    const batches = this.batches;
    this.batches = new Map();
    try {
      await sent;
    } catch (err) {
      // Not retried: a report is a courtesy, the same facts are in the log and in `!hive status`.
      this.deps.logger.warn({ kinds: [...batches.keys()], ...errorFields(err) }, "could not send a report to the control room");
    }
  }
}

function line(kind: ReportKind, batch: Batch): Rich {
  const spec: KindSpec = KINDS[kind];
  const listed = batch.items.slice(0, MAX_LISTED);
  const more = batch.count - listed.length;
  const items = listed.join(", ") + (more > 0 ? `, and ${more} more` : "");
  return text(batch.count === 1 ? `${spec.one}: ${items}` : `${batch.count} ${spec.many}: ${items}`);
}

export function summarise(batches: ReadonlyMap<ReportKind, Batch>): Rich {
  const lines = [...batches.entries()].map(([kind, batch]) => line(kind, batch));
  return lines.length === 1 ? para(lines[0]) : blocks(para(concat("Hive report:")), list(lines));
}
