/** The bot's own reports: batched per interval into one summarised message, flushed on stop. */
import { createLogger } from "../../src/logging";
import { Notifier } from "../../src/control/notifier";
import type { Rich } from "../../src/control/render";

function notifier(intervalSeconds: number, room = true): { n: Notifier; sent: Rich[]; setRoom(v: boolean): void } {
  const sent: Rich[] = [];
  let hasRoom = room;
  const n = new Notifier({
    intervalSeconds,
    logger: createLogger({ level: "silent" }).logger,
    send: (m) => (hasRoom ? Promise.resolve(void sent.push(m)) : undefined),
  });
  return { n, sent, setRoom: (v) => (hasRoom = v) };
}

describe("notifier", () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it("summarises reports within the interval into one message", async () => {
    const { n, sent } = notifier(30);
    n.report("agent-onboarded", "a");
    n.report("agent-onboarded", "b");
    jest.advanceTimersByTime(10_000);
    n.report("agent-onboarded", "c");
    expect(sent).toHaveLength(0);
    await jest.advanceTimersByTimeAsync(20_000);
    expect(sent.map((m) => m.text)).toEqual(["3 agents onboarded: a, b, c"]);
  });

  it("puts several kinds in one message and escapes the text", async () => {
    const { n, sent } = notifier(30);
    n.report("agent-onboarded", "a");
    n.report("agent-failed", "b (token file not writable <here>)");
    n.report("homeserver-back", "after 2 min");
    await jest.advanceTimersByTimeAsync(30_000);
    expect(sent).toHaveLength(1);
    expect(sent[0].text).toBe(
      "Hive report:\n\n- Agent onboarded: a\n- Agent failed: b (token file not writable <here>)\n- Homeserver reachable again: after 2 min",
    );
    expect(sent[0].html).toContain("&lt;here&gt;");
  });

  it("sends at most one message per interval, then starts a new batch", async () => {
    const { n, sent } = notifier(30);
    for (let i = 0; i < 100; i++) n.report("drift-repaired", `change ${i}`);
    await jest.advanceTimersByTimeAsync(30_000);
    n.report("drift-repaired", "later");
    await jest.advanceTimersByTimeAsync(29_000);
    expect(sent).toHaveLength(1);
    expect(sent[0].text).toMatch(/^100 room drifts repaired: change 0, .*change 19, and 80 more$/);
    await jest.advanceTimersByTimeAsync(1_000);
    expect(sent.map((m) => m.text)).toEqual([sent[0].text, "Room drift repaired: later"]);
  });

  it("counts a repeated report once", async () => {
    const { n, sent } = notifier(30);
    n.report("rooms-unusable", "hive-chat: bot not joined");
    n.report("rooms-unusable", "hive-chat: bot not joined");
    await jest.advanceTimersByTimeAsync(30_000);
    expect(sent.map((m) => m.text)).toEqual(["Rooms unusable: hive-chat: bot not joined"]);
  });

  it("sends each report at once with interval 0", async () => {
    const { n, sent } = notifier(0);
    n.report("agent-onboarded", "a");
    await n.flush();
    n.report("agent-onboarded", "b");
    await n.flush();
    expect(sent.map((m) => m.text)).toEqual(["Agent onboarded: a", "Agent onboarded: b"]);
  });

  it("keeps reports until there is a control room", async () => {
    const { n, sent, setRoom } = notifier(30, false);
    n.report("agent-onboarded", "a");
    await jest.advanceTimersByTimeAsync(30_000);
    expect(sent).toHaveLength(0);
    setRoom(true);
    await n.flush();
    expect(sent.map((m) => m.text)).toEqual(["Agent onboarded: a"]);
  });

  it("flushes on stop and takes no reports after", async () => {
    const { n, sent } = notifier(30);
    n.report("agent-removed", "x");
    await n.stop();
    expect(sent.map((m) => m.text)).toEqual(["Agent removed: x"]);
    n.report("agent-removed", "y");
    await jest.advanceTimersByTimeAsync(60_000);
    expect(sent).toHaveLength(1);
  });
});
