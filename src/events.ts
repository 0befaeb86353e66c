/**
 * Handles accepted transactions in order, detached from the HTTP request. A failing handler is
 * logged and counted and does not stop the queue; an entry leaves the inbox only after all its
 * events ran. `stop` leaves the entries not yet begun in the journal, for the next start.
 */
import type { Logger } from "./logging";
import { errorFields } from "./logging";
import { eventTypeLabel, type Metrics } from "./metrics";
import type { InboxEntry, MatrixEvent, TransactionStore } from "./store/transactions";

export type EventHandler = (event: MatrixEvent) => Promise<void> | void;

export class EventQueue {
  private readonly pending: InboxEntry[] = [];
  private readonly handlers: EventHandler[] = [];
  private running = false;
  /** A drain is scheduled (see push). */
  private scheduled = false;
  private started = false;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly store: TransactionStore,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {}

  on(handler: EventHandler): void {
    this.handlers.push(handler);
  }

  /**
   * Queues the entry; handling starts once the I/O already read is through (setImmediate), so an
   * acknowledgement that is ready goes out before the events are handled, not after.
   */
  push(entry: InboxEntry): void {
    this.pending.push(entry);
    this.metrics.eventQueue.set(this.pending.length);
    if (this.started && !this.stopped && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        void this.drain();
      });
    }
  }

  /** Handling waits for start(): events may arrive before the service is ready. */
  start(): void {
    this.started = true;
    void this.drain();
  }

  /** Resolves when every accepted transaction has been handled (or, after `stop`, when the one under way has). */
  idle(): Promise<void> {
    if (!this.running && (this.pending.length === 0 || !this.started || this.stopped)) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Finishes the transaction under way and handles no more: the rest stay unhandled in the journal
   * and are replayed by the next start, instead of reaching handlers that are shutting down.
   */
  stop(): Promise<void> {
    this.stopped = true;
    return this.idle();
  }

  private async drain(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let entry = this.pending[0]; entry !== undefined && !this.stopped; entry = this.pending[0]) {
        for (const event of entry.events) {
          const pending = this.dispatch(event);
          if (pending) await pending;
        }
        this.store.done(entry);
        this.pending.shift();
        this.metrics.eventQueue.set(this.pending.length);
        // One transaction at a time: a journal write's completion or a request that arrived meanwhile
        // is taken between two, instead of waiting behind the whole backlog.
        if (this.pending.length > 0) await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      this.running = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      waiters.forEach((w) => w());
    }
  }

  /**
   * Runs the handlers in order. Most return nothing for most events: those run back to back, and
   * only a handler that returns a promise makes the rest wait for it (asynchronously), so a
   * 50-event transaction does not cost 50 × handlers trips through the microtask queue.
   */
  private dispatch(event: MatrixEvent, from = 0): Promise<void> | undefined {
    if (from === 0) this.metrics.events.inc({ type: eventTypeLabel(event.type) });
    for (let i = from; i < this.handlers.length; i++) {
      let result: Promise<void> | void;
      try {
        result = this.handlers[i](event);
      } catch (err) {
        this.failed(event, err);
        continue;
      }
      if (result && typeof result.then === "function") {
        return result.then(
          () => this.dispatch(event, i + 1),
          (err: unknown) => {
            this.failed(event, err);
            return this.dispatch(event, i + 1);
          },
        );
      }
    }
    return undefined;
  }

  private failed(event: MatrixEvent, err: unknown): void {
    this.metrics.eventsDropped.inc({ reason: "handler_failed" });
    this.logger.error({ eventId: event.event_id, type: event.type, roomId: event.room_id, ...errorFields(err) }, "event handler failed");
  }
}
