/** Agent liveness: recorded from agents' events, described for chat, persisted in batches, silence reported once. */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { ACTIVITY_FILE, AgentActivity, agentNameFromUserId, describeActivity, type ActivityReport } from "../../src/agents/activity";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { StateStore } from "../../src/store/state-store";
import type { MatrixEvent } from "../../src/store/transactions";
import { testConfig } from "../support/control";
import { tempDir } from "../support/tmp";

const AGENTS = new Set(["a", "b"]);
const userOf = (name: string): string => `@agent-${name}:hive.test`;

function setup(opts: { report?: boolean; silentAfterSeconds?: number; dir?: string } = {}) {
  const dir = opts.dir ?? tempDir();
  const config = testConfig(dir, {
    agents: { activity: { report: opts.report ?? true, silentAfterSeconds: opts.silentAfterSeconds ?? 60 } },
  });
  const state = new StateStore(dir);
  state.init();
  let now = 1_800_000_000_000;
  const reports: [ActivityReport, string][] = [];
  const metrics = new Metrics();
  const activity = new AgentActivity({
    config,
    state,
    logger: createLogger({ level: "silent" }).logger,
    metrics,
    agentName: (userId) => agentNameFromUserId(config, userId, (n) => (AGENTS.has(n) ? { userId: userOf(n) } : undefined)),
    isCurrent: (name) => AGENTS.has(name),
    report: (kind, text) => reports.push([kind, text]),
    now: () => now,
    persistMs: 60_000,
  });
  activity.load();
  return { dir, config, activity, reports, metrics, advance: (ms: number) => (now += ms), now: () => now };
}

function event(sender: string, ts: number, roomId = "!r:hive.test"): MatrixEvent {
  return { type: "m.room.message", event_id: `$${ts}`, room_id: roomId, sender, origin_server_ts: ts, content: { body: "secret words" } };
}

describe("agent activity", () => {
  it("describes never, active and silent", () => {
    const now = Date.UTC(2026, 11, 2, 3, 30);
    expect(describeActivity(undefined, 60, now)).toBe("never spoke");
    expect(describeActivity({ at: now - 120_000, roomId: "!r" }, 600, now)).toBe("active 2 min ago");
    expect(describeActivity({ at: now - 7_200_000, roomId: "!r" }, 600, now)).toBe("silent since 2026-12-02 01:30 UTC (2 h ago)");
  });

  it("maps user IDs of the template to known agents only", () => {
    const { config } = setup();
    const known = (n: string) => (AGENTS.has(n) ? { userId: userOf(n) } : undefined);
    expect(agentNameFromUserId(config, "@agent-a:hive.test", known)).toBe("a");
    expect(agentNameFromUserId(config, "@agent-zz:hive.test", known)).toBeUndefined();
    expect(agentNameFromUserId(config, "@agent-a:other.test", known)).toBeUndefined();
    expect(agentNameFromUserId(config, "@op:hive.test", known)).toBeUndefined();
    expect(agentNameFromUserId(config, "@agent-:hive.test", known)).toBeUndefined();
  });

  it("records the last event an agent sent, ignoring others and older replays", () => {
    const { activity, now } = setup();
    activity.observe(event(userOf("a"), now() - 5000, "!one:hive.test"));
    activity.observe(event("@op:hive.test", now()));
    activity.observe({ ...event(userOf("b"), now()), type: "m.room.member", state_key: userOf("b"), content: { membership: "join" } });
    activity.observe(event(userOf("a"), now() - 9000, "!old:hive.test"));
    expect(activity.get("a")).toEqual({ at: now() - 5000, roomId: "!one:hive.test" });
    expect(activity.get("b")).toBeUndefined();
    expect(activity.describe("a")).toBe("active 5 s ago");
    expect(activity.describe("b")).toBe("never spoke");
  });

  it("writes the file in batches, never content, 0600, and reads it back", () => {
    const { dir, activity, now } = setup();
    const file = join(dir, ACTIVITY_FILE);
    for (let i = 0; i < 50; i++) activity.observe(event(userOf("a"), now() - 1000 + i));
    expect(existsSync(file)).toBe(false); // not one write per event
    activity.flush();
    const text = readFileSync(file, "utf8");
    expect(text).not.toContain("secret words");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const again = setup({ dir });
    expect(again.activity.get("a")?.at).toBe(now() - 1000 + 49);
  });

  it("reports a silence once, and the return once; a restart does not report it again", () => {
    const { dir, activity, reports, advance, now } = setup({ silentAfterSeconds: 60 });
    activity.observe(event(userOf("a"), now()));
    activity.checkSilence();
    expect(reports).toEqual([]);
    advance(61_000);
    activity.checkSilence();
    activity.checkSilence();
    expect(reports.map(([k, t]) => [k, t.split(" ")[0]])).toEqual([["agent-silent", "a"]]);
    activity.flush();
    const restarted = setup({ dir });
    restarted.advance(200_000);
    restarted.activity.checkSilence();
    expect(restarted.reports).toEqual([]);
    restarted.activity.observe(event(userOf("a"), restarted.now()));
    expect(restarted.reports.map(([k]) => k)).toEqual(["agent-back"]);
    expect(restarted.activity.describe("a")).toBe("active 0 s ago");
  });

  it("says nothing when reports are off", () => {
    const { activity, reports, advance, now } = setup({ report: false });
    activity.observe(event(userOf("a"), now()));
    advance(3_600_000);
    activity.checkSilence();
    activity.observe(event(userOf("a"), now()));
    expect(reports).toEqual([]);
  });

  it("exposes seconds since activity per agent and counts by activity", async () => {
    const { activity, metrics, advance, now } = setup({ silentAfterSeconds: 60 });
    activity.observe(event(userOf("a"), now()));
    activity.observe(event(userOf("b"), now() - 120_000));
    advance(10_000);
    const text = await metrics.registry.metrics();
    expect(text).toContain('hive_matrix_agent_seconds_since_activity{agent="a"} 10');
    expect(text).toContain('hive_matrix_agent_seconds_since_activity{agent="b"} 130');
    expect(text).toContain('hive_matrix_agents_by_activity{activity="active"} 1');
    expect(text).toContain('hive_matrix_agents_by_activity{activity="silent"} 1');
  });
});
