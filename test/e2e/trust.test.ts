/**
 * Hostile users and local processes against the whole service on Synapse: what a room member, a
 * non-operator in the control room and anything on the host (an agent container shares loopback)
 * can make hive-matrix do. Each check counts what the service did, through its /metrics or its
 * log, and ends with a later action as a marker, so that "nothing happened" is not "not yet".
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { loadRegistration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import type { RegisteredUser } from "../../dev/server-process";
import { cs, repliesTo, say } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually, until } from "../support/wait";

const env = e2eEnv();
const tag = randomBytes(2).toString("hex");
const enc = encodeURIComponent;

describe("trust boundaries against Synapse", () => {
  let slot: AcquiredSlot;
  let config: Config;
  let run: StartedService;
  let operator: RegisteredUser;
  let stranger: RegisteredUser;
  let controlRoom: string;
  const metricsToken = randomBytes(24).toString("hex");

  const metrics = async (token = metricsToken): Promise<Response> =>
    fetch(`${config.appservice.url}/metrics`, { headers: { Authorization: `Bearer ${token}` } });
  /** Reconciles of the rooms so far, as /metrics says. */
  const reconciles = async (): Promise<number> => {
    const text = await (await metrics()).text();
    return [...text.matchAll(/^hive_matrix_rooms_reconciles_total\{[^}]*\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
  };
  const loopIdle = (): boolean => !run.service.roomsLoop.running && !run.service.roomsLoop.waiting;

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    operator = await registerUser(env.homeserver, `top${tag}`);
    stranger = await registerUser(env.homeserver, `tstr${tag}`);
    const base = makeTestConfig(slot);
    const tokenFile = join(base.stateDir, "..", "metrics-token");
    writeFileSync(tokenFile, `${metricsToken}\n`, { mode: 0o600 });
    config = makeTestConfig(slot, {
      operators: [operator.userId],
      appservice: { metricsTokenFile: tokenFile },
      // No timer: every reconcile counted below was caused by an event.
      rooms: { reconcileIntervalSeconds: 0 },
      logging: { level: "info" },
    });
    run = await startRecordedService(config, loadRegistration(slot.registrationPath));
    controlRoom = await eventually(() => run.service.control.roomId, "the control room");
    await cs(operator.accessToken, "POST", `/join/${enc(controlRoom)}`, {});
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  it("a local process without the metrics token learns nothing from /metrics or /health", async () => {
    expect((await fetch(`${config.appservice.url}/metrics`)).status).toBe(401);
    expect((await metrics(slot.hsToken)).status).toBe(403);
    expect(await (await fetch(`${config.appservice.url}/health`)).json()).toEqual({ ready: true, live: true });
    const detailed = (await (
      await fetch(`${config.appservice.url}/health`, { headers: { Authorization: `Bearer ${metricsToken}` } })
    ).json()) as Record<string, unknown>;
    expect(detailed).toMatchObject({ ready: true, botUserId: run.service.botUserId, homeserver: { url: config.homeserver.url } });
    expect((await metrics()).status).toBe(200);
  });

  it("100 display-name changes in hive-chat cost at most one reconcile", async () => {
    const spaceId = await eventually(() => run.service.rooms.spaceId, "the Space");
    const chatId = await eventually(() => run.service.rooms.chatId, "hive-chat");
    await eventually(() => (run.service.rooms.lastReport?.changes.some((c) => c.includes(operator.userId)) ? true : undefined), "invites");
    await cs(operator.accessToken, "POST", `/join/${enc(spaceId)}`, {});
    await cs(operator.accessToken, "POST", `/join/${enc(chatId)}`, {});
    const joined = (e: { type: string; room_id?: string; state_key?: string; content?: Record<string, unknown> }): boolean =>
      e.type === "m.room.member" && e.room_id === chatId && e.state_key === operator.userId && e.content?.membership === "join";
    await until(() => run.seen.some(joined));
    // The joins are changes of membership: they get their run. Then the loop is idle.
    await until(() => loopIdle() && run.service.roomsLoop.runs > 1, 30_000);
    const before = await reconciles();

    let last = "";
    for (let i = 0; i < 100; i++) {
      const res = await cs<{ event_id: string }>(
        operator.accessToken,
        "PUT",
        `/rooms/${enc(chatId)}/state/m.room.member/${enc(operator.userId)}`,
        {
          membership: "join",
          displayname: `operator ${tag} #${i}`,
        },
      );
      last = res.event_id;
    }
    await until(() => run.seen.some((e) => e.event_id === last), 30_000);

    // Marker: a change the reconcile owns gets repaired, by one run that also answers anything still pending.
    await cs(operator.accessToken, "PUT", `/rooms/${enc(chatId)}/state/m.room.topic/`, { topic: "not the topic" });
    await until(async () => {
      const topic = await cs<{ topic?: string }>(operator.accessToken, "GET", `/rooms/${enc(chatId)}/state/m.room.topic/`);
      return topic.topic === config.rooms.chat.topic;
    }, 30_000);
    await until(loopIdle);
    const runs = (await reconciles()) - before;
    expect(runs).toBeGreaterThanOrEqual(1);
    expect(runs - 1).toBeLessThanOrEqual(1);
  });

  it("a non-operator's command spam writes nothing and gets one refusal", async () => {
    await cs(operator.accessToken, "POST", `/rooms/${enc(controlRoom)}/invite`, { user_id: stranger.userId });
    await cs(stranger.accessToken, "POST", `/join/${enc(controlRoom)}`, {});
    const seenFile = join(config.stateDir, "commands-seen.json");
    const before = existsSync(seenFile) ? readFileSync(seenFile, "utf8") : undefined;
    const spam: string[] = [];
    for (let i = 0; i < 20; i++) spam.push(await say(stranger, controlRoom, i % 2 ? "!hive agent remove x --yes" : `!hive status ${i}`));
    await until(() => run.seen.some((e) => e.event_id === spam[spam.length - 1]), 30_000);
    expect(existsSync(seenFile) ? readFileSync(seenFile, "utf8") : undefined).toBe(before);

    // A later operator command is answered after all of them (one command at a time, in order).
    const marker = await say(operator, controlRoom, "!hive version");
    await eventually(
      async () => ((await repliesTo(operator, controlRoom, marker, run.service.botUserId)).length > 0 ? true : undefined),
      "the marker's reply",
    );
    const replies = await Promise.all(spam.map((id) => repliesTo(operator, controlRoom, id, run.service.botUserId)));
    expect(replies.map((r) => r.length)).toEqual([1, ...Array(19).fill(0)]);
    expect(String(replies[0][0].content.body)).toBe("Sorry, only the hive's operators can give commands here.");
  });

  it("a flood of requests with a wrong or no hs_token logs one warning, not one per request", async () => {
    const warned = (): number =>
      run.logs.filter((l) => /homeserver request (without a token|with a wrong hs_token) refused/.test(l)).length;
    const before = warned();
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`${config.appservice.url}/_matrix/app/v1/transactions/flood-${tag}-${i}`, {
        method: "PUT",
        headers: { "Content-Type": "application/json", ...(i % 2 ? { Authorization: "Bearer wrong" } : {}) },
        body: JSON.stringify({ events: [] }),
      });
      expect(res.status).toBe(i % 2 ? 403 : 401);
    }
    // The first one of the minute is logged as it happens; the other 99 wait for the summary line.
    expect(warned() - before).toBe(1);
    // The homeserver itself still gets through.
    const ok = await fetch(`${config.appservice.url}/_matrix/app/v1/transactions/ok-${tag}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${slot.hsToken}` },
      body: JSON.stringify({ events: [] }),
    });
    expect(ok.status).toBe(200);
  });
});
