/**
 * When the rooms are reconciled: at start, on a timer, when the agents change, and when an event
 * changes something the reconcile owns (see relevance.ts). Bursts coalesce: one run at a time, and
 * any number of triggers during a run cause exactly one follow-up run.
 *
 * Events are what other users control, so they are also rate-bounded: an event waits
 * `eventDelayMs` for others to join it, and event-triggered runs start at least
 * `minEventIntervalMs` after the previous run started. A run that starts for any other reason
 * reads the rooms afresh and so answers the events that arrived before it.
 */
import type { Logger } from "../logging";
import { errorFields } from "../logging";
import type { MatrixEvent } from "../store/transactions";
import type { RoomsReconciler } from "./reconciler";
import type { DesiredMembers, ReconcileReport } from "./types";

/** The part of RoomsReconciler the loop drives. */
export type Reconciling = Pick<RoomsReconciler, "reconcile" | "isRelevant">;

export interface ReconcileLoopOptions {
  /** Who must be in the rooms, asked at the start of every run. */
  members: () => DesiredMembers;
  /** Periodic reconcile; 0 turns the timer off. */
  intervalSeconds: number;
  /** How long a relevant event waits for others before it triggers a run (default 500 ms). */
  eventDelayMs?: number;
  /** Least time between the start of one run and an event-triggered run (default 5 s). */
  minEventIntervalMs?: number;
  logger: Logger;
}

interface Batch {
  reasons: string[];
  promise: Promise<ReconcileReport | undefined>;
  resolve: (report: ReconcileReport | undefined) => void;
}

function newBatch(): Batch {
  let resolve!: (report: ReconcileReport | undefined) => void;
  const promise = new Promise<ReconcileReport | undefined>((r) => (resolve = r));
  return { reasons: [], promise, resolve };
}

export class ReconcileLoop {
  private queued: Batch | undefined;
  private driver: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Reasons of relevant events not yet answered by a run, and the timer that will start one. */
  private readonly eventReasons = new Set<string>();
  private eventTimer: NodeJS.Timeout | undefined;
  private lastRunStarted = 0;
  private stopped = false;
  private readonly log: Logger;
  /** Runs made so far (for status and tests). */
  runs = 0;

  constructor(
    readonly reconciler: Reconciling,
    private readonly options: ReconcileLoopOptions,
  ) {
    this.log = options.logger.child({ module: "rooms-loop" });
  }

  /** Starts the timer and the first run; resolves with the first run's report. */
  start(): Promise<ReconcileReport | undefined> {
    this.stopped = false;
    const seconds = this.options.intervalSeconds;
    if (seconds > 0 && !this.timer) {
      this.timer = setInterval(() => void this.trigger("periodic"), seconds * 1000);
      this.timer.unref();
    }
    return this.trigger("startup");
  }

  /**
   * Asks for a run. Resolves with the report of a run that started after this call (undefined
   * when the loop stopped first).
   */
  trigger(reason: string): Promise<ReconcileReport | undefined> {
    if (this.stopped) return Promise.resolve(undefined);
    const batch = (this.queued ??= newBatch());
    batch.reasons.push(reason);
    this.driver ??= this.drive();
    return batch.promise;
  }

  isRelevant(event: MatrixEvent): boolean {
    return this.reconciler.isRelevant(event);
  }

  /** An event handler for the service: schedules a run when the event touches what the reconcile owns, without waiting for it. */
  onEvent(event: MatrixEvent): void {
    if (this.stopped || !this.isRelevant(event)) return;
    // Bounded: the relevant types and the two rooms are few.
    this.eventReasons.add(`${event.type} in ${event.room_id ?? "?"}`);
    if (this.eventTimer) return;
    const delay = this.options.eventDelayMs ?? 500;
    const wait = Math.max(delay, this.lastRunStarted + (this.options.minEventIntervalMs ?? 5000) - Date.now());
    this.eventTimer = setTimeout(() => {
      this.eventTimer = undefined;
      if (this.eventReasons.size > 0) void this.trigger([...this.eventReasons].join(", "));
      this.eventReasons.clear();
    }, wait);
    this.eventTimer.unref();
  }

  get running(): boolean {
    return this.driver !== undefined;
  }

  /** Whether events are waiting for a run (see onEvent). */
  get waiting(): boolean {
    return this.eventTimer !== undefined;
  }

  /** Stops the timer and waits for the run in progress; a pending follow-up is dropped. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    clearTimeout(this.eventTimer);
    this.eventTimer = undefined;
    this.eventReasons.clear();
    await this.driver;
  }

  private async drive(): Promise<void> {
    // Yield once, so that triggers made in the same tick join the first batch.
    await Promise.resolve();
    try {
      while (this.queued && !this.stopped) {
        const batch = this.queued;
        this.queued = undefined;
        batch.resolve(await this.runOnce(batch.reasons));
      }
    } finally {
      this.queued?.resolve(undefined);
      this.queued = undefined;
      this.driver = undefined;
    }
  }

  private async runOnce(reasons: string[]): Promise<ReconcileReport | undefined> {
    // This run reads the rooms after every event noted so far: they need no run of their own.
    if (this.eventReasons.size > 0) {
      reasons.push(...this.eventReasons);
      this.eventReasons.clear();
      clearTimeout(this.eventTimer);
      this.eventTimer = undefined;
    }
    // A thousand agents onboarding are a thousand reasons for one run: name a few, count the rest.
    const distinct = [...new Set(reasons)];
    const reason = distinct.slice(0, 5).join(", ") + (distinct.length > 5 ? ` and ${distinct.length - 5} more` : "");
    this.lastRunStarted = Date.now();
    this.runs++;
    try {
      return await this.reconciler.reconcile(this.options.members(), reason);
    } catch (err) {
      // reconcile() reports its own failures; this catches a throwing members() callback.
      this.log.error({ reason, ...errorFields(err) }, "rooms reconcile failed");
      return undefined;
    }
  }
}
