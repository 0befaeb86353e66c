/**
 * Durable intake of appservice transactions.
 *
 * A transaction is acknowledged only after its events are on disk: `accept` writes them to an
 * inbox file (fsynced, atomic) and records the txnId, and only then does the HTTP layer answer
 * 200. Events are handled from the inbox; the file is removed once they are done. After a crash,
 * the inbox is replayed, and its txnIds count as seen, so the homeserver's redelivery of the same
 * transaction is acknowledged without being queued twice.
 *
 * Seen txnIds live in an append-only log (one JSON string per line, fdatasync'd), bounded by
 * compaction to the most recent `capacity` ids.
 */
import { closeSync, fdatasyncSync, mkdirSync, openSync, readFileSync, readdirSync, unlinkSync, writeSync } from "node:fs";
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

const inboxSchema = z.object({
  seq: z.number().int(),
  txnId: z.string(),
  events: z.array(z.object({ type: z.string() }).passthrough()),
});

const LOG = "transactions.log";
const INBOX = "inbox";

export class TransactionStore {
  private readonly seen = new Set<string>();
  private readonly order: string[] = [];
  private fd: number | null = null;
  private logLines = 0;
  private seq = 0;

  constructor(
    private readonly dir: string,
    private readonly capacity = 10_000,
  ) {}

  /** Loads the log and returns the inbox entries left unhandled by the previous run, oldest first. */
  open(): InboxEntry[] {
    const logPath = join(this.dir, LOG);
    mkdirSync(join(this.dir, INBOX), { recursive: true, mode: 0o700 });
    let text = "";
    try {
      text = readFileSync(logPath, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT")
        throw new StateError(logPath, `cannot read (${(err as NodeJS.ErrnoException).code})`);
    }
    const lines = text.split("\n");
    lines.forEach((line, i) => {
      if (line === "") return;
      try {
        const id: unknown = JSON.parse(line);
        if (typeof id !== "string") throw new Error("not a string");
        this.remember(id);
      } catch {
        // A torn last line is what a crash during append leaves; anything else is corruption.
        if (i < lines.length - 2 || (i === lines.length - 2 && text.endsWith("\n"))) {
          throw new StateError(logPath, `line ${i + 1} is corrupted; restore the file or remove it deliberately`);
        }
      }
    });
    this.logLines = this.order.length;
    this.fd = openSync(logPath, "a", 0o600);
    const pending = this.readInbox();
    for (const entry of pending) {
      this.seq = Math.max(this.seq, entry.seq);
      this.remember(entry.txnId);
    }
    if (this.logLines > this.capacity * 2) this.compact();
    return pending;
  }

  has(txnId: string): boolean {
    return this.seen.has(txnId);
  }

  /** Makes the transaction durable. After this returns, acknowledging it is safe. */
  accept(txnId: string, events: MatrixEvent[]): InboxEntry {
    if (this.fd === null) throw new Error("transaction store is not open");
    const entry: InboxEntry = { seq: ++this.seq, txnId, events };
    writeFileAtomic(this.inboxPath(entry.seq), JSON.stringify(entry), { mode: 0o600 });
    writeSync(this.fd, `${JSON.stringify(txnId)}\n`);
    fdatasyncSync(this.fd);
    this.logLines++;
    this.remember(txnId);
    if (this.logLines > this.capacity * 2) this.compact();
    return entry;
  }

  /** Called once every event of the entry has been handled. */
  done(entry: InboxEntry): void {
    try {
      unlinkSync(this.inboxPath(entry.seq));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
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

  private compact(): void {
    const logPath = join(this.dir, LOG);
    if (this.fd !== null) closeSync(this.fd);
    writeFileAtomic(logPath, this.order.map((id) => `${JSON.stringify(id)}\n`).join(""), { mode: 0o600 });
    fsyncDir(this.dir);
    this.fd = openSync(logPath, "a", 0o600);
    this.logLines = this.order.length;
  }

  private inboxPath(seq: number): string {
    return join(this.dir, INBOX, `${String(seq).padStart(12, "0")}.json`);
  }

  private readInbox(): InboxEntry[] {
    const dir = join(this.dir, INBOX);
    const entries: InboxEntry[] = [];
    for (const name of readdirSync(dir).sort()) {
      if (!/^\d{12}\.json$/.test(name)) continue;
      const file = join(dir, name);
      let parsed;
      try {
        parsed = inboxSchema.safeParse(JSON.parse(readFileSync(file, "utf8")));
      } catch {
        parsed = undefined;
      }
      if (!parsed?.success)
        throw new StateError(
          file,
          "is corrupted; it holds acknowledged events, so it is not dropped: inspect it, then remove it deliberately",
        );
      entries.push(parsed.data as InboxEntry);
    }
    return entries;
  }
}
