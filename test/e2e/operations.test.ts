/**
 * The operator's view of a running hive from chat, against Synapse: agent liveness in `!hive agents`
 * and its silence reports, operators added from chat, recent warnings from chat.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { HiveMatrixClient } from "../../src/matrix/client";
import { loadRegistration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import type { RegisteredUser } from "../../dev/server-process";
import { cs, repliesTo, say, timeline, type RoomEvent } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually } from "../support/wait";

const env = e2eEnv();
const tag = randomBytes(2).toString("hex");
const SILENT_AFTER = 3;
const METRICS_TOKEN = randomBytes(24).toString("hex");

describe("operating the hive from chat", () => {
  let slot: AcquiredSlot;
  let config: Config;
  let run: StartedService;
  let operator: RegisteredUser;
  let controlRoom: string;
  const names = [`o${tag}a`, `o${tag}b`];

  const userOf = (name: string): string => `@${slot.agentTemplate.replace("{name}", name)}:${env.homeserver.serverName}`;
  const body = (e: RoomEvent): string => String(e.content.body);
  /** The HTML table row of `name` in a listing (the plain body wraps to 80 columns; the HTML keeps one row per agent). */
  const row = (e: RoomEvent, name: string): string =>
    String(e.content.formatted_body)
      .split("<tr>")
      .find((r) => r.includes(`<td>${name}</td>`)) ?? "";
  const reply = (user: RegisteredUser, eventId: string): Promise<RoomEvent> =>
    eventually(async () => (await repliesTo(user, controlRoom, eventId, run.service.botUserId))[0], `the bot's reply to ${eventId}`);
  const botSaid = async (pattern: RegExp): Promise<RoomEvent[]> =>
    (await timeline(operator, controlRoom)).filter((e) => e.sender === run.service.botUserId && pattern.test(body(e)));

  async function start(): Promise<void> {
    run = await startRecordedService(config, loadRegistration(slot.registrationPath));
    controlRoom = await eventually(() => run.service.control.roomId, "the control room");
  }

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    operator = await registerUser(env.homeserver, `oop${tag}`);
    const base = makeTestConfig(slot);
    const metricsTokenFile = join(base.stateDir, "..", "metrics-token");
    writeFileSync(metricsTokenFile, `${METRICS_TOKEN}\n`, { mode: 0o600 });
    config = makeTestConfig(slot, {
      appservice: { metricsTokenFile },
      operators: [operator.userId],
      control: { notifyIntervalSeconds: 1 },
      agents: { activity: { silentAfterSeconds: SILENT_AFTER, report: true } },
    });
    for (const name of names) mkdirSync(join(config.agents.stateRoot, name, "state"), { recursive: true });
    await start();
    await cs(operator.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {});
    await run.service.agents.idle();
    for (const name of names) {
      await eventually(() => (run.service.agents.records.get(name)?.state === "joined" ? true : undefined), `${name} joined`);
    }
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  it("an agent that speaks shows as active; its silence past the threshold is reported once, its return once", async () => {
    const [talker, quiet] = names;
    const before = await reply(operator, await say(operator, controlRoom, "!hive agents"));
    expect(row(before, talker)).toContain("never spoke");

    const agent = new HiveMatrixClient(run.service.transport, userOf(talker));
    await agent.sendMessage(run.service.rooms.chatId!, { msgtype: "m.text", body: "hello hive" });
    const listed = await eventually(async () => {
      const list = await reply(operator, await say(operator, controlRoom, "!hive agents"));
      return /active \d+ s ago/.test(row(list, talker)) ? list : undefined;
    }, "the agent shown active");
    expect(row(listed, quiet)).toContain("never spoke");
    const info = await reply(operator, await say(operator, controlRoom, `!hive agent info ${talker}`));
    expect(body(info)).toMatch(/Activity[^\n]*(active|silent)/);

    await eventually(async () => ((await botSaid(/silent/i)).length > 0 ? true : undefined), "the silence report", 30_000);
    // Three more thresholds: a second report would have come by now.
    await new Promise((r) => setTimeout(r, 3 * SILENT_AFTER * 1000));
    const silent = await botSaid(/Agent silent/);
    expect(silent).toHaveLength(1);
    expect(body(silent[0])).toContain(talker);
    expect(body(silent[0])).not.toContain(quiet);
    const list = await reply(operator, await say(operator, controlRoom, "!hive agents"));
    expect(row(list, talker)).toContain("silent since");

    await agent.sendMessage(run.service.rooms.chatId!, { msgtype: "m.text", body: "back again" });
    await eventually(async () => ((await botSaid(/active again/i)).length === 1 ? true : undefined), "the return report");
  });

  it("a runtime operator can command, is invited into the rooms, survives a restart, and can be removed", async () => {
    const newcomer = await registerUser(env.homeserver, `onew${tag}`);
    const refusedFirst = await cs(newcomer.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {}).then(
      () => "joined",
      () => "refused",
    );
    expect(refusedFirst).toBe("refused"); // not invited: the control room is invite-only

    const added = await reply(operator, await say(operator, controlRoom, `!hive operator add ${newcomer.userId}`));
    expect(body(added)).toContain("is an operator now");
    await eventually(
      () =>
        cs(newcomer.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {}).then(
          () => true,
          () => undefined,
        ),
      "the new operator joining the control room",
    );
    const spaceId = run.service.rooms.spaceId!;
    await eventually(
      () =>
        cs(newcomer.accessToken, "POST", `/join/${encodeURIComponent(spaceId)}`, {}).then(
          () => true,
          () => undefined,
        ),
      "the new operator joining the Space (invited by the reconcile)",
    );
    expect(body(await reply(newcomer, await say(newcomer, controlRoom, "!hive version")))).toContain("hive-matrix");

    await run.service.stop();
    await start();
    expect(body(await reply(newcomer, await say(newcomer, controlRoom, "!hive version")))).toContain("hive-matrix");
    const listed = await reply(operator, await say(operator, controlRoom, "!hive operator list"));
    expect(body(listed)).toContain(newcomer.userId);
    expect(body(listed)).toMatch(/config file/);

    const notConfig = await reply(operator, await say(operator, controlRoom, `!hive operator remove ${operator.userId} --yes`));
    expect(body(notConfig)).toMatch(/config file/);
    const ask = await reply(operator, await say(operator, controlRoom, `!hive operator remove ${newcomer.userId}`));
    expect(body(ask)).toContain(`!hive operator remove ${newcomer.userId} --yes`);
    expect(body(await reply(newcomer, await say(newcomer, controlRoom, "!hive version")))).toContain("hive-matrix");
    const removed = await reply(operator, await say(operator, controlRoom, `!hive operator remove ${newcomer.userId} --yes`));
    expect(body(removed)).toContain("no longer an operator");
    expect(body(await reply(newcomer, await say(newcomer, controlRoom, "!hive version")))).toMatch(/only the hive's operators/);
  });

  it("!hive log shows the last warnings and errors, secrets scrubbed as in the log", async () => {
    const secret = run.service.registration.as_token;
    run.service.logger.warn({ module: "test", access_token: "abc" }, `a warning naming ${secret} by mistake`);
    run.service.logger.error({ module: "test" }, "an error for the log command");
    const shown = body(await reply(operator, await say(operator, controlRoom, "!hive log 5")));
    expect(shown).toContain("a warning naming [redacted] by mistake");
    expect(shown).toContain("an error for the log command");
    expect(shown).not.toContain(secret);
    const errors = body(await reply(operator, await say(operator, controlRoom, "!hive log --level=error 50")));
    expect(errors).toContain("an error for the log command");
    expect(errors).not.toContain("a warning naming");
    const bad = body(await reply(operator, await say(operator, controlRoom, "!hive log 0")));
    expect(bad).toMatch(/must be a number from 1 to 50/);
  });

  it("/metrics has the seconds since the agent's last event", async () => {
    const res = await fetch(`http://127.0.0.1:${slot.port}/metrics`, { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } });
    const text = await res.text();
    expect(text).toMatch(new RegExp(`hive_matrix_agent_seconds_since_activity\\{agent="${names[0]}"\\} \\d`));
    expect(text).not.toContain(`agent="${names[1]}"`);
  });
});
