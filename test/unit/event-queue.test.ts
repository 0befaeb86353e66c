import pino from "pino";
import { EventQueue } from "../../src/events";
import { Metrics } from "../../src/metrics";
import type { InboxEntry, MatrixEvent, TransactionStore } from "../../src/store/transactions";

function queue(): { q: EventQueue; done: number[]; metrics: Metrics } {
  const done: number[] = [];
  const store = { done: (entry: InboxEntry) => done.push(entry.seq) } as unknown as TransactionStore;
  const metrics = new Metrics();
  return { q: new EventQueue(store, pino({ level: "silent" }), metrics), done, metrics };
}

const entry = (seq: number, ...ids: string[]): InboxEntry => ({
  seq,
  txnId: `t${seq}`,
  events: ids.map((id): MatrixEvent => ({ type: "m.room.message", event_id: id })),
});

describe("event queue", () => {
  it("runs every handler for every event in order, waiting only for handlers that return a promise", async () => {
    const { q, done } = queue();
    const seen: string[] = [];
    const tick = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 5));
    q.on((e) => void seen.push(`sync1 ${e.event_id}`));
    q.on(async (e) => {
      // Only for the second event: the others must not wait for it.
      if (e.event_id === "$2") await tick();
      seen.push(`async ${e.event_id}`);
    });
    q.on((e) => {
      seen.push(`sync2 ${e.event_id}`);
      return e.event_id === "$3" ? tick().then(() => void seen.push(`late ${e.event_id}`)) : undefined;
    });
    q.push(entry(1, "$1", "$2"));
    q.push(entry(2, "$3", "$4"));
    q.start();
    await q.idle();
    expect(seen).toEqual([
      "sync1 $1",
      "async $1",
      "sync2 $1",
      "sync1 $2",
      "async $2",
      "sync2 $2",
      "sync1 $3",
      "async $3",
      "sync2 $3",
      "late $3",
      "sync1 $4",
      "async $4",
      "sync2 $4",
    ]);
    expect(done).toEqual([1, 2]);
  });

  it("a backlog does not hold the event loop: I/O callbacks run between two transactions", async () => {
    const { q, done } = queue();
    const seen: string[] = [];
    q.on((e) => {
      seen.push(e.event_id ?? "");
      // Stands for a journal write's completion or a request arriving while the backlog is handled.
      if (e.event_id === "$1") setImmediate(() => seen.push("io"));
    });
    q.push(entry(1, "$1", "$2"));
    q.push(entry(2, "$3"));
    q.push(entry(3, "$4"));
    q.start();
    await q.idle();
    expect(seen).toEqual(["$1", "$2", "io", "$3", "$4"]);
    expect(done).toEqual([1, 2, 3]);
  });

  it("a handler that throws or rejects is counted and logged; the other handlers and events still run", async () => {
    const { q, done, metrics } = queue();
    const seen: string[] = [];
    q.on((e) => {
      if (e.event_id === "$1") throw new Error("sync boom");
    });
    q.on((e) => (e.event_id === "$2" ? Promise.reject(new Error("async boom")) : undefined));
    q.on((e) => void seen.push(e.event_id ?? "?"));
    q.push(entry(1, "$1", "$2", "$3"));
    q.start();
    await q.idle();
    expect(seen).toEqual(["$1", "$2", "$3"]);
    expect(done).toEqual([1]);
    const dropped = (await metrics.eventsDropped.get()).values.find((v) => v.labels.reason === "handler_failed");
    expect(dropped?.value).toBe(2);
    expect((await metrics.events.get()).values.reduce((n, v) => n + v.value, 0)).toBe(3);
  });
});
