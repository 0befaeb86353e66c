/** `!hive log`: the ring keeps the last warnings and errors exactly as the log destination got them. */
import { createLogger, LOG_LEVELS, LogRing, logRingOf, parseLogLine, SecretScrubber } from "../../src/logging";
import { renderEntry } from "../../src/control/commands/log";
import { captureLogs } from "../support/logs";

async function settle(): Promise<void> {
  await new Promise((r) => setImmediate(r));
}

describe("the log ring", () => {
  it("keeps warnings and worse, scrubbed and redacted exactly as written to the log", async () => {
    const { lines, destination } = captureLogs();
    const scrubber = new SecretScrubber();
    const secret = "syt_supersecrettoken_123456";
    scrubber.add(secret);
    const { logger, ring } = createLogger({ level: "debug", destination, scrubber });
    expect(logRingOf(logger)).toBe(ring);
    logger.info("an info line");
    logger.warn({ url: `https://hs/?access_token=${secret}`, access_token: secret }, `warned with ${secret}`);
    logger.child({ module: "rooms" }).error({ err: "boom" }, "an error");
    await settle();
    const kept = ring.recent(LOG_LEVELS.warn, 10);
    expect(kept).toHaveLength(2);
    expect(kept.join("")).not.toContain(secret);
    expect(lines.filter((l) => !l.includes("an info line"))).toEqual(kept);
    expect(ring.recent(LOG_LEVELS.error, 10)).toEqual([kept[1]]);
    const entry = parseLogLine(kept[0]);
    expect(entry).toMatchObject({ level: "warn", message: "warned with [redacted]", fields: { access_token: "[redacted]" } });
  });

  it("is bounded and returns the newest, oldest first", () => {
    const ring = new LogRing(3);
    for (let i = 1; i <= 5; i++) ring.offer(`{"level":${i % 2 ? 40 : 50},"time":${i},"msg":"m${i}"}`);
    ring.offer(`{"level":30,"time":9,"msg":"info"}`);
    expect(ring.recent(LOG_LEVELS.warn, 10).map((l) => parseLogLine(l)?.message)).toEqual(["m3", "m4", "m5"]);
    expect(ring.recent(LOG_LEVELS.warn, 2).map((l) => parseLogLine(l)?.message)).toEqual(["m4", "m5"]);
    expect(ring.recent(LOG_LEVELS.error, 10).map((l) => parseLogLine(l)?.message)).toEqual(["m4"]);
    expect(ring.recent(LOG_LEVELS.warn, 0)).toEqual([]);
  });

  it("renders an entry with its time, level, module and fields, shortened", () => {
    const e = { at: Date.UTC(2026, 11, 2, 3, 4, 5), level: "error" as const, message: "x".repeat(1000), fields: { module: "rooms", n: 1 } };
    const rendered = renderEntry(e);
    expect(rendered.text).toMatch(/^`2026-12-02 03:04:05 ERROR` \[rooms\] x+…$/);
    expect(rendered.text.length).toBeLessThan(460);
    expect(renderEntry({ ...e, message: "<b>", fields: {} }).html).toContain("&lt;b&gt;");
  });
});
