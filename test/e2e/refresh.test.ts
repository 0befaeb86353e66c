/**
 * A registration refresh under the bare `{name}` template, end to end, without restarting
 * hive-matrix: a new agent is "registration refresh needed"; the operator regenerates the
 * registration and restarts the homeserver (Synapse, like tuwunel, reads registrations only at
 * start); hive-matrix re-reads the file by itself and the agent onboards.
 *
 * It runs its own homeserver (the run's kind), which loads the service's registration file directly
 * (as the NixOS module's tuwunel does): restarting the run's shared one would disturb the other test files.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { configSchema, type Config } from "../../src/config/schema";
import { loadRegistration, writeRegistration } from "../../src/registration";
import { e2eEnv } from "../harness/slots";
import { startHomeserver, type RunningHomeserver } from "../../dev/homeserver";
import { freePort } from "../../dev/server-process";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually } from "../support/wait";

const env = e2eEnv();
const tag = randomBytes(2).toString("hex");

describe("registration refresh without restarting hive-matrix", () => {
  let synapse: RunningHomeserver | undefined;
  let run: StartedService | undefined;
  let config: Config;
  const first = `ra${tag}`;
  const newcomer = `rb${tag}`;

  beforeAll(async () => {
    mkdirSync(join(env.runDir, "tmp"), { recursive: true });
    const dir = mkdtempSync(join(env.runDir, "tmp", "refresh-"));
    const synapsePort = await freePort();
    const port = await freePort();
    config = configSchema.parse({
      homeserver: { url: `http://127.0.0.1:${synapsePort}`, domain: env.homeserver.serverName },
      appservice: {
        id: "hm-refresh",
        port,
        url: `http://127.0.0.1:${port}`,
        botLocalpart: "hive-refresh",
        registration: join(dir, "appservice", "registration.yaml"),
      },
      stateDir: join(dir, "state"),
      agents: { stateRoot: join(dir, "agents"), localpart: "{name}", restartCommand: ["true"] },
      rooms: { chat: { alias: "" } },
      logging: { level: "debug" },
    });
    mkdirSync(join(dir, "appservice"), { mode: 0o700 });
    mkdirSync(join(config.agents.stateRoot, first, "state"), { recursive: true });
    writeRegistration(config, config.appservice.registration, [first]);
    synapse = await startHomeserver({
      baseDir: join(dir, "homeserver"),
      serverName: env.homeserver.serverName,
      port: synapsePort,
      appserviceConfigFiles: [config.appservice.registration],
    });
    run = await startRecordedService(config, loadRegistration(config.appservice.registration));
    await run.service.agents.idle();
  });

  afterAll(async () => {
    await run?.service.stop();
    await synapse?.stop();
  });

  const whoami = async (token: string): Promise<unknown> => {
    const res = await fetch(`${config.homeserver.url}/_matrix/client/v3/account/whoami`, { headers: { Authorization: `Bearer ${token}` } });
    return ((await res.json()) as { user_id?: unknown }).user_id;
  };
  const tokenFile = (name: string): string => join(config.agents.stateRoot, name, "state", "matrix-token");

  it("a new agent is refused with the fix named, then onboards once the registration is refreshed", async () => {
    const service = run!.service;
    expect(service.agents.records.get(first)).toMatchObject({ state: expect.stringMatching(/token_written|joined/) });

    mkdirSync(join(config.agents.stateRoot, newcomer, "state"), { recursive: true });
    service.agents.rescan();
    await service.agents.idle();
    const refused = service.agents.records.get(newcomer);
    expect(refused).toMatchObject({ state: "failed" });
    expect(refused?.reason).toMatch(/registration refresh needed/);
    expect(refused?.reason).toMatch(/run `hive-matrix registration`, then make the homeserver load it/);
    expect(refused?.reason).toMatch(/re-reads the file by itself .*needs no restart/);
    expect(existsSync(tokenFile(newcomer))).toBe(false);

    // What `hive-matrix registration` does: the names from the dirs on disk, the tokens kept.
    writeRegistration(config, config.appservice.registration, [first, newcomer]);
    await eventually(
      () => (run!.logs.join("").includes("registration reloaded: 3 user namespace entries in use") ? true : undefined),
      "the reload",
    );
    // The homeserver loads it at its start.
    await synapse!.restart();

    await eventually(
      () => (["token_written", "joined"].includes(service.agents.records.get(newcomer)?.state ?? "") ? true : undefined),
      `${newcomer} onboarded`,
      90_000,
    );
    const token = readFileSync(tokenFile(newcomer), "utf8").trim();
    expect(await whoami(token)).toBe(`@${newcomer}:${env.homeserver.serverName}`);
    // The same instance all along.
    expect(service.isReady()).toBe(true);
    expect(run!.logs.join("")).not.toContain("hive-matrix stopped");
  });
});
