/**
 * hive-matrix as a real process against the homeserver (Synapse or tuwunel): SIGTERM lets in-flight onboarding finish and
 * flushes state; a later start completes the rest with one device per agent.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { FORK_SERVER_NAME } from "../../src/agents/fork-server";
import { loadRegistration } from "../../src/registration";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { spawnService, waitReady, type ServiceProcess } from "../support/child";
import { registerUser } from "../../dev/homeserver";
import { cs, repliesTo, say, timeline, type RoomEvent } from "../support/operator";
import { startRecordedService, type StartedService } from "../support/service";
import { eventually, until } from "../support/wait";

const env = e2eEnv();

async function whoami(token: string): Promise<number> {
  const res = await fetch(`${env.homeserver.url}/_matrix/client/v3/account/whoami`, { headers: { Authorization: `Bearer ${token}` } });
  return res.status;
}

async function deviceCount(token: string): Promise<number> {
  const res = await fetch(`${env.homeserver.url}/_matrix/client/v3/devices`, { headers: { Authorization: `Bearer ${token}` } });
  return ((await res.json()) as { devices: unknown[] }).devices.length;
}

/** The pid of the fork server running `pid`'s restart commands, if there is one. */
function forkServerOf(pid: number): number | undefined {
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    for (const child of readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").split(" ").filter(Boolean)) {
      if (readFileSync(`/proc/${child}/cmdline`, "utf8").split("\0").includes(FORK_SERVER_NAME)) return Number(child);
    }
  }
  return undefined;
}

/** Resolves as soon as the process writes a line that `match`es (checked on every chunk, not polled). */
function logged(child: ServiceProcess, match: (line: string) => boolean, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const streams = [child.proc.stdout, child.proc.stderr];
    const done = (err?: Error): void => {
      clearTimeout(timer);
      for (const s of streams) s?.off("data", check);
      if (err) reject(err);
      else resolve();
    };
    // Registered after spawnService's own listener, so `lines` already holds the chunk.
    const check = (): void => {
      if (child.lines.some(match)) done();
    };
    const timer = setTimeout(() => done(new Error(`no matching log line within ${timeoutMs} ms`)), timeoutMs);
    for (const s of streams) s?.on("data", check);
    check();
  });
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
    // A token written means its restart was handed to the fork server.
    const forkServer = forkServerOf(child.proc.pid!);
    expect(forkServer).toBeDefined();
    child.proc.kill("SIGTERM");
    expect(await child.exited).toBe(0);
    // It ended with the service (its stdin closed on stop), leaving no helper behind.
    expect(existsSync(`/proc/${forkServer}`)).toBe(false);
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

  it("SIGKILL while commands are in flight: after restarts every command is answered exactly once, none runs twice", async () => {
    await run?.service.stop();
    run = undefined;
    const operator = await registerUser(env.homeserver, `kop${randomBytes(3).toString("hex")}`);
    const config = makeTestConfig(slot, { operators: [operator.userId], logging: { level: "info" } });
    const dir = join(config.stateDir, "..");
    const commands: string[] = [];
    let child = spawnService(config, dir);
    await waitReady(config.appservice.url, child);
    const roomId = readFileSync(join(config.stateDir, "control-room-id"), "utf8").trim();
    await cs(operator.accessToken, "POST", `/join/${encodeURIComponent(roomId)}`, {});
    for (let round = 0; round < 4; round++) {
      const eventId = await say(operator, roomId, "!hive sync");
      commands.push(eventId);
      if (round < 2) {
        // Somewhere between delivery, the inbox write, the command's record and its reply.
        await new Promise((r) => setTimeout(r, round * 40));
      } else {
        // Once the command runs. A homeserver that delivers later than the fixed delays above
        // (tuwunel) would otherwise have every kill land before the delivery.
        await logged(child, (l) => l.includes(eventId) && l.includes("running a control-room command"), 30_000);
        await new Promise((r) => setTimeout(r, (round - 2) * 20));
      }
      child.proc.kill("SIGKILL");
      await child.exited;
      child = spawnService(config, dir);
      await waitReady(config.appservice.url, child);
    }
    try {
      const botUserId = `@${slot.botLocalpart}:${env.homeserver.serverName}`;
      for (const eventId of commands) {
        await eventually(
          async () => ((await repliesTo(operator, roomId, eventId, botUserId)).length > 0 ? true : undefined),
          `a reply to ${eventId}`,
          60_000,
        );
      }
      // A later command, answered after everything before it (one command at a time, events in
      // order): any (wrong) second delivery or second reply to the ones above would come first.
      const marker = await say(operator, roomId, "!hive version");
      await eventually(
        async () => ((await repliesTo(operator, roomId, marker, botUserId)).length > 0 ? true : undefined),
        "the reply to the marker",
        60_000,
      );
      const events = await timeline(operator, roomId);
      /** A reply's text after its latest edit (timeline is newest first). */
      const finalText = (reply: RoomEvent): string => {
        const edit = events.find(
          (e) => (e.content["m.relates_to"] as { rel_type?: string; event_id?: string } | undefined)?.event_id === reply.event_id,
        );
        return String(((edit?.content["m.new_content"] as RoomEvent["content"] | undefined) ?? reply.content).body);
      };
      const outcomes: string[] = [];
      for (const eventId of commands) {
        const replies = await repliesTo(operator, roomId, eventId, botUserId);
        const answers = replies.filter((r) => !finalText(r).startsWith("Running `!hive sync`"));
        // One answer: the result, or "interrupted, not run again". A progress message may be left
        // over only when the kill fell between its sending and its recording (milliseconds).
        expect(answers).toHaveLength(1);
        expect(replies.length - answers.length).toBeLessThanOrEqual(1);
        outcomes.push(/restarted while this command was running/.test(finalText(answers[0])) ? "interrupted" : "done");
      }
      // The kills really hit commands in flight (else the test proves nothing about them).
      expect(outcomes).toContain("interrupted");
      expect(child.lines.join("\n")).not.toContain(slot.hsToken);
    } finally {
      child.proc.kill("SIGTERM");
      await child.exited;
    }
  });

  it("SIGHUP re-reads the registration and keeps running; a broken file is refused and the one in use kept", async () => {
    const config = makeTestConfig(slot, { logging: { level: "info" } });
    const child = spawnService(config, join(config.stateDir, ".."));
    const good = readFileSync(slot.registrationPath, "utf8");
    try {
      await waitReady(config.appservice.url, child);
      const refusals = (trigger: string): string[] =>
        child.lines.filter((l) => l.includes(`"trigger":"${trigger}"`) && /not reloaded: .*not valid YAML/.test(l));
      writeFileSync(slot.registrationPath, "{ not: yaml", { mode: 0o600 });
      await until(() => refusals("file changed").length > 0);
      child.proc.kill("SIGHUP");
      await until(() => refusals("SIGHUP").length === 1);
      expect((await fetch(`${config.appservice.url}/health`)).status).toBe(200);
      // Still the registration loaded at start: the homeserver's transactions are accepted.
      const res = await fetch(`${config.appservice.url}/_matrix/app/v1/transactions/hup-${randomBytes(4).toString("hex")}`, {
        method: "PUT",
        headers: { Authorization: `Bearer ${slot.hsToken}`, "Content-Type": "application/json" },
        body: JSON.stringify({ events: [] }),
      });
      expect(res.status).toBe(200);
    } finally {
      writeFileSync(slot.registrationPath, good, { mode: 0o600 });
      child.proc.kill("SIGTERM");
    }
    expect(await child.exited).toBe(0);
  });
});
