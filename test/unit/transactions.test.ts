import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TransactionStore } from "../../src/store/transactions";
import { tempDir } from "../support/tmp";

describe("transaction store", () => {
  it("keeps an acknowledged but unhandled transaction across a crash, and knows its txnId", () => {
    const dir = tempDir();
    const first = new TransactionStore(dir);
    first.open();
    first.accept("t1", [{ type: "m.room.message", event_id: "$1" }]);
    first.close();
    const second = new TransactionStore(dir);
    const pending = second.open();
    expect(pending.map((p) => p.txnId)).toEqual(["t1"]);
    expect(second.has("t1")).toBe(true);
    second.done(pending[0]);
    second.close();
    const third = new TransactionStore(dir);
    expect(third.open()).toEqual([]);
    expect(third.has("t1")).toBe(true);
    third.close();
  });

  it("a corrupted inbox entry is an error naming it, and it is not dropped", () => {
    const dir = tempDir();
    const store = new TransactionStore(dir);
    store.open();
    store.accept("t1", [{ type: "m.room.message" }]);
    store.close();
    const file = join(dir, "inbox", "000000000001.json");
    writeFileSync(file, "{ truncated");
    expect(() => new TransactionStore(dir).open()).toThrow(/000000000001\.json: is corrupted; it holds acknowledged events/);
    expect(readFileSync(file, "utf8")).toBe("{ truncated");
  });
});
