/**
 * hive-matrix as a real process against Synapse: SIGTERM lets in-flight onboarding finish and
 * flushes state; a later start completes the rest with one device per agent.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { loadRegistration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { spawnService, waitReady } from "../support/child";
import { startRecordedService, type StartedService } from "../support/service";
import { until } from "../support/wait";

const env = e2eEnv();

async function whoami(token: string): Promise<number> {
  const res = await fetch(`${env.synapse.url}/_matrix/client/v3/account/whoami`, { headers: { Authorization: `Bearer ${token}` } });
  return res.status;
}

async function deviceCount(token: string): Promise<number> {
  const res = await fetch(`${env.synapse.url}/_matrix/client/v3/devices`, { headers: { Authorization: `Bearer ${token}` } });
  return ((await res.json()) as { devices: unknown[] }).devices.length;
}

describe("hive-matrix as a process", () => {
  let slot: AcquiredSlot;
  let run: StartedService | undefined;

  beforeAll(async () => {
    slot = await acquireSlot("standard");
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  it("SIGTERM in the middle of onboarding: in-flight work finishes, state is flushed, nothing half-written", async () => {
    // A slow restart command keeps each agent in flight long enough to be caught by the signal.
    const config = makeTestConfig(slot, { agents: { concurrency: 4, restartCommand: ["sleep", "0.3"] }, logging: { level: "info" } });
    const names = Array.from({ length: 16 }, (_, i) => `t${randomBytes(2).toString("hex")}${i}`);
    for (const name of names) mkdirSync(join(config.agents.stateRoot, name, "state"), { recursive: true });
    const tokenOf = (name: string): string => join(config.agents.stateRoot, name, "state", "matrix-token");

    const child = spawnService(config, join(config.stateDir, ".."));
    await waitReady(config.appservice.url, child);
    await until(() => names.some((n) => existsSync(tokenOf(n))), 30_000);
    child.proc.kill("SIGTERM");
    expect(await child.exited).toBe(0);
    const log = child.lines.join("\n");
    expect(log).toContain("hive-matrix stopped");
    expect(log).not.toContain(slot.asToken);

    const written = names.filter((n) => existsSync(tokenOf(n)));
    expect(written.length).toBeLessThan(names.length);
    for (const name of written) expect(await whoami(readFileSync(tokenOf(name), "utf8").trim())).toBe(200);
    for (const name of names) {
      expect(readdirSync(join(config.agents.stateRoot, name, "state")).filter((f) => f.includes(".tmp-"))).toEqual([]);
    }
    // The records were flushed and describe what is on disk.
    const records = z
      .object({ agents: z.record(z.object({ state: z.string() })) })
      .parse(JSON.parse(readFileSync(join(config.stateDir, "agents.json"), "utf8")));
    for (const name of written) expect(records.agents[name]?.state).toMatch(/token_written|joined/);
    expect(existsSync(join(config.stateDir, "lock"))).toBe(false);

    // The next start completes the rest, and every agent still has exactly one device.
    run = await startRecordedService(
      { ...config, agents: { ...config.agents, restartCommand: ["true"] } },
      loadRegistration(slot.registrationPath),
    );
    await run.service.agents.idle();
    for (const name of names) {
      const token = readFileSync(tokenOf(name), "utf8").trim();
      expect(await whoami(token)).toBe(200);
      expect(await deviceCount(token)).toBe(1);
    }
  });
});
