/**
 * Durable intake of appservice transactions.
 *
 * A transaction is acknowledged only after its events are on disk: `accept` appends one line
 * (txnId and events) to a journal opened with O_DSYNC, and resolves once the write that carried it
 * returned. Writes run on libuv's thread pool, so the event loop keeps parsing requests meanwhile,
 * and every line queued during one write goes out together in the next: concurrent transactions
 * share one disk flush (group commit). Handled transactions get a `done` line that needs no flush
 * of its own (a crash before it is written replays the transaction; handlers are idempotent or, for
 * commands, de-duplicated by event ID). After a crash the unhandled transactions are replayed and
 * their txnIds count as seen, so the homeserver's redelivery is acknowledged without being queued
 * twice. The journal is compacted to the most recent `capacity` txnIds plus unhandled entries.
 *
 * Journal lines: {"a":seq,"id":txnId,"e":[events]} accepted, {"d":seq} done, {"s":txnId} seen.
 * The older layout (transactions.log + inbox/) is migrated on open.
 */
import { closeSync, constants, existsSync, openSync, readFileSync, readdirSync, rmSync, write } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { fsyncDir, writeFileAtomic } from "./atomic-file";
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

const eventsSchema = z.array(z.object({ type: z.string() }).passthrough());
const lineSchema = z.union([
  z.object({ a: z.number().int(), id: z.string(), e: eventsSchema }),
  // The transaction body as the homeserver sent it: {"events": [...], ...}.
  z.object({ a: z.number().int(), id: z.string(), b: z.object({ events: eventsSchema }).passthrough() }),
  z.object({ d: z.number().int() }),
  z.object({ s: z.string() }),
]);
const legacyInboxSchema = z.object({ seq: z.number().int(), txnId: z.string(), events: eventsSchema });

const JOURNAL = "transactions.journal";
const LEGACY_LOG = "transactions.log";
const LEGACY_INBOX = "inbox";

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

function writeAll(fd: number, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (offset: number): void => {
      write(fd, data, offset, data.length - offset, null, (err, written) => {
        if (err) reject(err);
        else if (offset + written < data.length) step(offset + written);
        else resolve();
      });
    };
    step(0);
  });
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
  private readonly seen = new Set<string>();
  private readonly order: string[] = [];
  /** Accepted and not yet done, by seq: what a compaction must keep. */
  private readonly unhandled = new Map<number, InboxEntry>();
  /** Transactions whose write is under way: a second delivery waits for it instead of being acknowledged early. */
  private readonly inFlight = new Map<string, Promise<void>>();
  private fd: number | null = null;
  private seq = 0;
  private lines = 0;
  private queued: (string | Buffer)[] = [];
  private waiters: Waiter[] = [];
  private flushing: Promise<void> | undefined;
  /** Disk writes made: fewer than transactions when group commit is at work. */
  flushes = 0;

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
    if (migrated || this.lines > this.capacity * 2 + this.unhandled.size) this.compact();
    this.fd = openSync(
      this.path,
      constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC | constants.O_NOFOLLOW,
      0o600,
    );
    return [...this.unhandled.values()].sort((a, b) => a.seq - b.seq);
  }

  /** True when the transaction is durably known (or being written: `accept` then waits for that write). */
  has(txnId: string): boolean {
    return this.seen.has(txnId) || this.inFlight.has(txnId);
  }

  /**
   * Makes the transaction durable; after this resolves, acknowledging it is safe. Resolves
   * undefined for a transaction known already (after waiting for its write when one is under way).
   */
  async accept(txnId: string, events: MatrixEvent[], raw?: Buffer): Promise<InboxEntry | undefined> {
    if (this.fd === null) throw new Error("transaction store is not open");
    if (this.seen.has(txnId)) return undefined;
    const writing = this.inFlight.get(txnId);
    if (writing) {
      await writing;
      return undefined;
    }
    const entry: InboxEntry = { seq: ++this.seq, txnId, events };
    const written = this.enqueue(rawLine(entry, raw) ?? `${JSON.stringify({ a: entry.seq, id: txnId, e: events })}\n`);
    this.inFlight.set(txnId, written);
    try {
      await written;
    } finally {
      this.inFlight.delete(txnId);
    }
    this.remember(txnId);
    this.unhandled.set(entry.seq, entry);
    return entry;
  }

  /** Called once every event of the entry has been handled. */
  done(entry: InboxEntry): void {
    if (!this.unhandled.delete(entry.seq) || this.fd === null) return;
    // Rides along with the next write; nobody waits for it.
    this.enqueue(`${JSON.stringify({ d: entry.seq })}\n`).catch(() => undefined);
  }

  /** Waits for queued writes, then closes the journal. */
  async flushAndClose(): Promise<void> {
    while (this.flushing) await this.flushing;
    this.close();
  }

  /** Closes at once; queued lines not yet written are lost, as in a crash. */
  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  private enqueue(line: string | Buffer): Promise<void> {
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.queued.push(line);
    this.flushing ??= this.flush().finally(() => {
      this.flushing = undefined;
    });
    return done;
  }

  private async flush(): Promise<void> {
    while (this.queued.length > 0) {
      const lines = this.queued;
      const waiters = this.waiters;
      this.queued = [];
      this.waiters = [];
      try {
        if (this.fd === null) throw new Error("transaction store is closed");
        await writeAll(this.fd, Buffer.concat(lines.map((l) => (typeof l === "string" ? Buffer.from(l, "utf8") : l))));
        this.flushes++;
        this.lines += lines.length;
        waiters.forEach((w) => w.resolve());
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

  private remember(txnId: string): void {
    if (this.seen.has(txnId)) return;
    this.seen.add(txnId);
    this.order.push(txnId);
    while (this.order.length > this.capacity) {
      const old = this.order.shift();
      if (old !== undefined) this.seen.delete(old);
    }
  }

  private readJournal(): void {
    let text = "";
    try {
      text = readFileSync(this.path, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      throw new StateError(this.path, `cannot read (${code ?? String(err)})`);
    }
    const lines = text.split("\n");
    lines.forEach((line, i) => {
      if (line === "") return;
      // The last line without a newline is a write cut off by a crash: never acknowledged, so dropped.
      const torn = i === lines.length - 1;
      let parsed;
      try {
        parsed = lineSchema.safeParse(JSON.parse(line));
      } catch {
        parsed = undefined;
      }
      if (!parsed?.success) {
        if (torn) return;
        throw new StateError(
          this.path,
          `line ${i + 1} is corrupted; it may hold acknowledged events, so it is not dropped: restore the file or remove it deliberately`,
        );
      }
      const record = parsed.data;
      this.lines++;
      if ("a" in record) {
        this.seq = Math.max(this.seq, record.a);
        this.remember(record.id);
        const events = ("e" in record ? record.e : record.b.events) as MatrixEvent[];
        this.unhandled.set(record.a, { seq: record.a, txnId: record.id, events });
      } else if ("d" in record) this.unhandled.delete(record.d);
      else this.remember(record.s);
    });
  }

  /** Reads transactions.log and inbox/ of the older layout into memory; true when there was any. */
  private migrateLegacy(): boolean {
    const logPath = join(this.dir, LEGACY_LOG);
    const inboxDir = join(this.dir, LEGACY_INBOX);
    if (!existsSync(logPath) && !existsSync(inboxDir)) return false;
    if (existsSync(logPath)) {
      const text = readFileSync(logPath, "utf8");
      for (const line of text.split("\n")) {
        try {
          const id: unknown = JSON.parse(line);
          if (typeof id === "string") this.remember(id);
        } catch {
          // A torn line of the old log held only a txnId.
        }
      }
    }
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
        this.unhandled.set(seq, { seq, txnId: parsed.data.txnId, events: parsed.data.events as MatrixEvent[] });
        this.remember(parsed.data.txnId);
      }
    }
    return true;
  }

  /** Rewrites the journal with the seen txnIds and the unhandled entries only; removes the older layout. */
  private compact(): void {
    const unhandledIds = new Set([...this.unhandled.values()].map((e) => e.txnId));
    const out: string[] = this.order.filter((id) => !unhandledIds.has(id)).map((id) => `${JSON.stringify({ s: id })}\n`);
    for (const entry of [...this.unhandled.values()].sort((a, b) => a.seq - b.seq)) {
      out.push(`${JSON.stringify({ a: entry.seq, id: entry.txnId, e: entry.events })}\n`);
    }
    writeFileAtomic(this.path, out.join(""), { mode: 0o600 });
    this.lines = out.length;
    rmSync(join(this.dir, LEGACY_LOG), { force: true });
    rmSync(join(this.dir, LEGACY_INBOX), { recursive: true, force: true });
    fsyncDir(this.dir);
  }
}
