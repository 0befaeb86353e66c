/**
 * Faults against the real homeserver (Synapse or tuwunel): a homeserver that is down at start or restarts mid-onboarding,
 * a state dir that cannot be written, a corrupted state file. Nothing is lost, nothing duplicated.
 */
import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { agentLocalpart } from "../../src/agents/names";
import { loadRegistration, type Registration } from "../../src/registration";
import { StateError } from "../../src/store/state-store";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { attachHomeserver } from "../../dev/homeserver";
import { freePort } from "../../dev/server-process";
import { makeAgentDir, uniqueName } from "../support/agents";
import { TcpProxy } from "../support/proxy";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually, until } from "../support/wait";

const env = e2eEnv();

async function get(token: string, path: string): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${env.homeserver.url}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** Makes a directory unwritable even for root (immutable flag), or by mode for other users. */
function makeUnwritable(dir: string): () => void {
  if (process.getuid?.() === 0) {
    execFileSync("chattr", ["+i", dir]);
    return () => execFileSync("chattr", ["-i", dir]);
  }
  execFileSync("chmod", ["0500", dir]);
  return () => execFileSync("chmod", ["0700", dir]);
}

describe("faults", () => {
  let slot: AcquiredSlot;
  let registration: Registration;
  let run: StartedService | undefined;

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    registration = loadRegistration(slot.registrationPath);
  });
  afterEach(async () => {
    await run?.service.stop();
    run = undefined;
  });
  afterAll(() => slot?.release());

  it("homeserver down at start: the service waits, then becomes ready, without crashing", async () => {
    const proxy = new TcpProxy(await freePort(), { host: "127.0.0.1", port: env.homeserver.port });
    const config = makeTestConfig(slot, { homeserver: { url: proxy.url } });
    const starting = startRecordedService(config, registration);
    let settled = false;
    void starting.finally(() => (settled = true)).catch(() => undefined);
    // Up and waiting, not merely slow to start: it listens (before it looks for the homeserver) and says it is not ready.
    const health = await eventually(async () => {
      const res = await fetch(`${config.appservice.url}/health`).catch(() => undefined);
      return res?.status === 503 ? ((await res.json()) as Record<string, unknown>) : undefined;
    }, "a 503 from /health");
    expect(health).toEqual({ ready: false, live: true });
    expect(settled).toBe(false);
    await proxy.up();
    try {
      run = await starting;
      expect(run.service.isReady()).toBe(true);
      expect(run.logs.join("")).toMatch(/homeserver not reachable yet|waiting for the homeserver/i);
    } finally {
      await run?.service.stop();
      run = undefined;
      await proxy.down();
    }
  });

  it("the homeserver applied a new agent's /register and went away before answering: the agent is onboarded, one device", async () => {
    // On a pooled connection, such a request fails like one the server never read; sent again, it
    // would meet M_USER_IN_USE for the user it had just created.
    const proxy = new TcpProxy(await freePort(), { host: "127.0.0.1", port: env.homeserver.port });
    await proxy.up();
    const config = makeTestConfig(slot, { homeserver: { url: proxy.url } });
    const name = uniqueName("c");
    makeAgentDir(config, name);
    proxy.cutAnswerTo(new RegExp(`"username":"${agentLocalpart(config, name)}"`));
    try {
      run = await startRecordedService(config, registration);
      const started = run;
      const state = (): string => started.service.agents.records.get(name)?.state ?? "";
      await until(() => ["token_written", "joined"].includes(state()) || /did not create it/.test(started.logs.join("")), 60_000);
      expect(proxy.cuts).toBe(1);
      expect(run.logs.join("")).toMatch(new RegExp(`agent ${name}: an interrupted registration had created`));
      expect(["token_written", "joined"]).toContain(state());
      const token = readFileSync(join(config.agents.stateRoot, name, "state", "matrix-token"), "utf8").trim();
      const devices = await get(token, "/_matrix/client/v3/devices");
      expect((devices.json.devices as unknown[]).length).toBe(1);
    } finally {
      await run?.service.stop();
      run = undefined;
      await proxy.down();
    }
  });

  it("the homeserver restarted in the middle of onboarding 30 agents: all 30 provisioned, one device each", async () => {
    const config: Config = makeTestConfig(slot, { agents: { concurrency: 8 } });
    const names = Array.from({ length: 30 }, (_, i) => `r${randomBytes(2).toString("hex")}${i}`);
    for (const name of names) mkdirSync(join(config.agents.stateRoot, name, "state"), { recursive: true });
    const tokenFile = (n: string): string => join(config.agents.stateRoot, n, "state", "matrix-token");
    // Attached before, and the first token file watched closely: onboarding is fast enough to end
    // within one 100 ms poll and an attach, and then the restart would hit nothing.
    // Agents are provisioned while the service still starts (its first reconcile), so the watch
    // runs alongside the start.
    const homeserver = await attachHomeserver(env.homeserver);
    const starting = startRecordedService(config, registration);
    starting.catch(() => undefined); // a failed start is reported by the await below
    const deadline = Date.now() + 20_000;
    while (!names.some((n) => existsSync(tokenFile(n)))) {
      if (Date.now() > deadline) throw new Error("no agent was provisioned within 20 s");
      await new Promise((r) => setTimeout(r, 5));
    }
    const restarting = homeserver.restart();
    const doneAtRestart = names.filter((n) => existsSync(tokenFile(n))).length;
    run = await starting;
    const service = run.service;
    await restarting;
    await until(async () => {
      await service.agents.idle();
      return names.every((n) => ["token_written", "joined"].includes(service.agents.records.get(n)?.state ?? ""));
    }, 90_000);
    // The restart really hit the middle of the work.
    expect(doneAtRestart).toBeLessThan(names.length);
    expect(run.logs.join("")).toMatch(/homeserver trouble, retrying|homeserver request failed, retrying/);
    for (const name of names) {
      const token = readFileSync(tokenFile(name), "utf8").trim();
      const devices = await get(token, "/_matrix/client/v3/devices");
      expect(devices.status).toBe(200);
      expect((devices.json.devices as unknown[]).length).toBe(1);
    }
  });

  it("a state dir that cannot be written: a clear error naming it, no file left behind", async () => {
    const config = makeTestConfig(slot);
    const restore = makeUnwritable(config.stateDir);
    try {
      await expect(startRecordedService(config, registration)).rejects.toThrow(StateError);
      await expect(startRecordedService(config, registration)).rejects.toThrow(new RegExp(`${config.stateDir}: .*(writable|lock)`));
      expect(readdirSync(config.stateDir)).toEqual([]);
    } finally {
      restore();
    }
  });

  it("an agent's state dir hive-matrix may not write yet: no account touched, retried until it may", async () => {
    // Under the NixOS module the service is unprivileged and an agent dir's ACL is granted a moment
    // after the dir appears; here the immutable flag stands in for the missing permission.
    const config = makeTestConfig(slot);
    const name = `w${randomBytes(3).toString("hex")}`;
    const stateDir = join(config.agents.stateRoot, name, "state");
    mkdirSync(stateDir, { recursive: true });
    const restore = makeUnwritable(stateDir);
    let restored = false;
    try {
      run = await startRecordedService(config, registration);
      await until(() => /waiting for its permissions/.test(run?.logs.join("") ?? ""));
      const record = run.service.agents.records.get(name);
      expect(record?.state).toBe("failed");
      // Checked before any homeserver call: the account was not even created.
      const userId = String(record?.userId);
      const profile = await fetch(`${env.homeserver.url}/_matrix/client/v3/profile/${encodeURIComponent(userId)}`);
      expect(profile.status).toBe(404);
      restore();
      restored = true;
      await until(() => existsSync(join(stateDir, "matrix-token")), 60_000);
      const token = readFileSync(join(stateDir, "matrix-token"), "utf8").trim();
      const whoami = await get(token, "/_matrix/client/v3/account/whoami");
      expect(whoami.json.user_id).toBe(userId);
    } finally {
      if (!restored) restore();
    }
  });

  it("a corrupted agents.json: a clear error naming the file, and the file is left as it was", async () => {
    const config = makeTestConfig(slot);
    const file = join(config.stateDir, "agents.json");
    writeFileSync(file, '{"version": 1, "agents": {"x": {"state": "bogus"}}}', { mode: 0o600 });
    await expect(startRecordedService(config, registration)).rejects.toThrow(/agents\.json: is corrupted/);
    expect(readFileSync(file, "utf8")).toBe('{"version": 1, "agents": {"x": {"state": "bogus"}}}');
  });
});
