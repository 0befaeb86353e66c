/**
 * From a transaction the HTTP layer authenticated and validated to the event queue, with a log
 * line for each outcome that is not plain acceptance: a replay is acknowledged and not handled
 * again; a known txnId with other events is handled as new and warned about once per run of such
 * IDs, which is what a homeserver that numbered its transactions anew after a restart produces.
 */
import type { EventQueue } from "../events";
import type { Logger } from "../logging";
import type { MatrixEvent, TransactionStore } from "../store/transactions";

export type IntakeResult = "accepted" | "reused_id" | "duplicate";

export class TransactionIntake {
  private readonly log: Logger;
  /** Reused txnIds since the last fresh one: the warning goes out for the first of a run only. */
  private reusedInRun = 0;

  /**
   * `restartRepairs`: whether a restart redoes whatever these events can cause, so that their
   * transaction needs no journal line (see store/transactions.ts); by default none does.
   */
  constructor(
    private readonly store: TransactionStore,
    private readonly queue: EventQueue,
    logger: Logger,
    private readonly restartRepairs: (events: readonly MatrixEvent[]) => boolean = () => false,
  ) {
    this.log = logger.child({ module: "appservice-intake" });
  }

  /** Queues the transaction's events and makes it durable, unless it is a replay; resolves once it is on disk (or when it need not be). */
  async receive(txnId: string, events: MatrixEvent[], raw?: Buffer): Promise<IntakeResult> {
    // Handled from the moment its line is queued for the disk (or at once without one); the answer waits for the disk.
    const intake = await this.store.accept(txnId, events, raw, (entry) => this.queue.push(entry), !this.restartRepairs(events));
    if (intake.result === "duplicate") {
      this.log.info({ txnId, events: events.length }, "transaction delivered again with the same events: acknowledged, not handled again");
      return "duplicate";
    }
    if (intake.result === "reused_id") {
      if (this.reusedInRun++ === 0) {
        this.log.warn(
          { txnId },
          "the homeserver sent a transaction ID seen before with other events; handling it as new. The likely cause: the " +
            "homeserver restarted and numbered its transactions anew (Synapse on SQLite does when its queue was empty). " +
            'Further reused IDs are counted in hive_matrix_transactions_total{result="reused_id"} and not logged one by one',
        );
      }
    } else if (this.reusedInRun > 0) {
      this.log.info(
        { reused: this.reusedInRun },
        "the homeserver's transaction IDs are new again; the transactions with reused IDs were all handled",
      );
      this.reusedInRun = 0;
    }
    return intake.result;
  }
}
