/**
 * Agents as untrusted tenants, against a real Synapse: a name never selects an account that is not
 * an agent's (the bot, a person, an account nobody said to adopt); a tenant swapping its dirs for
 * symlinks during rotations gets nothing written outside its dir; a storm of requests for one agent
 * runs one at a time and ends with one device and a working token.
 */
import { lstatSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { loadRegistration, type Registration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { request } from "../support/operator";
import { makeAgentDir, uniqueName, whoami } from "../support/agents";
import { startRecordedService, type StartedService } from "../support/service";
import { startSwapper } from "../support/swapper";

const env = e2eEnv();

function readToken(stateDir: string): string {
  return readFileSync(join(stateDir, "matrix-token"), "utf8").trim();
}

/** Device IDs of a user, asked as the appservice (no token of the user needed). */
async function devicesOf(asToken: string, userId: string): Promise<string[]> {
  const res = await request(asToken, "GET", `/_matrix/client/v3/devices?user_id=${encodeURIComponent(userId)}`);
  expect(res.status).toBe(200);
  return (res.json.devices as { device_id: string }[]).map((d) => d.device_id).sort();
}

/** Start/finish log lines of one agent's runs, in order: "start" | "finish". */
function runEvents(logs: string[], name: string): string[] {
  const events: string[] = [];
  for (const line of logs) {
    let entry: { agent?: string; msg?: string };
    try {
      entry = JSON.parse(line) as { agent?: string; msg?: string };
    } catch {
      continue;
    }
    if (entry.agent !== name) continue;
    if (entry.msg === "agent run started") events.push("start");
    if (entry.msg === "agent run finished") events.push("finish");
  }
  return events;
}

/** Every entry under `dir` (not following links), relative. */
function tree(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    out.push(prefix + entry);
    const st = lstatSync(path);
    if (st.isDirectory()) out.push(...tree(path, `${prefix}${entry}/`));
  }
  return out.sort();
}

describe("one agent, many requests, and a tenant racing its own dirs", () => {
  let slot: AcquiredSlot;
  let registration: Registration;
  let config: Config;
  let run: StartedService | undefined;

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    registration = loadRegistration(slot.registrationPath);
    config = makeTestConfig(slot, { agents: { rescanIntervalSeconds: 3600 }, logging: { level: "debug" } });
  });
  afterEach(async () => {
    await run?.service.stop();
    run = undefined;
  });
  afterAll(() => slot?.release());

  it("concurrent add/rotate/remove/rescan for one name: never two runs at once, one device and a valid token at the end", async () => {
    const name = uniqueName("st");
    const stateDir = makeAgentDir(config, name);
    run = await startRecordedService(config, registration);
    const { service, logs } = run;
    await service.agents.idle();
    const userId = service.agents.userId(name);

    const requests: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) {
      if (i % 4 === 0) requests.push(service.agents.add(name));
      if (i % 4 === 1) requests.push(service.agents.rotate(name));
      if (i % 4 === 2) requests.push(service.agents.remove(name));
      if (i % 4 === 3) service.agents.rescan();
    }
    // The last wishes: the agent exists, with a new token.
    requests.push(service.agents.add(name), service.agents.rotate(name));
    const settled = await Promise.allSettled(requests);
    await service.agents.idle();

    // A rotate right after a remove is refused ("no active agent"); nothing else may fail.
    for (const s of settled) if (s.status === "rejected") expect(String(s.reason)).toMatch(/no active agent/);
    const events = runEvents(logs, name);
    expect(events.length).toBeGreaterThanOrEqual(4);
    // Strictly alternating: no run started before the previous one finished.
    events.forEach((e, i) => expect(e).toBe(i % 2 === 0 ? "start" : "finish"));
    const token = readToken(stateDir);
    expect(await whoami(token)).toMatchObject({ status: 200, json: { user_id: userId } });
    expect(await devicesOf(slot.asToken, userId)).toEqual([`HIVEMATRIX_${name.toUpperCase()}`]);
    expect(service.agents.records.get(name)).toMatchObject({ state: expect.stringMatching(/token_written|joined/), disabled: false });
  });

  it("rotations while the tenant swaps its state dir for links to another agent's dir and outside: nothing lands there", async () => {
    const a = uniqueName("ra");
    const b = uniqueName("rb");
    makeAgentDir(config, a);
    const bState = makeAgentDir(config, b);
    run = await startRecordedService(config, registration);
    const { service } = run;
    await service.agents.idle();
    const bToken = readToken(bState);
    const bInode = lstatSync(join(bState, "matrix-token")).ino;
    const outside = join(config.stateDir, "..", `outside-${a}`);
    mkdirSync(outside);

    const agentDir = join(config.agents.stateRoot, a);
    renameSync(join(agentDir, "state"), join(agentDir, "real"));
    symlinkSync(bState, join(agentDir, "to-b"));
    symlinkSync(outside, join(agentDir, "to-outside"));
    // Each shape held for a few ms: a rotation (several requests) sees the dir change under it.
    const swapper = startSwapper(
      join(agentDir, "state"),
      join(agentDir, "real"),
      [join(agentDir, "to-b"), join(agentDir, "to-outside")],
      3,
    );
    let rotated = 0;
    let refused = 0;
    try {
      for (let i = 0; i < 40; i++) {
        await service.agents.rotate(a).then(
          () => rotated++,
          (err: unknown) => {
            // Refused on a link, or the dir vanished between the read and the write.
            expect(String(err)).toMatch(/symlink.*refusing to write through it|not writing the token: .* does not exist/);
            refused++;
          },
        );
      }
    } finally {
      await swapper.stop();
    }
    await service.agents.idle();

    // Every rotation ran: written, refused on a symlink (the tenant was seen), or finding no dir
    // (then no token is due).
    expect(rotated + refused).toBe(40);
    expect(refused).toBeGreaterThan(0);
    expect(readdirSync(outside)).toEqual([]);
    expect(readdirSync(bState)).toEqual(["matrix-token"]);
    expect(readToken(bState)).toBe(bToken);
    expect(lstatSync(join(bState, "matrix-token")).ino).toBe(bInode);
    expect((await whoami(bToken)).status).toBe(200);
    // Agent a's real dir holds at most its token, never a temp file.
    expect(readdirSync(join(agentDir, "real")).filter((f) => f !== "matrix-token")).toEqual([]);

    // Once the tenant stops, a rotation gives a a working token and still one device.
    rmSync(join(agentDir, "to-b"));
    rmSync(join(agentDir, "to-outside"));
    renameSync(join(agentDir, "real"), join(agentDir, "state"));
    await service.agents.rotate(a);
    const aToken = readToken(join(agentDir, "state"));
    expect((await whoami(aToken)).status).toBe(200);
    expect(await devicesOf(slot.asToken, service.agents.userId(a))).toEqual([`HIVEMATRIX_${a.toUpperCase()}`]);
    expect(tree(join(agentDir))).toEqual(["state", "state/matrix-token"]);
  });

  it("an existing account hive-matrix has no record of creating is refused; one an interrupted registration of ours, or an older version, created is taken", async () => {
    const foreign = uniqueName("fo");
    const withDevice = uniqueName("fd");
    const interrupted = uniqueName("in");
    // Provisioned by a version that did not record accounts yet; its token file was lost since.
    const older = uniqueName("ol");
    const localpart = (name: string): string => slot.agentTemplate.replace("{name}", name);
    const userOf = (name: string): string => `@${localpart(name)}:${env.homeserver.serverName}`;
    // Accounts created behind hive-matrix's back (here by the appservice token, as the old flow or a
    // lost reply would leave them): one with a session of its own.
    for (const name of [foreign, interrupted, older]) {
      const res = await request(slot.asToken, "POST", "/_matrix/client/v3/register", {
        type: "m.login.application_service",
        username: localpart(name),
        inhibit_login: true,
      });
      expect(res.status).toBe(200);
    }
    const phone = await request(slot.asToken, "POST", "/_matrix/client/v3/register", {
      type: "m.login.application_service",
      username: localpart(withDevice),
      device_id: "PHONE",
    });
    expect(phone.status).toBe(200);
    const phoneToken = phone.json.access_token as string;
    for (const name of [foreign, withDevice, interrupted, older]) makeAgentDir(config, name);
    // What agents.json holds when a /register of ours was sent and its answer never recorded.
    const now = Date.now();
    const record = (name: string): Record<string, unknown> => ({
      userId: userOf(name),
      state: "pending",
      source: "discovered",
      registering: true,
      createdAt: now,
      updatedAt: now,
    });
    const dir = join(config.stateDir, "..", `state-${interrupted}`);
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(
      join(dir, "agents.json"),
      JSON.stringify({
        version: 1,
        agents: {
          [withDevice]: record(withDevice),
          [interrupted]: record(interrupted),
          [older]: { ...record(older), state: "joined", registering: undefined },
        },
      }),
      { mode: 0o600 },
    );
    run = await startRecordedService({ ...config, stateDir: dir }, registration);
    const { service } = run;
    await service.agents.idle();

    for (const name of [foreign, withDevice]) {
      expect(service.agents.records.get(name)).toMatchObject({
        state: "failed",
        reason: expect.stringMatching(/already exists and hive-matrix did not create it.*agents\.adopt/),
      });
      expect(readdirSync(join(config.agents.stateRoot, name, "state"))).toEqual([]);
    }
    expect(await devicesOf(slot.asToken, userOf(foreign))).toEqual([]);
    expect(await devicesOf(slot.asToken, userOf(withDevice))).toEqual(["PHONE"]);
    expect((await whoami(phoneToken)).status).toBe(200);
    const taken = readToken(join(config.agents.stateRoot, interrupted, "state"));
    expect(await whoami(taken)).toMatchObject({ status: 200, json: { user_id: userOf(interrupted) } });
    expect(service.agents.records.get(interrupted)).toMatchObject({ account: "created", registering: false });
    // Under a fixed template the exclusive namespace let only hive-matrix create it: still ours.
    const again = readToken(join(config.agents.stateRoot, older, "state"));
    expect(await whoami(again)).toMatchObject({ status: 200, json: { user_id: userOf(older) } });
    expect(service.agents.records.get(older)).toMatchObject({ account: "created" });

    // Removing the refused agents touches nothing of theirs either.
    await service.agents.remove(withDevice);
    expect((await whoami(phoneToken)).status).toBe(200);
  });
});

describe("names that select someone else's account under the bare {name} template", () => {
  it("a dir named like the bot gets no token and the bot keeps working; an existing account not on agents.adopt is neither logged in to nor out", async () => {
    const slot = await acquireSlot("legacy");
    let run: StartedService | undefined;
    try {
      const registration = loadRegistration(slot.registrationPath);
      // Long enough for the bot's localpart to pass as a well-formed agent name.
      const config = makeTestConfig(slot, { agents: { maxNameLength: 16 }, logging: { level: "debug" } });
      const bot = slot.botLocalpart;
      // old2 stays logged in: harness.test.ts relies on its token too.
      const person = slot.preexistingAccounts[1];
      const botDir = makeAgentDir(config, bot);
      const personDir = makeAgentDir(config, person.name);
      const botUserId = `@${bot}:${env.homeserver.serverName}`;
      const botDevicesBefore = await devicesOf(slot.asToken, botUserId);

      run = await startRecordedService(config, registration);
      const { service, logs } = run;
      await service.agents.idle();

      expect(readdirSync(botDir)).toEqual([]);
      expect(service.agents.records.get(bot)).toBeUndefined();
      expect(logs.join("")).toContain(`refusing agent directory: the name would be the bot's own user ${botUserId}`);
      await expect(service.agents.add(bot)).rejects.toThrow(/would be the bot's own user/);
      expect(await devicesOf(slot.asToken, botUserId)).toEqual(botDevicesBefore);
      expect(await whoami(slot.asToken)).toMatchObject({ status: 200, json: { user_id: botUserId } });

      expect(readdirSync(personDir)).toEqual([]);
      expect(service.agents.records.get(person.name)).toMatchObject({
        state: "failed",
        reason: expect.stringMatching(
          new RegExp(`${person.userId} already exists and hive-matrix did not create it.*add "${person.name}" to agents\\.adopt`),
        ),
      });
      expect(logs.join("")).toContain(`agent ${person.name} could not be provisioned`);
      expect((await whoami(person.accessToken)).status).toBe(200);
      // The operators are told, with the fix (`!hive sync` retries it the same way).
      const reports: string[] = [];
      jest.spyOn(service.control, "report").mockImplementation((kind, text) => void reports.push(`${kind}: ${text}`));
      expect(service.agents.retryFailed()).toEqual([person.name]);
      await service.agents.idle();
      expect(reports).toEqual([
        expect.stringMatching(new RegExp(`^agent-failed: ${person.name}: .*add "${person.name}" to agents\\.adopt`)),
      ]);
      expect((await whoami(person.accessToken)).status).toBe(200);
      // Removing it (the dir goes away) logs nobody out either.
      rmSync(join(config.agents.stateRoot, person.name), { recursive: true });
      service.agents.rescan();
      await service.agents.idle();
      expect(service.agents.records.get(person.name)).toMatchObject({ state: "removed", leaving: false });
      expect((await whoami(person.accessToken)).status).toBe(200);
    } finally {
      await run?.service.stop();
      slot.release();
    }
  });
});
