/**
 * Agent onboarding against a real homeserver (Synapse or tuwunel): agents appear as state dirs, get users, devices and
 * token files; restarts change nothing; rotation and removal revoke; hostile dirs change nothing.
 */
import {
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { loadRegistration, type Registration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot, type ConfigOverrides } from "../harness/slots";
import { makeAgentDir, uniqueName, whoami } from "../support/agents";
import { startRecordedService, type StartedService } from "../support/service";
import { request } from "../support/operator";
import { until } from "../support/wait";

const env = e2eEnv();

function tokenPath(config: Config, name: string): string {
  return join(config.agents.stateRoot, name, "state", "matrix-token");
}

async function deviceIds(token: string): Promise<string[]> {
  const res = await request(token, "GET", "/_matrix/client/v3/devices");
  expect(res.status).toBe(200);
  return (res.json.devices as { device_id: string }[]).map((d) => d.device_id).sort();
}

function readToken(config: Config, name: string): string {
  return readFileSync(tokenPath(config, name), "utf8").trim();
}

describe("onboarding against the homeserver", () => {
  let slot: AcquiredSlot;
  let registration: Registration;
  let config: Config;
  let run: StartedService | undefined;
  const names = [uniqueName("a"), uniqueName("b"), uniqueName("c")];

  async function start(overrides: ConfigOverrides = {}): Promise<StartedService> {
    run = await startRecordedService({ ...config, ...(overrides as Partial<Config>) }, registration);
    return run;
  }

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    registration = loadRegistration(slot.registrationPath);
    config = makeTestConfig(slot, { agents: { rescanIntervalSeconds: 2 } });
  });
  afterEach(async () => {
    await run?.service.stop();
    run = undefined;
  });
  afterAll(() => slot?.release());

  it("three agent dirs → three users, each with a 0600 token file that whoami accepts", async () => {
    for (const name of names) makeAgentDir(config, name);
    const { service, logs } = await start();
    await service.agents.idle();
    for (const name of names) {
      const path = tokenPath(config, name);
      const st = lstatSync(path);
      expect(st.isFile()).toBe(true);
      expect(st.mode & 0o777).toBe(0o600);
      const who = await whoami(readToken(config, name));
      expect(who.status).toBe(200);
      expect(who.json.user_id).toBe(`@${slot.agentTemplate.replace("{name}", name)}:${env.homeserver.serverName}`);
      expect(await deviceIds(readToken(config, name))).toEqual([`HIVEMATRIX_${name.toUpperCase()}`]);
      expect(service.agents.records.get(name)?.state).toMatch(/token_written|joined/);
    }
    const all = logs.join("");
    for (const name of names) expect(all).not.toContain(readToken(config, name));
    expect(all).toContain("onboarding pass finished: 3 agents: 3 provisioned, 0 registered without a state dir, 0 unchanged");
  });

  it("a restart of the service creates no device and rewrites no token file", async () => {
    const before = names.map((name) => ({ token: readToken(config, name), mtime: statSync(tokenPath(config, name)).mtimeMs }));
    const devicesBefore = await Promise.all(before.map((b) => deviceIds(b.token)));
    const { service, logs } = await start();
    await service.agents.idle();
    // Counts count agents, however often each was looked at during the pass.
    expect(logs.join("")).toContain("onboarding pass finished: 3 agents: 0 provisioned, 0 registered without a state dir, 3 unchanged");
    const after = names.map((name) => ({ token: readToken(config, name), mtime: statSync(tokenPath(config, name)).mtimeMs }));
    expect(after).toEqual(before);
    expect(await Promise.all(after.map((a) => deviceIds(a.token)))).toEqual(devicesBefore);
    const writes = (await service.metrics.homeserverWrites.get()).values.filter((v) => String(v.labels.kind).startsWith("agent."));
    expect(writes).toEqual([]);
  });

  it("token files a crash of the machine lost or emptied (they are not synced) are written anew at the next start, one device each", async () => {
    const [lost, emptied, kept] = names;
    rmSync(tokenPath(config, lost));
    writeFileSync(tokenPath(config, emptied), "", { mode: 0o600 });
    const keptBefore = { token: readToken(config, kept), mtime: statSync(tokenPath(config, kept)).mtimeMs };
    const { service } = await start();
    await service.agents.idle();
    for (const name of [lost, emptied]) {
      const token = readToken(config, name);
      expect((await whoami(token)).status).toBe(200);
      expect(await deviceIds(token)).toEqual([`HIVEMATRIX_${name.toUpperCase()}`]);
      expect(service.agents.records.get(name)?.state).toMatch(/token_written|joined/);
    }
    expect({ token: readToken(config, kept), mtime: statSync(tokenPath(config, kept)).mtimeMs }).toEqual(keptBefore);
  });

  it("a fourth dir created while running is provisioned within seconds, without a restart", async () => {
    const { service } = await start({ agents: { ...config.agents, rescanIntervalSeconds: 3600 } });
    await service.agents.idle();
    const fourth = uniqueName("d");
    const created = Date.now();
    makeAgentDir(config, fourth);
    await until(() => existsSync(tokenPath(config, fourth)), 10_000);
    expect(Date.now() - created).toBeLessThan(10_000);
    expect((await whoami(readToken(config, fourth))).status).toBe(200);
    names.push(fourth);
  });

  it("rotation: the old token gets M_UNKNOWN_TOKEN, the new one works, still one device", async () => {
    const { service } = await start();
    await service.agents.idle();
    const name = names[0];
    const old = readToken(config, name);
    await service.agents.rotate(name);
    const fresh = readToken(config, name);
    expect(fresh).not.toBe(old);
    const oldWho = await whoami(old);
    expect(oldWho.status).toBe(401);
    expect(oldWho.json.errcode).toBe("M_UNKNOWN_TOKEN");
    expect((await whoami(fresh)).status).toBe(200);
    expect(await deviceIds(fresh)).toEqual([`HIVEMATRIX_${name.toUpperCase()}`]);
  });

  it("removing the dir revokes the token; the account is kept", async () => {
    const { service } = await start();
    await service.agents.idle();
    const name = names[1];
    const token = readToken(config, name);
    rmSync(join(config.agents.stateRoot, name), { recursive: true });
    await until(() => service.agents.records.get(name)?.state === "removed", 10_000);
    const who = await whoami(token);
    expect(who.json.errcode).toBe("M_UNKNOWN_TOKEN");
    // Kept: registering the name again answers "in use" instead of creating someone new.
    const reg = await fetch(`${env.homeserver.url}/_matrix/client/v3/register`, {
      method: "POST",
      headers: { Authorization: `Bearer ${slot.asToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        type: "m.login.application_service",
        username: slot.agentTemplate.replace("{name}", name),
        inhibit_login: true,
      }),
    });
    expect(((await reg.json()) as { errcode: string }).errcode).toBe("M_USER_IN_USE");
  });

  it("a symlink planted at matrix-token: the file it points to is unchanged", async () => {
    const name = uniqueName("s");
    const dir = makeAgentDir(config, name);
    const victim = join(config.stateDir, "..", `victim-${name}.txt`);
    writeFileSync(victim, "precious\n", { mode: 0o644 });
    symlinkSync(victim, join(dir, "matrix-token"));
    const { service } = await start();
    await service.agents.idle();
    expect(readFileSync(victim, "utf8")).toBe("precious\n");
    expect(statSync(victim).mode & 0o777).toBe(0o644);
    const st = lstatSync(join(dir, "matrix-token"));
    expect(st.isSymbolicLink()).toBe(false);
    expect((await whoami(readToken(config, name))).status).toBe(200);
  });

  it("a symlinked state dir and a hardlinked token file: nothing outside the agent dir changes", async () => {
    const linked = uniqueName("l");
    const hard = uniqueName("k");
    const elsewhere = join(config.stateDir, "..", `elsewhere-${linked}`);
    mkdirSync(elsewhere);
    mkdirSync(join(config.agents.stateRoot, linked));
    symlinkSync(elsewhere, join(config.agents.stateRoot, linked, "state"));
    const victim = join(config.stateDir, "..", `hard-victim-${hard}.txt`);
    writeFileSync(victim, "do not touch\n", { mode: 0o644 });
    const dir = makeAgentDir(config, hard);
    linkSync(victim, join(dir, "matrix-token"));
    const { service, logs } = await start();
    await service.agents.idle();
    expect(readdirSync(elsewhere)).toEqual([]);
    expect(service.agents.records.get(linked)).toMatchObject({ state: "failed", reason: expect.stringMatching(/symlink/) });
    expect(logs.join("")).toContain("is a symlink; refusing to write through it");
    expect(readFileSync(victim, "utf8")).toBe("do not touch\n");
    expect(statSync(victim).mode & 0o777).toBe(0o644);
    expect(statSync(victim).nlink).toBe(1);
    expect((await whoami(readToken(config, hard))).status).toBe(200);
    rmSync(join(config.agents.stateRoot, linked), { recursive: true });
  });

  it("invalid names are refused with a clear log line and nothing is written", async () => {
    const bad = ["UPPER", "waytoolongname", "ünï", "-dash", "a.b"];
    for (const name of bad) mkdirSync(join(config.agents.stateRoot, name, "state"), { recursive: true });
    const escape = join(config.agents.stateRoot, "..", "x");
    const { service, logs } = await start({ agents: { ...config.agents, names: ["../x"] } });
    await service.agents.idle();
    for (const name of bad) {
      expect(readdirSync(join(config.agents.stateRoot, name, "state"))).toEqual([]);
      expect(service.agents.records.get(name)).toBeUndefined();
      expect(logs.join("")).toContain(`refusing agent directory: the name`);
      expect(logs.join("")).toContain(JSON.stringify(JSON.stringify(name)).slice(1, -1));
    }
    expect(existsSync(escape)).toBe(false);
    expect(service.agents.records.get("../x")).toBeUndefined();
    await expect(service.agents.add("../x")).rejects.toThrow(/may only contain/);
    for (const name of bad) rmSync(join(config.agents.stateRoot, name), { recursive: true });
  });

  it("a restart command that fails or does not exist is a warning; onboarding completes", async () => {
    const failing = uniqueName("f");
    const missing = uniqueName("m");
    makeAgentDir(config, failing);
    const { service, logs } = await start({ agents: { ...config.agents, restartCommand: ["false", "{name}"] } });
    await service.agents.idle();
    expect((await whoami(readToken(config, failing))).status).toBe(200);
    expect(logs.join("")).toMatch(new RegExp(`agent ${failing}: restarting its daemon failed \\(\`false\` exited with status 1\\)`));
    await service.stop();
    makeAgentDir(config, missing);
    const second = await start({ agents: { ...config.agents, restartCommand: ["/nonexistent/restart-{name}"] } });
    await second.service.agents.idle();
    expect((await whoami(readToken(config, missing))).status).toBe(200);
    expect(second.logs.join("")).toContain(
      `agent ${missing}: restarting its daemon failed (\`/nonexistent/restart-${missing}\` was not found)`,
    );
  });
});

describe("adopting agents of the older flow under the {name} template", () => {
  it("an account created by plain registration is adopted, its new token written and the old one revoked", async () => {
    const slot = await acquireSlot("legacy");
    let run: StartedService | undefined;
    try {
      const registration = loadRegistration(slot.registrationPath);
      // old3 is reserved for this test (harness.test.ts checks the others' old tokens still work).
      const account = slot.preexistingAccounts[2];
      // Only an account on agents.adopt is taken over (agent-trust.test.ts: the others are refused).
      const config = makeTestConfig(slot, { agents: { adopt: [account.name] } });
      makeAgentDir(config, account.name);
      writeFileSync(tokenPath(config, account.name), `${account.accessToken}\n`, { mode: 0o600 });
      run = await startRecordedService(config, registration);
      await run.service.agents.idle();
      const fresh = readToken(config, account.name);
      expect(fresh).not.toBe(account.accessToken);
      const who = await whoami(fresh);
      expect(who.json.user_id).toBe(account.userId);
      expect((await whoami(account.accessToken)).json.errcode).toBe("M_UNKNOWN_TOKEN");
      // A new agent that the registration does not list: refused with the fix named, nothing written.
      const newcomer = "newcomer";
      makeAgentDir(config, newcomer);
      run.service.agents.rescan();
      await run.service.agents.idle();
      expect(run.service.agents.records.get(newcomer)).toMatchObject({ state: "failed" });
      expect(run.service.agents.records.get(newcomer)?.reason).toMatch(/registration refresh needed/);
      expect(existsSync(tokenPath(config, newcomer))).toBe(false);
      // `!hive sync` retries failed agents; without a registration refresh it fails the same way, writing nothing.
      expect(run.service.agents.retryFailed()).toEqual([newcomer]);
      await run.service.agents.idle();
      expect(run.service.agents.records.get(newcomer)?.reason).toMatch(/registration refresh needed/);
      expect(existsSync(tokenPath(config, newcomer))).toBe(false);
    } finally {
      await run?.service.stop();
      slot.release();
    }
  });
});
