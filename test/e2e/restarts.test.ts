/**
 * Restarts in every combination, against a real Synapse: hive-matrix alone, Synapse alone, both in
 * either order, with and without transactions queued. After each, the operator's commands are
 * answered, each exactly once.
 *
 * This file runs a homeserver of its own (the run's kind; on tuwunel the transaction numbering keeps
 * rising across restarts, so the replay case below is Synapse's). Synapse numbers appservice transactions from one sequence
 * for all appservices, which on SQLite starts again at max(txn_id) of its queue table, emptied as
 * transactions are delivered: only on a server whose one appservice is this hive does a restart
 * with an empty queue reliably start again at 1, which is the case reproduced here (the journal has
 * seen those IDs). Restarting the run's shared Synapse would also disturb the files running beside
 * this one.
 */
import { mkdirSync, mkdtempSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { writeRegistration, type Registration } from "../../src/registration";
import { e2eEnv, makeTestConfig } from "../harness/slots";
import { registerUser, startHomeserver, type RunningHomeserver } from "../../dev/homeserver";
import { freePort } from "../../dev/server-process";
import { itSynapseOnly } from "../support/homeserver";
import { cs, repliesTo, say, type ClientUser } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually } from "../support/wait";

const env = e2eEnv();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("restarts of hive-matrix and of the homeserver", () => {
  let synapse: RunningHomeserver;
  let config: Config;
  let registration: Registration;
  let operator: ClientUser;
  let run: StartedService | undefined;
  let controlRoom: string;
  /** When hive-matrix last took a transaction as new. */
  let lastTxnAt = 0;
  /** Every command sent, so that the last test can check each got exactly one reply. */
  const commands: string[] = [];

  async function startHiveMatrix(): Promise<StartedService> {
    const started = await startRecordedService(config, registration);
    started.service.on("transaction", () => {
      lastTxnAt = Date.now();
    });
    run = started;
    return started;
  }

  async function stopHiveMatrix(): Promise<void> {
    await run?.service.stop();
    run = undefined;
  }

  /** Sends a command and waits for the bot's reply (after a restart Synapse may still be retrying). */
  async function ask(command: string, timeoutMs = 90_000): Promise<string> {
    const id = await say(operator, controlRoom, command);
    commands.push(id);
    return answer(id, timeoutMs);
  }

  async function answer(eventId: string, timeoutMs = 90_000): Promise<string> {
    const botUserId = `@${config.appservice.botLocalpart}:${config.homeserver.domain}`;
    const reply = await eventually(
      async () => (await repliesTo(operator, controlRoom, eventId, botUserId))[0],
      `the reply to ${eventId}`,
      timeoutMs,
    );
    return String(reply.content.body);
  }

  /** Until no transaction came for a while: Synapse has delivered everything, so its queue is empty. */
  async function quiet(): Promise<void> {
    await eventually(() => (Date.now() - lastTxnAt > 1500 ? true : undefined), "no transactions for 1.5 s", 30_000);
    await run?.service.events.idle();
  }

  async function metric(result: string): Promise<number> {
    const text = await run!.service.metrics.registry.getSingleMetricAsString("hive_matrix_transactions_total");
    const match = new RegExp(`result="${result}"\\} (\\d+)`).exec(text);
    return match ? Number(match[1]) : 0;
  }

  beforeAll(async () => {
    const dir = mkdtempSync(join(env.runDir, "restarts-"));
    const port = await freePort();
    const identity = {
      name: "restarts",
      id: "hm-restarts",
      port,
      botLocalpart: "hive-restarts",
      registrationPath: join(dir, "registration.yaml"),
      agentTemplate: "rs-{name}",
    };
    const base = makeTestConfig(identity);
    mkdirSync(join(dir, "homeserver"), { mode: 0o700 });
    registration = writeRegistration(base, identity.registrationPath).registration;
    synapse = await startHomeserver({
      baseDir: join(dir, "homeserver"),
      serverName: env.homeserver.serverName,
      port: await freePort(),
      appserviceConfigFiles: [identity.registrationPath],
    });
    const user = await registerUser(synapse, "restarts-op");
    operator = { ...user, homeserverUrl: synapse.url };
    config = makeTestConfig(identity, { homeserver: { url: synapse.url }, operators: [operator.userId] });
    // One state dir for the whole file: every restart of hive-matrix continues from its journal.
    config = { ...config, stateDir: base.stateDir, agents: { ...config.agents, stateRoot: base.agents.stateRoot } };
    await startHiveMatrix();
    controlRoom = await eventually(() => run?.service.control.roomId, "the control room");
    await cs(operator.accessToken, "POST", `/join/${encodeURIComponent(controlRoom)}`, {}, synapse.url);
  });

  afterAll(async () => {
    await stopHiveMatrix();
    await synapse?.stop();
  });

  it("answers before any restart", async () => {
    for (let i = 0; i < 3; i++) expect(await ask("!hive version")).toMatch(/hive-matrix/);
  });

  itSynapseOnly(
    "tuwunel's transaction numbering keeps rising across restarts",
    "Synapse restarts with an empty queue and numbers its transactions from 1 again: commands are still answered",
    async () => {
      await quiet();
      expect(await metric("reused_id")).toBe(0);
      await synapse.restart();
      expect(await ask("!hive version")).toMatch(/hive-matrix/);
      // The bug's trigger really happened: transaction IDs the journal had seen came again, with other events.
      expect(await metric("reused_id")).toBeGreaterThan(0);
      const warnings = run!.logs.filter((l) => l.includes("transaction ID seen before with other events"));
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/"level":40.*homeserver restarted and numbered its transactions anew/);
    },
  );

  it("hive-matrix restarts alone", async () => {
    await stopHiveMatrix();
    await startHiveMatrix();
    expect(await ask("!hive version")).toMatch(/hive-matrix/);
  });

  it("both restart: hive-matrix stopped, Synapse restarted, hive-matrix started", async () => {
    await quiet();
    await stopHiveMatrix();
    await synapse.restart();
    await startHiveMatrix();
    expect(await ask("!hive version")).toMatch(/hive-matrix/);
  });

  it("both restart: Synapse restarted under a running hive-matrix, then hive-matrix", async () => {
    await quiet();
    await synapse.restart();
    await stopHiveMatrix();
    await startHiveMatrix();
    expect(await ask("!hive version")).toMatch(/hive-matrix/);
  });

  it("commands sent while hive-matrix is down are queued by Synapse and answered once it is back", async () => {
    await stopHiveMatrix();
    const queued = await say(operator, controlRoom, "!hive version");
    commands.push(queued);
    await sleep(1000);
    await startHiveMatrix();
    // No later event: the service's start marker makes the homeserver send what it queued (tuwunel
    // resends only with the next event for the appservice). Well before Synapse's retry backoff.
    expect(await answer(queued, 20_000)).toMatch(/hive-matrix/);
  });

  it("commands queued by Synapse survive a restart of Synapse while hive-matrix is down", async () => {
    await stopHiveMatrix();
    const queued = [await say(operator, controlRoom, "!hive version"), await say(operator, controlRoom, "!hive version")];
    commands.push(...queued);
    await sleep(1000);
    await synapse.restart();
    await startHiveMatrix();
    // Synapse starts its appservice sender, and with it the retries of what it queued, only at the
    // first new event after its start (see docs/reliability.md): the service's start marker is that
    // event, so no operator has to say anything more.
    for (const id of queued) expect(await answer(id, 20_000)).toMatch(/hive-matrix/);
  });

  it("every command got exactly one reply, and status shows what was received and dropped", async () => {
    const status = await ask("!hive status");
    expect(status).toMatch(/Transactions since start\s+\d+ handled/);
    expect(status).toMatch(/Events dropped since start\s+none/);
    await quiet();
    const botUserId = `@${config.appservice.botLocalpart}:${config.homeserver.domain}`;
    for (const id of commands) expect(await repliesTo(operator, controlRoom, id, botUserId)).toHaveLength(1);
  });
});
