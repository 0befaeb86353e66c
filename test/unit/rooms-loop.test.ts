/**
 * Scheduling of the rooms reconcile: bursts coalesce into one follow-up run, a failing run does
 * not stop the loop, stop() waits for the run in progress, relevant events trigger a run.
 */
import { createLogger } from "../../src/logging";
import { ReconcileLoop, type Reconciling } from "../../src/rooms/loop";
import type { DesiredMembers, ReconcileReport } from "../../src/rooms/types";
import type { MatrixEvent } from "../../src/store/transactions";
import { captureLogs } from "../support/logs";

const SPACE = "!space:hive.example";

interface Gate {
  release: () => void;
  wait: Promise<void>;
}

function gate(): Gate {
  let release!: () => void;
  const wait = new Promise<void>((r) => (release = r));
  return { release, wait };
}

/** A reconciler whose runs block until the test releases them. */
class FakeReconciler implements Reconciling {
  readonly calls: { members: DesiredMembers; reason?: string }[] = [];
  gates: Gate[] = [];
  failNext = false;
  autoRelease = false;

  async reconcile(members: DesiredMembers, reason?: string): Promise<ReconcileReport> {
    this.calls.push({ members, reason });
    if (this.failNext) {
      this.failNext = false;
      throw new Error("boom");
    }
    if (!this.autoRelease) {
      const g = gate();
      this.gates.push(g);
      await g.wait;
    }
    return { changes: [], problems: [], writes: 0, at: Date.now(), durationMs: 0, reason };
  }

  isRelevant(event: MatrixEvent): boolean {
    return event.room_id === SPACE && typeof event.state_key === "string";
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

function loop(
  fake: FakeReconciler,
  intervalSeconds = 0,
  members?: () => DesiredMembers,
  events: { eventDelayMs?: number; minEventIntervalMs?: number } = {},
): { loop: ReconcileLoop; logs: string[] } {
  const { lines, destination } = captureLogs();
  const { logger } = createLogger({ level: "debug", destination });
  return {
    loop: new ReconcileLoop(fake, { members: members ?? (() => ({ agents: ["@a:x"], leaving: [] })), intervalSeconds, logger, ...events }),
    logs: lines,
  };
}

const relevant = (n: number): MatrixEvent => ({ type: "m.room.join_rules", room_id: SPACE, state_key: "", content: { n } });

describe("ReconcileLoop", () => {
  it("triggers in the same tick make one run, with the members asked at run time", async () => {
    const fake = new FakeReconciler();
    fake.autoRelease = true;
    const { loop: l } = loop(fake);
    const reports = await Promise.all([l.trigger("a"), l.trigger("b"), l.trigger("a")]);
    expect(fake.calls).toEqual([{ members: { agents: ["@a:x"], leaving: [] }, reason: "a, b" }]);
    expect(reports[0]).toBe(reports[1]);
    expect(l.running).toBe(false);
  });

  it("any number of triggers during a run cause exactly one follow-up run", async () => {
    const fake = new FakeReconciler();
    const { loop: l } = loop(fake);
    const first = l.trigger("first");
    await tick();
    expect(fake.calls).toHaveLength(1);
    const burst = [l.trigger("e1"), l.trigger("e2"), l.trigger("e3"), l.trigger("e4")];
    await tick();
    expect(fake.calls).toHaveLength(1);
    fake.gates[0].release();
    expect((await first)?.reason).toBe("first");
    await tick();
    expect(fake.calls).toHaveLength(2);
    expect(fake.calls[1].reason).toBe("e1, e2, e3, e4");
    fake.gates[1].release();
    const reports = await Promise.all(burst);
    expect(new Set(reports).size).toBe(1);
    expect(reports[0]?.reason).toBe("e1, e2, e3, e4");
    await tick();
    expect(fake.calls).toHaveLength(2);
    expect(l.running).toBe(false);
  });

  it("a failing run (or members callback) is logged and the loop goes on", async () => {
    const fake = new FakeReconciler();
    fake.autoRelease = true;
    fake.failNext = true;
    let throwMembers = false;
    const { loop: l, logs } = loop(fake, 0, () => {
      if (throwMembers) throw new Error("no agents");
      return { agents: [], leaving: [] };
    });
    expect(await l.trigger("x")).toBeUndefined();
    expect(logs.join("")).toMatch(/"err":"boom","msg":"rooms reconcile failed"/);
    throwMembers = true;
    expect(await l.trigger("y")).toBeUndefined();
    expect(logs.join("")).toMatch(/no agents/);
    throwMembers = false;
    expect(await l.trigger("z")).toMatchObject({ reason: "z" });
    expect(l.runs).toBe(3);
  });

  it("stop() waits for the run in progress, drops the follow-up, and ignores later triggers", async () => {
    const fake = new FakeReconciler();
    const { loop: l } = loop(fake);
    void l.start();
    await tick();
    const followUp = l.trigger("during");
    let stopped = false;
    const stopping = l.stop().then(() => (stopped = true));
    await tick();
    expect(stopped).toBe(false);
    fake.gates[0].release();
    await stopping;
    expect(await followUp).toBeUndefined();
    expect(await l.trigger("after")).toBeUndefined();
    expect(fake.calls.map((c) => c.reason)).toEqual(["startup"]);
  });

  it("runs periodically when an interval is set, and not at all when it is 0", async () => {
    const fake = new FakeReconciler();
    fake.autoRelease = true;
    const { loop: periodic } = loop(fake, 0.05);
    await periodic.start();
    await new Promise((r) => setTimeout(r, 180));
    await periodic.stop();
    expect(fake.calls.filter((c) => c.reason === "periodic").length).toBeGreaterThanOrEqual(2);

    jest.useFakeTimers();
    try {
      const idle = new FakeReconciler();
      idle.autoRelease = true;
      const { loop: off } = loop(idle, 0);
      await off.start();
      expect(jest.getTimerCount()).toBe(0);
      await jest.advanceTimersByTimeAsync(3_600_000);
      await off.stop();
      expect(idle.calls.map((c) => c.reason)).toEqual(["startup"]);
    } finally {
      jest.useRealTimers();
    }
  });

  describe("runs caused by events", () => {
    beforeEach(() => jest.useFakeTimers());
    afterEach(() => jest.useRealTimers());

    it("relevant events trigger a run after the delay, others never do", async () => {
      const fake = new FakeReconciler();
      fake.autoRelease = true;
      const { loop: l } = loop(fake, 0, undefined, { eventDelayMs: 500, minEventIntervalMs: 0 });
      l.onEvent({ type: "m.room.message", room_id: SPACE, content: {} });
      l.onEvent({ type: "m.room.member", room_id: "!other:x", state_key: "@a:x", content: {} });
      await jest.advanceTimersByTimeAsync(10_000);
      expect(fake.calls).toHaveLength(0);
      l.onEvent(relevant(1));
      await jest.advanceTimersByTimeAsync(499);
      expect(fake.calls).toHaveLength(0);
      await jest.advanceTimersByTimeAsync(1);
      expect(fake.calls.map((c) => c.reason)).toEqual([`m.room.join_rules in ${SPACE}`]);
      await l.stop();
    });

    it("a burst of 100 events makes one run, and event runs start minEventIntervalMs apart", async () => {
      const fake = new FakeReconciler();
      fake.autoRelease = true;
      const { loop: l } = loop(fake, 0, undefined, { eventDelayMs: 100, minEventIntervalMs: 5000 });
      const startedAt: number[] = [];
      const reconcile = fake.reconcile.bind(fake);
      fake.reconcile = (members, reason) => {
        startedAt.push(Date.now());
        return reconcile(members, reason);
      };
      for (let i = 0; i < 100; i++) l.onEvent(relevant(i));
      await jest.advanceTimersByTimeAsync(100);
      expect(fake.calls).toHaveLength(1);
      // A second burst right after the run: held until 5 s after the first run started.
      for (let i = 0; i < 100; i++) {
        l.onEvent(relevant(i));
        await jest.advanceTimersByTimeAsync(40);
      }
      expect(fake.calls).toHaveLength(1);
      await jest.advanceTimersByTimeAsync(1000);
      expect(fake.calls).toHaveLength(2);
      expect(startedAt[1] - startedAt[0]).toBe(5000);
      await jest.advanceTimersByTimeAsync(60_000);
      expect(fake.calls).toHaveLength(2);
      await l.stop();
    });

    it("a run started for another reason answers the events noted before it", async () => {
      const fake = new FakeReconciler();
      fake.autoRelease = true;
      const { loop: l } = loop(fake, 0, undefined, { eventDelayMs: 500, minEventIntervalMs: 0 });
      l.onEvent(relevant(1));
      await l.trigger("sync command");
      expect(fake.calls.map((c) => c.reason)).toEqual([`sync command, m.room.join_rules in ${SPACE}`]);
      await jest.advanceTimersByTimeAsync(60_000);
      expect(fake.calls).toHaveLength(1);
      await l.stop();
    });

    it("stop() drops an event run that is waiting", async () => {
      const fake = new FakeReconciler();
      fake.autoRelease = true;
      const { loop: l } = loop(fake, 0, undefined, { eventDelayMs: 500, minEventIntervalMs: 0 });
      l.onEvent(relevant(1));
      await l.stop();
      await jest.advanceTimersByTimeAsync(60_000);
      expect(fake.calls).toHaveLength(0);
    });
  });
});
