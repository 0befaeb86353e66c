import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TransactionStore, contentDigest, type InboxEntry, type MatrixEvent } from "../../src/store/transactions";
import { tempDir } from "../support/tmp";

describe("transaction store", () => {
  it("keeps an acknowledged but unhandled transaction across a crash, and knows its txnId", async () => {
    const dir = tempDir();
    const first = new TransactionStore(dir);
    first.open();
    await first.accept("t1", [{ type: "m.room.message", event_id: "$1" }]);
    first.close();
    const second = new TransactionStore(dir);
    const pending = second.open();
    expect(pending.map((p) => p.txnId)).toEqual(["t1"]);
    expect(second.has("t1")).toBe(true);
    second.done(pending[0]);
    await second.flushAndClose();
    const third = new TransactionStore(dir);
    expect(third.open()).toEqual([]);
    expect(third.has("t1")).toBe(true);
    third.close();
  });

  it("a corrupted journal line is an error naming the file, and it is not dropped; a torn last line is", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    await store.accept("t1", [{ type: "m.room.message" }]);
    await store.accept("t2", [{ type: "m.room.message" }]);
    await store.flushAndClose();
    const file = join(dir, "transactions.journal");
    const good = readFileSync(file, "utf8");
    // A write cut off by a crash: never acknowledged, dropped on open.
    writeFileSync(file, `${good}{"a":3,"id":"t3","e":[{"ty`);
    const reopened = new TransactionStore(dir);
    expect(reopened.open().map((e) => e.txnId)).toEqual(["t1", "t2"]);
    expect(reopened.has("t3")).toBe(false);
    reopened.close();
    const lines = good.split("\n");
    writeFileSync(file, [lines[0], "{ garbage", ...lines.slice(1)].join("\n"));
    expect(() => new TransactionStore(dir).open()).toThrow(/transactions\.journal: line 2 is corrupted; it may hold acknowledged events/);
    expect(readFileSync(file, "utf8")).toContain("{ garbage");
  });

  it("after a torn last line, what is appended next still loads: the fragment is gone before the next write", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    await store.accept("t1", [{ type: "m.room.message", event_id: "$1" }]);
    store.close();
    const file = join(dir, "transactions.journal");
    // Cut off by a crash, once mid-line and once just before its newline (it parses, but its write never finished).
    for (const fragment of ['{"a":2,"id":"t2","e":[{"ty', '{"a":2,"id":"t2","e":[{"type":"m.room.message","event_id":"$2"}]}']) {
      writeFileSync(file, `${readFileSync(file, "utf8")}${fragment}`);
      const next = new TransactionStore(dir);
      expect(next.open().map((e) => e.txnId)).toEqual(["t1"]);
      expect(next.has("t2")).toBe(false);
      await next.accept("t3", [{ type: "m.room.message", event_id: "$3" }]);
      next.close();
      const after = new TransactionStore(dir);
      expect(after.open().map((e) => e.txnId)).toEqual(["t1", "t3"]);
      after.close();
      writeFileSync(file, readFileSync(file, "utf8").replace(/.*"t3".*\n/, ""));
    }
  });

  it("concurrent transactions share disk writes; a second delivery during the write waits and is a duplicate", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    const results = await Promise.all([
      ...Array.from({ length: 20 }, (_, i) => store.accept(`c${i}`, [{ type: "m.room.message" }])),
      store.accept("c0", [{ type: "m.room.message" }]),
    ]);
    expect(results.filter((r) => r.result === "accepted")).toHaveLength(20);
    expect(results[20]).toEqual({ result: "duplicate" });
    expect(store.flushes).toBeLessThan(20);
    await store.flushAndClose();
  });

  it("done lines ride along with the next transaction's write, or go out on their own when none comes", async () => {
    jest.useFakeTimers({ doNotFake: ["setImmediate", "nextTick", "queueMicrotask", "Date"] });
    try {
      const dir = tempDir();
      const store = new TransactionStore(dir);
      store.open();
      for (let i = 0; i < 10; i++) {
        const intake = await store.accept(`s${i}`, [{ type: "m.room.message", event_id: `$s${i}` }]);
        if ("entry" in intake) store.done(intake.entry);
      }
      // One synchronous write per transaction, not one more for each done line.
      expect(store.flushes).toBe(10);
      jest.advanceTimersByTime(1000);
      // The write itself is real disk I/O: wait for it (bounded) without any timer.
      const until = Date.now() + 10_000;
      while (store.flushes < 11 && Date.now() < until) await new Promise((resolve) => setImmediate(resolve));
      expect(store.flushes).toBe(11);
      expect(readFileSync(join(dir, "transactions.journal"), "utf8")).toContain('{"d":10}');
      store.close();
      const again = new TransactionStore(dir);
      expect(again.open()).toEqual([]);
      again.close();
    } finally {
      jest.useRealTimers();
    }
  });

  it("events may be handled while their line is written: the done line follows it, and nothing is replayed", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir, 3);
    store.open();
    const handled: string[] = [];
    const accepts: Promise<unknown>[] = [];
    for (let i = 0; i < 12; i++) {
      // Handled at once, as the event queue does it, before the write that carries the line returned.
      accepts.push(
        store.accept(`e${i}`, [{ type: "m.room.message", event_id: `$e${i}` }], undefined, (entry) => {
          handled.push(entry.txnId);
          if (i !== 5) store.done(entry);
        }),
      );
      expect(handled).toHaveLength(i + 1);
    }
    await Promise.all(accepts);
    await store.flushAndClose();
    const journal = readFileSync(join(dir, "transactions.journal"), "utf8");
    // Compacted (capacity 3) after these writes, the one not handled kept; a done line never precedes its transaction.
    for (const [, seq] of journal.matchAll(/\{"d":(\d+)\}/g)) {
      const accepted = journal.indexOf(`{"a":${seq},`);
      if (accepted >= 0) expect(accepted).toBeLessThan(journal.indexOf(`{"d":${seq}}`));
    }
    const again = new TransactionStore(dir, 3);
    expect(again.open().map((e) => e.txnId)).toEqual(["e5"]);
    expect(again.has("e11")).toBe(true);
    again.close();
  });

  it("a transaction handled early but never written is not known: its redelivery is handled again", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    let handled = 0;
    // x0's write has begun; x1's line waits for the next one, and the service dies first (close()
    // drops queued lines): x1 was handled and never acknowledged.
    const first = store.accept("x0", [{ type: "m.room.message", event_id: "$x0" }]);
    await new Promise((resolve) => setImmediate(resolve));
    const lost = store.accept("x1", [{ type: "m.room.message", event_id: "$x1" }], undefined, (entry) => {
      handled++;
      store.done(entry);
    });
    store.close();
    await expect(lost).rejects.toThrow(/closed/);
    await first;
    const next = new TransactionStore(dir);
    expect(next.open().map((e) => e.txnId)).toEqual(["x0"]);
    expect(next.has("x1")).toBe(false);
    const again = await next.accept("x1", [{ type: "m.room.message", event_id: "$x1" }], undefined, () => handled++);
    expect(again).toMatchObject({ result: "accepted" });
    expect(handled).toBe(2);
    next.close();
  });

  it("one transaction at a time is written on the event loop; once two overlap, writes go to the thread pool for a while", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    const one = (id: string): Promise<unknown> => store.accept(id, [{ type: "m.room.message", event_id: `$${id}` }]);
    for (let i = 0; i < 20; i++) await one(`a${i}`);
    // After the first few (a homeserver that sends one at a time is told apart first), all on the loop.
    expect(store.syncFlushes).toBeGreaterThanOrEqual(10);
    // Two unanswered at once: the homeserver sends concurrently; the loop must stay free to parse.
    const sync = store.syncFlushes;
    await Promise.all([one("b1"), one("b2")]);
    for (let i = 0; i < 5; i++) await one(`c${i}`);
    expect(store.syncFlushes).toBe(sync);
    // One at a time for long enough again: back on the loop.
    for (let i = 0; i < 10; i++) await one(`d${i}`);
    expect(store.syncFlushes).toBeGreaterThan(sync);
    await store.flushAndClose();
    const again = new TransactionStore(dir);
    expect(again.open()).toHaveLength(37);
    again.close();
  });

  it("judges the disk by writes on the loop only: a slow trip through the thread pool does not keep writes off the loop", async () => {
    // The disk takes 0.3 ms; a write through the thread pool takes 3 ms to come back (a loaded
    // machine's thread switches), and then the disk slows to 5 ms, then recovers.
    let diskMs = 0.3;
    class LoadedMachine extends TransactionStore {
      protected override elapsedMs(_started: bigint, onLoop: boolean): number {
        return onLoop ? diskMs : 3;
      }
    }
    const dir = tempDir();
    const store = new LoadedMachine(dir);
    store.open();
    const one = (id: string): Promise<unknown> => store.accept(id, [{ type: "m.room.message", event_id: `$${id}` }]);
    for (let i = 0; i < 20; i++) await one(`a${i}`);
    expect(store.syncFlushes).toBeGreaterThanOrEqual(10);
    // An overlap sends writes to the pool, where they look slow; one at a time again, back on the loop.
    await Promise.all([one("b1"), one("b2")]);
    const before = store.syncFlushes;
    for (let i = 0; i < 20; i++) await one(`c${i}`);
    expect(store.syncFlushes - before).toBeGreaterThanOrEqual(10);
    // A slow disk: off the loop but for a probe every 64 writes...
    diskMs = 5;
    for (let i = 0; i < 10; i++) await one(`d${i}`);
    const slow = store.syncFlushes;
    for (let i = 0; i < 130; i++) await one(`e${i}`);
    expect(store.syncFlushes - slow).toBe(2);
    // ...which bring writes back once the disk is fast again.
    diskMs = 0.3;
    for (let i = 0; i < 300; i++) await one(`f${i}`);
    const recovered = store.syncFlushes;
    for (let i = 0; i < 20; i++) await one(`g${i}`);
    expect(store.syncFlushes - recovered).toBe(20);
    await store.flushAndClose();
  });

  it("a transaction that is not durable gets no line: handled, known until a restart, never replayed", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    const handled: string[] = [];
    const member = [{ type: "m.room.member", event_id: "$m1", state_key: "@a:hs", content: { membership: "join" } }];
    const intake = await store.accept("m1", member, undefined, (entry) => handled.push(entry.txnId), false);
    expect(intake).toMatchObject({ result: "accepted" });
    expect(handled).toEqual(["m1"]);
    if ("entry" in intake) store.done(intake.entry);
    // Delivered again before a restart: a replay, acknowledged and not handled again.
    expect(await store.accept("m1", member, undefined, (entry) => handled.push(entry.txnId), false)).toEqual({ result: "duplicate" });
    // A durable one after it is written as usual, and the first left no line, not even a done line.
    const durable = await store.accept("x1", [{ type: "m.room.message", event_id: "$x1" }], undefined, (entry) =>
      handled.push(entry.txnId),
    );
    await store.flushAndClose();
    const lines = readFileSync(join(dir, "transactions.journal"), "utf8").trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain('"id":"x1"');
    expect(store.unjournaled).toBe(1);
    const again = new TransactionStore(dir);
    // Only the durable one comes back (never marked done); the other is forgotten with the process.
    expect(again.open().map((e) => e.txnId)).toEqual(["x1"]);
    expect(again.has("m1")).toBe(false);
    expect("entry" in durable).toBe(true);
    again.close();
  });

  it("compacts to the most recent txnIds and the unhandled entries", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir, 5);
    store.open();
    for (let i = 0; i < 30; i++) {
      const intake = await store.accept(`k${i}`, [{ type: "m.room.message", event_id: `$k${i}` }]);
      if ("entry" in intake && i !== 3) store.done(intake.entry);
    }
    await store.flushAndClose();
    const lines = readFileSync(join(dir, "transactions.journal"), "utf8").trim().split("\n");
    expect(lines.length).toBeLessThan(20);
    const again = new TransactionStore(dir, 5);
    expect(again.open().map((e) => e.txnId)).toEqual(["k3"]);
    expect(again.has("k29") && again.has("k3")).toBe(true);
    again.close();
  });

  it("migrates the older layout (transactions.log + inbox/) without losing an unhandled transaction", () => {
    const dir = tempDir();
    mkdirSync(join(dir, "inbox"));
    writeFileSync(join(dir, "transactions.log"), '"old1"\n"old2"\n');
    writeFileSync(join(dir, "inbox", "000000000002.json"), JSON.stringify({ seq: 2, txnId: "old2", events: [{ type: "m.room.message" }] }));
    const store = new TransactionStore(dir);
    expect(store.open().map((e) => e.txnId)).toEqual(["old2"]);
    // The log held txnIds without their content: a transaction "old1" now is handled, not dropped.
    expect(store.has("old1")).toBe(false);
    expect(store.has("old2")).toBe(true);
    expect(existsSync(join(dir, "inbox")) || existsSync(join(dir, "transactions.log"))).toBe(false);
    store.close();
    expect(new TransactionStore(dir).open().map((e) => e.txnId)).toEqual(["old2"]);
  });

  it("stores the body as received (newlines inside included) and replays the same events", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    const body = { events: [{ type: "m.room.message", content: { body: "line one\nline two" } }], ephemeral: [] };
    const raw = Buffer.from(JSON.stringify(body, null, 2), "utf8");
    expect(raw.includes(10)).toBe(true);
    await store.accept("r1", body.events, raw);
    await store.flushAndClose();
    const lines = readFileSync(join(dir, "transactions.journal"), "utf8").trim().split("\n");
    expect(lines).toHaveLength(1);
    const again = new TransactionStore(dir);
    expect(again.open()).toEqual([{ seq: 1, txnId: "r1", events: body.events }]);
    again.close();
  });
});

const msg = (id: string, extra: Partial<MatrixEvent> = {}): MatrixEvent => ({
  type: "m.room.message",
  event_id: id,
  room_id: "!r:hive.test",
  sender: "@op:hive.test",
  content: { msgtype: "m.text", body: `!hive status ${id}` },
  ...extra,
});

/** Accepts and marks done, as the event queue would once the events ran; returns the result. */
async function handle(store: TransactionStore, txnId: string, events: MatrixEvent[], raw?: Buffer): Promise<string> {
  const intake = await store.accept(txnId, events, raw);
  if ("entry" in intake) store.done(intake.entry);
  return intake.result;
}

describe("a replay is the same txnId with the same events", () => {
  it("the digest follows the event IDs in order, not what the homeserver recomputes per send", () => {
    const a = msg("$a", { unsigned: { age: 10 } });
    const b = msg("$b");
    expect(contentDigest([a, b])).toBe(contentDigest([{ ...a, unsigned: { age: 99_000, transaction_id: "x" } }, b]));
    expect(contentDigest([a, b])).not.toBe(contentDigest([b, a]));
    expect(contentDigest([a])).not.toBe(contentDigest([a, b]));
    expect(contentDigest([a])).not.toBe(contentDigest([msg("$c")]));
    // Events without an ID (not sent by real homeservers) are told apart by their JSON.
    const bare = { type: "m.typing", content: { user_ids: ["@x:hive.test"] } };
    expect(contentDigest([bare])).toBe(contentDigest([{ ...bare, unsigned: { age: 5 } }]));
    expect(contentDigest([bare])).not.toBe(contentDigest([{ ...bare, content: { user_ids: [] } }]));
    expect(contentDigest([])).toMatch(/^[0-9a-f]{32}$/);
    // Digests are kept in journals across versions: the definition (SHA-256 of each ID or JSON
    // followed by a newline, 128 bits in hex) must not drift.
    const expected = createHash("sha256").update("$a\n$b\n").digest("hex").slice(0, 32);
    expect(contentDigest([a, b])).toBe(expected);
    expect(contentDigest([bare])).toBe(
      createHash("sha256")
        .update(`${JSON.stringify({ ...bare, unsigned: undefined })}\n`)
        .digest("hex")
        .slice(0, 32),
    );
  });

  it("a known txnId with other events is handled as new; the same events again are a replay", async () => {
    const store = new TransactionStore(tempDir());
    store.open();
    expect(await handle(store, "1", [msg("$a")])).toBe("accepted");
    expect(await handle(store, "1", [msg("$a", { unsigned: { age: 5000 } })])).toBe("duplicate");
    expect(await handle(store, "1", [msg("$b")])).toBe("reused_id");
    // The txnId now stands for the newer transaction: its retry is the replay, the older one is not.
    expect(await handle(store, "1", [msg("$b")])).toBe("duplicate");
    expect(await handle(store, "1", [msg("$a")])).toBe("reused_id");
    await store.flushAndClose();
  });

  it("a homeserver that numbers anew after a restart: every reused ID is handled, across restarts of the store too", async () => {
    const dir = tempDir();
    const before = new TransactionStore(dir, 50);
    before.open();
    for (let i = 1; i <= 40; i++) expect(await handle(before, String(i), [msg(`$old${i}`)])).toBe("accepted");
    await before.flushAndClose();

    // hive-matrix restarts too (and its journal is compacted: capacity 50, 80 lines written).
    const after = new TransactionStore(dir, 50);
    expect(after.open()).toEqual([]);
    const results = [];
    for (let i = 1; i <= 5; i++) results.push(await handle(after, String(i), [msg(`$new${i}`)]));
    expect(results).toEqual(Array(5).fill("reused_id"));
    expect(await handle(after, "3", [msg("$new3")])).toBe("duplicate");
    await after.flushAndClose();

    const third = new TransactionStore(dir, 50);
    expect(third.open()).toEqual([]);
    expect(await handle(third, "3", [msg("$new3")])).toBe("duplicate");
    expect(await handle(third, "3", [msg("$old3")])).toBe("reused_id");
    expect(await handle(third, "40", [msg("$old40")])).toBe("duplicate");
    await third.flushAndClose();
  });

  it("a retry of an acknowledged transaction is a replay after a crash, though its bytes differ", async () => {
    const dir = tempDir();
    const first = new TransactionStore(dir);
    first.open();
    const events = [msg("$x", { unsigned: { age: 12 } })];
    await first.accept("9", events, Buffer.from(JSON.stringify({ events })));
    first.close();
    const second = new TransactionStore(dir);
    const pending = second.open();
    expect(pending.map((e: InboxEntry) => e.txnId)).toEqual(["9"]);
    const retried = [msg("$x", { unsigned: { age: 4012 } })];
    expect(await second.accept("9", retried, Buffer.from(JSON.stringify({ events: retried, ephemeral: [] })))).toEqual({
      result: "duplicate",
    });
    await second.flushAndClose();
  });

  it("loads a journal written before digests were kept: seen lines without one are unknown content, accepted lines keep theirs", async () => {
    const dir = tempDir();
    const file = join(dir, "transactions.journal");
    const old = [{ s: "1" }, { s: "2" }, { a: 3, id: "3", e: [msg("$three")] }, { d: 3 }, { a: 4, id: "4", e: [msg("$four")] }];
    writeFileSync(file, old.map((l) => `${JSON.stringify(l)}\n`).join(""));
    const store = new TransactionStore(dir);
    expect(store.open().map((e) => e.txnId)).toEqual(["4"]);
    // Content unknown: handled (a renumbered "1" must not be lost; a true retry of it is harmless, see the store's notes).
    expect(store.has("1")).toBe(false);
    expect(await handle(store, "1", [msg("$new1")])).toBe("accepted");
    // Accepted lines carry their events, so their retries are still recognised.
    expect(await handle(store, "3", [msg("$three")])).toBe("duplicate");
    expect(await handle(store, "4", [msg("$four")])).toBe("duplicate");
    expect(await handle(store, "3", [msg("$other")])).toBe("reused_id");
    await store.flushAndClose();
  });

  it("compaction keeps each txnId's digest", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir, 3);
    store.open();
    for (let i = 0; i < 10; i++) await handle(store, `c${i}`, [msg(`$c${i}`)]);
    await store.flushAndClose();
    const lines = readFileSync(join(dir, "transactions.journal"), "utf8").trim().split("\n");
    expect(lines.length).toBeLessThan(10);
    for (const line of lines.filter((l) => l.startsWith('{"s"')))
      expect(JSON.parse(line)).toMatchObject({ h: expect.stringMatching(/^[0-9a-f]{32}$/) });
    const again = new TransactionStore(dir, 3);
    again.open();
    expect(await handle(again, "c9", [msg("$c9")])).toBe("duplicate");
    expect(await handle(again, "c8", [msg("$other")])).toBe("reused_id");
    // Beyond capacity the oldest are forgotten: an ID that old is simply new.
    expect(await handle(again, "c0", [msg("$c0")])).toBe("accepted");
    again.close();
  });
});

it("a transaction whose own write triggered a compaction survives a crash before it was handled", async () => {
  const dir = tempDir();
  const store = new TransactionStore(dir, 3);
  store.open();
  for (let i = 0; i < 9; i++) await handle(store, `w${i}`, [msg(`$w${i}`)]);
  // The 10th line written exceeds 2 × capacity: the journal is compacted right after this write.
  const last = await store.accept("w9", [msg("$w9")]);
  expect(last.result).toBe("accepted");
  store.close();
  const reopened = new TransactionStore(dir, 3);
  expect(reopened.open().map((e) => e.txnId)).toEqual(["w9"]);
  expect(reopened.has("w8")).toBe(true);
  reopened.close();
});
