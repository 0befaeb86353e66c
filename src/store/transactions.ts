/**
 * Durable intake of appservice transactions.
 *
 * A transaction is acknowledged only after its events are on disk: `accept` appends one line
 * (txnId and events) to a journal opened with O_DSYNC, and resolves once the write that carried it
 * returned. Writes run on libuv's thread pool, so the event loop keeps parsing requests meanwhile,
 * and every line queued during one write goes out together in the next: concurrent transactions
 * share one disk flush (group commit). Handled transactions get a `done` line that needs no flush
 * of its own (a crash before it is written replays the transaction; handlers are idempotent or, for
 * commands, de-duplicated by event ID): it rides along with the next transaction's write, or goes
 * out on its own after DONE_DELAY_MS when none comes, so a homeserver sending one transaction at a
 * time costs one synchronous write per transaction, not two.
 *
 * A transaction's events may be handled while its line is being written: the homeserver gets its
 * answer only once the line is on disk, but the handlers need not wait for the disk, which with
 * one transaction in flight (how Synapse sends) would put the handling and the sync end to end.
 * What can go wrong is what a crash between handling and the done line already allows: the events
 * were handled and the transaction is delivered again (here because the write failed or the service
 * died before it, so the homeserver got no 200), and handlers are idempotent or de-duplicated.
 *
 * A transaction whose events a restart repairs by itself (the caller says so: `durable` false) is
 * acknowledged without a journal line: its txnId is remembered in memory only, and a crash before
 * it was handled loses nothing that the next start does not redo. The service passes the
 * memberships of the Space and hive-chat this way (the startup reconcile reads both rooms anew):
 * three transactions per agent onboarded, each of which would otherwise wait for a disk flush.
 *
 * After a crash the unhandled transactions are replayed and
 * their txnIds count as seen, so the homeserver's redelivery is acknowledged without being queued
 * twice. The journal is compacted to the most recent `capacity` txnIds plus unhandled entries.
 *
 * A transaction is a replay only when its txnId AND its content match one seen before: a homeserver
 * may number its transactions anew after a restart (Synapse on SQLite does when its queue was
 * empty), so a known txnId with other events is a new transaction. The content is the transaction's
 * events by event ID (`contentDigest`), not the body's bytes: a retry re-serialises the events
 * (Synapse recomputes `unsigned.age` on every send) and leaves out ephemeral data, so the bytes of
 * a true retry differ while its event IDs do not.
 *
 * Journal lines: {"a":seq,"id":txnId,"e":[events]} accepted (its digest is computed from the
 * events on load), {"d":seq} done, {"s":txnId,"h":digest} seen. A seen line without "h" (written
 * before digests were kept) says nothing about the content, so its txnId is not taken as seen: a
 * transaction with that txnId is handled. Only a true retry of a transaction already compacted away
 * before the upgrade could run twice; commands are de-duplicated by event ID (control/seen.ts) and
 * the other handlers are idempotent, so that costs nothing. The older layout (transactions.log +
 * inbox/) is migrated on open; the log's txnIds, which carry no content either, are not kept.
 */
import { createHash } from "node:crypto";
import { closeSync, constants, existsSync, openSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { fsyncDir, writeAll, writeAllSync, writeFileAtomic } from "./atomic-file";
import { readJournalLines } from "./journal-lines";
import { StateError } from "./state-store";

export interface MatrixEvent {
  type: string;
  event_id?: string;
  room_id?: string;
  sender?: string;
  state_key?: string;
  content?: Record<string, unknown>;
  origin_server_ts?: number;
  unsigned?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface InboxEntry {
  seq: number;
  txnId: string;
  events: MatrixEvent[];
}

/**
 * What `accept` made of a transaction: `accepted` (a new txnId), `reused_id` (a known txnId with
 * other events: the homeserver numbered anew, handled as new), or `duplicate` (the same transaction
 * again: acknowledge, do not handle).
 */
export type Intake = { result: "accepted" | "reused_id"; entry: InboxEntry } | { result: "duplicate" };

/**
 * The identity of a transaction's content: its events' IDs in order (an event without one by its
 * JSON minus `unsigned`, which the homeserver recomputes per send). 128 bits of SHA-256, hex.
 */
export function contentDigest(events: readonly MatrixEvent[]): string {
  // One string, hashed at once: a hash update per event and separator cost more than the hashing.
  let text = "";
  for (const event of events) {
    // Neither an event ID nor JSON holds a raw newline, so "\n" separates them unambiguously.
    text += `${typeof event.event_id === "string" ? event.event_id : JSON.stringify({ ...event, unsigned: undefined })}\n`;
  }
  return createHash("sha256").update(text).digest("hex").slice(0, 32);
}

const eventsSchema = z.array(z.object({ type: z.string() }).passthrough());
const lineSchema = z.union([
  z.object({ a: z.number().int(), id: z.string(), e: eventsSchema }),
  // The transaction body as the homeserver sent it: {"events": [...], ...}.
  z.object({ a: z.number().int(), id: z.string(), b: z.object({ events: eventsSchema }).passthrough() }),
  z.object({ d: z.number().int() }),
  z.object({ s: z.string(), h: z.string().optional() }),
]);
const legacyInboxSchema = z.object({ seq: z.number().int(), txnId: z.string(), events: eventsSchema });

const JOURNAL = "transactions.journal";
/** How long `done` lines wait for a transaction's write to ride along with. */
const DONE_DELAY_MS = 1000;
/**
 * A write with one transaction in it goes out on the event loop (a synchronous write) while writes
 * made there take less than this on average; above it, the loop would stall for as long as the
 * disk takes.
 */
const SYNC_WRITE_MAX_MS = 1;
/**
 * Once synchronous writes were found too slow, every this many writes of a lone transaction one goes
 * on the loop anyway, to see whether the disk became fast again: a write through the thread pool
 * cannot tell, as its duration includes the trip to a worker thread and back (on a loaded machine,
 * often more than the disk's share).
 */
const SYNC_WRITE_PROBE_EVERY = 64;
/**
 * ...and while the last this many transactions each arrived with no other unanswered: a homeserver
 * that sends several at a time would otherwise meet a loop that cannot parse them during the write
 * (a single transaction in a write is common then too, between two groups).
 */
const ALONE_STREAK = 8;
const LEGACY_LOG = "transactions.log";
const LEGACY_INBOX = "inbox";

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
  /**
   * Runs as soon as the line is on disk, before a compaction that may follow the same write: the
   * bookkeeping of `accept` must be in memory by then, or the compacted journal would lack it.
   */
  written?: () => void;
}

/**
 * The journal line for a transaction whose body is at hand: written as received, which saves
 * serialising the events again. A raw newline in JSON can only be whitespace between tokens
 * (inside strings it is escaped), so turning it into a space keeps the line one line and the
 * JSON the same. Bytes are copied only when there is such a newline (homeservers send compact JSON).
 */
function rawLine(entry: InboxEntry, raw: Buffer | undefined): Buffer | undefined {
  // A byte-order mark would make the line unreadable JSON: such a body takes the slow path.
  if (!raw || raw.length === 0 || raw[0] === 0xef) return undefined;
  let body = raw;
  if (raw.includes(10) || raw.includes(13)) {
    body = Buffer.from(raw);
    for (let i = 0; i < body.length; i++) if (body[i] === 10 || body[i] === 13) body[i] = 32;
  }
  return Buffer.concat([Buffer.from(`{"a":${entry.seq},"id":${JSON.stringify(entry.txnId)},"b":`), body, Buffer.from("}\n")]);
}

export class TransactionStore {
  /** txnId → content digest; insertion order is recency (oldest first), which bounds it to `capacity`. */
  private readonly seen = new Map<string, string>();
  /** Accepted and not yet done, by seq: what a compaction must keep. */
  private readonly unhandled = new Map<number, InboxEntry>();
  /** Transactions whose write is under way: a second delivery waits for it instead of being acknowledged early. */
  private readonly inFlight = new Map<string, { written: Promise<void>; digest: string }>();
  /** Seqs of accepted lines not yet on disk, and those of them whose events were all handled already. */
  private readonly writing = new Set<number>();
  private readonly handledEarly = new Set<number>();
  private fd: number | null = null;
  private seq = 0;
  private lines = 0;
  /** The journal ended in a line cut off by a crash: it must not stay in front of the next append. */
  private tornTail = false;
  private queued: (string | Buffer)[] = [];
  private waiters: Waiter[] = [];
  /** `done` lines not yet queued: they join the next write (see DONE_DELAY_MS). */
  private doneLines: string[] = [];
  private doneTimer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  /** The write on the thread pool, while there is one (see close). */
  private writeUnderWay: Promise<void> | undefined;
  /** Disk writes made: fewer than transactions when group commit is at work. */
  flushes = 0;
  /** Milliseconds those writes took, from the write's start to the disk's acknowledgement: what the disk gave. */
  flushMs = 0;
  /** Of those writes, the ones made on the event loop (one transaction, a fast disk). */
  syncFlushes = 0;
  /** Transactions accepted without a journal line (`durable` false in accept). */
  unjournaled = 0;
  /**
   * Moving average of the synchronous writes' durations (ms): whether one is cheap enough. Only
   * those count: they measure the disk alone (see SYNC_WRITE_PROBE_EVERY).
   */
  private syncWriteMs = 0;
  /** Writes of a lone transaction that went to the thread pool since the last synchronous one. */
  private sinceSyncWrite = 0;
  /** Transactions in a row that arrived with none other unanswered: the homeserver sends one at a time. */
  private aloneStreak = 0;

  constructor(
    private readonly dir: string,
    private readonly capacity = 10_000,
  ) {}

  private get path(): string {
    return join(this.dir, JOURNAL);
  }

  /** Loads the journal (migrating the older layout) and returns the transactions left unhandled, oldest first. */
  open(): InboxEntry[] {
    this.readJournal();
    const migrated = this.migrateLegacy();
    // After a torn last line, the next append would glue a whole line to the fragment: a corrupted
    // line in the middle, which the next start refuses. Rewriting drops the fragment first.
    if (migrated || this.tornTail || this.lines > this.capacity * 2 + this.unhandled.size) this.compact();
    this.fd = openSync(
      this.path,
      constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC | constants.O_NOFOLLOW,
      0o600,
    );
    return [...this.unhandled.values()].sort((a, b) => a.seq - b.seq);
  }

  /** True when a transaction with this txnId is durably known (or being written) with known content. */
  has(txnId: string): boolean {
    return this.seen.has(txnId) || this.inFlight.has(txnId);
  }

  /**
   * Makes the transaction durable unless it is a replay (same txnId, same events); after this
   * resolves, acknowledging it is safe. A delivery of a transaction whose write is under way waits
   * for that write. `queued` gets the entry as soon as its line is queued for the disk, so its
   * events can be handled while the write is under way (see the top of this file). With `durable`
   * false there is no line: the entry is queued and this resolves at once.
   */
  async accept(txnId: string, events: MatrixEvent[], raw?: Buffer, queued?: (entry: InboxEntry) => void, durable = true): Promise<Intake> {
    if (this.fd === null) throw new Error("transaction store is not open");
    const digest = contentDigest(events);
    const writing = this.inFlight.get(txnId);
    if (writing) {
      await writing.written.catch(() => undefined);
      if (writing.digest === digest && this.seen.get(txnId) === digest) return { result: "duplicate" };
    }
    const known = this.seen.get(txnId);
    if (known === digest) return { result: "duplicate" };
    const entry: InboxEntry = { seq: ++this.seq, txnId, events };
    // Another transaction still unanswered: the homeserver sends more than one at a time.
    this.aloneStreak = this.inFlight.size === 0 ? this.aloneStreak + 1 : 0;
    if (!durable) {
      // Nothing a restart would not redo (see the top of this file): nothing to wait for, and no
      // done line later (done() finds it neither unhandled nor being written).
      this.remember(txnId, digest);
      this.unjournaled++;
      queued?.(entry);
      return { result: known === undefined ? "accepted" : "reused_id", entry };
    }
    const line = rawLine(entry, raw) ?? `${JSON.stringify({ a: entry.seq, id: txnId, e: events })}\n`;
    const written = this.enqueue(line, () => {
      this.remember(txnId, digest);
      // Handled while its line was being written: nothing left for a compaction to keep.
      if (!this.handledEarly.has(entry.seq)) this.unhandled.set(entry.seq, entry);
    });
    this.inFlight.set(txnId, { written, digest });
    this.writing.add(entry.seq);
    queued?.(entry);
    try {
      await written;
    } finally {
      if (this.inFlight.get(txnId)?.written === written) this.inFlight.delete(txnId);
      this.writing.delete(entry.seq);
      this.handledEarly.delete(entry.seq);
    }
    return { result: known === undefined ? "accepted" : "reused_id", entry };
  }

  /** Called once every event of the entry has been handled. */
  done(entry: InboxEntry): void {
    if (this.fd === null) return;
    if (!this.unhandled.delete(entry.seq)) {
      // Not in the journal yet: handled while its line is being written (or waiting to be). Its done
      // line can only go out in a later write than its accepted line, or later in the same one.
      if (!this.writing.has(entry.seq)) return;
      this.handledEarly.add(entry.seq);
    }
    // Nobody waits for it: it joins the next write, or goes out on its own after a while.
    this.doneLines.push(`${JSON.stringify({ d: entry.seq })}\n`);
    if (!this.doneTimer) {
      this.doneTimer = setTimeout(() => {
        this.doneTimer = undefined;
        if (this.doneLines.length > 0 && this.fd !== null) this.enqueue(null).catch(() => undefined);
      }, DONE_DELAY_MS);
      this.doneTimer.unref();
    }
  }

  /** Waits for queued writes (`done` lines included), then closes the journal. */
  async flushAndClose(): Promise<void> {
    if (this.doneLines.length > 0 && this.fd !== null) await this.enqueue(null).catch(() => undefined);
    while (this.flushing) await this.flushing;
    this.close();
  }

  /**
   * Closes at once; queued lines not yet written are lost, as in a crash. A write already handed to
   * the thread pool finishes first: closing its descriptor under it would fail it, or send it into
   * whatever file next gets the descriptor's number.
   */
  close(): void {
    const fd = this.fd;
    this.fd = null;
    if (fd !== null) {
      if (this.writeUnderWay)
        void this.writeUnderWay.then(
          () => closeSync(fd),
          () => closeSync(fd),
        );
      else closeSync(fd);
    }
    clearTimeout(this.doneTimer);
    this.doneTimer = undefined;
    this.doneLines = [];
  }

  /** Queues `line` (null: only the pending `done` lines) for the next write, with the pending `done` lines. */
  private enqueue(line: string | Buffer | null, written?: () => void): Promise<void> {
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject, written }));
    this.queued.push(...this.doneLines);
    this.doneLines = [];
    if (line !== null) this.queued.push(line);
    this.flushing ??= this.flush().finally(() => {
      this.flushing = undefined;
    });
    return done;
  }

  /**
   * Writes what is queued, in rounds, until nothing is. The first round waits for the I/O already
   * read to be parsed (setImmediate), so the transactions that arrived together share it. While
   * the homeserver sends one transaction at a time (as Synapse does) and the disk is fast, a round
   * goes out on the event loop: nothing else could be parsed during the write, and the thread
   * pool's round trip would only add its thread switches and a wake-up of the loop to every
   * acknowledgement. Otherwise the write goes through the thread pool, so the loop parses the next
   * transactions during the write and they share the next one (group commit).
   */
  private async flush(): Promise<void> {
    await new Promise((resolve) => setImmediate(resolve));
    while (this.queued.length > 0) {
      const lines = this.queued;
      const waiters = this.waiters;
      this.queued = [];
      this.waiters = [];
      try {
        if (this.fd === null) throw new Error("transaction store is closed");
        const data = Buffer.concat(lines.map((l) => (typeof l === "string" ? Buffer.from(l, "utf8") : l)));
        const started = process.hrtime.bigint();
        // Exactly one waiter for a transaction (a done-only write has none and no one waits for it).
        const lone = this.aloneStreak >= ALONE_STREAK && waiters.filter((w) => w.written).length === 1;
        const onLoop = lone && (this.syncWriteMs < SYNC_WRITE_MAX_MS || this.sinceSyncWrite >= SYNC_WRITE_PROBE_EVERY);
        if (onLoop) writeAllSync(this.fd, data);
        else {
          if (lone) this.sinceSyncWrite++;
          this.writeUnderWay = writeAll(this.fd, data).finally(() => (this.writeUnderWay = undefined));
          await this.writeUnderWay;
        }
        const ms = this.elapsedMs(started, onLoop);
        if (onLoop) {
          // A probe after slow writes counts for more, so a disk that recovered is back on the loop within a few.
          this.syncWriteMs += (ms - this.syncWriteMs) / (this.syncWriteMs < SYNC_WRITE_MAX_MS ? 8 : 2);
          this.sinceSyncWrite = 0;
        }
        this.flushMs += ms;
        this.flushes++;
        if (onLoop) this.syncFlushes++;
        this.lines += lines.length;
        waiters.forEach((w) => {
          w.written?.();
          w.resolve();
        });
      } catch (err) {
        waiters.forEach((w) => w.reject(err));
      }
      if (this.fd !== null && this.queued.length === 0 && this.lines > this.capacity * 2 + this.unhandled.size) {
        closeSync(this.fd);
        this.compact();
        this.fd = openSync(this.path, constants.O_WRONLY | constants.O_APPEND | constants.O_DSYNC | constants.O_NOFOLLOW);
      }
    }
  }

  /** How long a write took, from its start to its acknowledgement (a seam for tests to make the disk slow). */
  protected elapsedMs(started: bigint, _onLoop: boolean): number {
    return Number(process.hrtime.bigint() - started) / 1e6;
  }

  /** Records the txnId as most recently seen with this content, forgetting the oldest beyond `capacity`. */
  private remember(txnId: string, digest: string): void {
    this.seen.delete(txnId);
    this.seen.set(txnId, digest);
    while (this.seen.size > this.capacity) {
      const oldest = this.seen.keys().next();
      if (oldest.done) break;
      this.seen.delete(oldest.value);
    }
  }

  private readJournal(): void {
    const journal = readJournalLines(
      this.path,
      lineSchema,
      "it may hold acknowledged events, so it is not dropped: restore the file or remove it deliberately",
    );
    // Never acknowledged; open() rewrites the journal before appending to it.
    this.tornTail = journal.torn;
    for (const record of journal.entries) {
      this.lines++;
      if ("a" in record) {
        this.seq = Math.max(this.seq, record.a);
        const events = ("e" in record ? record.e : record.b.events) as MatrixEvent[];
        this.remember(record.id, contentDigest(events));
        this.unhandled.set(record.a, { seq: record.a, txnId: record.id, events });
      } else if ("d" in record) this.unhandled.delete(record.d);
      // Without a digest the content is unknown: not taken as seen (see the top of this file).
      else if (record.h !== undefined) this.remember(record.s, record.h);
    }
  }

  /**
   * Reads the unhandled transactions of inbox/ (older layout) into memory; true when there was an
   * older layout. Its transactions.log held txnIds without content, so they are not kept.
   */
  private migrateLegacy(): boolean {
    const logPath = join(this.dir, LEGACY_LOG);
    const inboxDir = join(this.dir, LEGACY_INBOX);
    if (!existsSync(logPath) && !existsSync(inboxDir)) return false;
    const pendingIds = new Set([...this.unhandled.values()].map((e) => e.txnId));
    if (existsSync(inboxDir)) {
      for (const name of readdirSync(inboxDir).sort()) {
        if (!/^\d{12}\.json$/.test(name)) continue;
        const file = join(inboxDir, name);
        let parsed;
        try {
          parsed = legacyInboxSchema.safeParse(JSON.parse(readFileSync(file, "utf8")));
        } catch {
          parsed = undefined;
        }
        if (!parsed?.success) {
          throw new StateError(
            file,
            "is corrupted; it holds acknowledged events, so it is not dropped: inspect it, then remove it deliberately",
          );
        }
        if (pendingIds.has(parsed.data.txnId)) continue;
        const seq = ++this.seq;
        const events = parsed.data.events as MatrixEvent[];
        this.unhandled.set(seq, { seq, txnId: parsed.data.txnId, events });
        this.remember(parsed.data.txnId, contentDigest(events));
      }
    }
    return true;
  }

  /** Rewrites the journal with the seen txnIds and the unhandled entries only; removes the older layout. */
  private compact(): void {
    const unhandledIds = new Set([...this.unhandled.values()].map((e) => e.txnId));
    const out: string[] = [...this.seen]
      .filter(([id]) => !unhandledIds.has(id))
      .map(([id, digest]) => `${JSON.stringify({ s: id, h: digest })}\n`);
    for (const entry of [...this.unhandled.values()].sort((a, b) => a.seq - b.seq)) {
      out.push(`${JSON.stringify({ a: entry.seq, id: entry.txnId, e: entry.events })}\n`);
    }
    writeFileAtomic(this.path, out.join(""), { mode: 0o600 });
    this.lines = out.length;
    this.tornTail = false;
    rmSync(join(this.dir, LEGACY_LOG), { force: true });
    rmSync(join(this.dir, LEGACY_INBOX), { recursive: true, force: true });
    fsyncDir(this.dir);
  }
}
