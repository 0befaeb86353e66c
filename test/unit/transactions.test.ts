import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TransactionStore } from "../../src/store/transactions";
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

  it("concurrent transactions share disk writes; a second delivery during the write waits and is a duplicate", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    const results = await Promise.all([
      ...Array.from({ length: 20 }, (_, i) => store.accept(`c${i}`, [{ type: "m.room.message" }])),
      store.accept("c0", [{ type: "m.room.message" }]),
    ]);
    expect(results.filter((r) => r !== undefined)).toHaveLength(20);
    expect(results[20]).toBeUndefined();
    expect(store.flushes).toBeLessThan(20);
    await store.flushAndClose();
  });

  it("compacts to the most recent txnIds and the unhandled entries", async () => {
    const dir = tempDir();
    const store = new TransactionStore(dir, 5);
    store.open();
    for (let i = 0; i < 30; i++) {
      const entry = await store.accept(`k${i}`, [{ type: "m.room.message" }]);
      if (entry && i !== 3) store.done(entry);
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
    expect(store.has("old1")).toBe(true);
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
