/**
 * The foundation against a real homeserver (Synapse or tuwunel): startup (bot registered, ping), a real transaction
 * pushed by the homeserver seen exactly once, and a clear ping failure on an hs_token mismatch.
 */
import { loadRegistration } from "../../src/registration";
import type { MatrixEvent } from "../../src/store/transactions";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import { onTuwunel } from "../support/homeserver";
import { startRecordedService, type StartedService } from "../support/service";

async function startOn(slot: AcquiredSlot): Promise<StartedService> {
  const config = makeTestConfig(slot, { logging: { level: "debug" } });
  const registration = loadRegistration(slot.registrationPath);
  return startRecordedService(config, registration);
}

async function until(check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("foundation against the homeserver", () => {
  let slot: AcquiredSlot;
  let run: Awaited<ReturnType<typeof startOn>>;
  const env = e2eEnv();

  beforeAll(async () => {
    slot = await acquireSlot("standard");
    run = await startOn(slot);
  });
  afterAll(async () => {
    await run?.service.stop();
    slot?.release();
  });

  it("starts: bot registered, homeserver pinged the appservice successfully", async () => {
    expect(run.service.isReady()).toBe(true);
    // Compared as text so that a failure shows the ping's cause.
    expect(run.service.lastPing?.ok ? "ok" : JSON.stringify(run.service.lastPing)).toBe("ok");
    expect(run.service.lastPingReceived).toBeDefined();
    const whoami = (await run.service.bot.getWhoAmI()) as { user_id: string };
    expect(whoami.user_id).toBe(`@${slot.botLocalpart}:${env.homeserver.serverName}`);
  });

  it("receives a real transaction (an invite of the bot) exactly once", async () => {
    const alice = await registerUser(env.homeserver, `alice${Date.now()}`);
    const create = await fetch(`${env.homeserver.url}/_matrix/client/v3/createRoom`, {
      method: "POST",
      headers: { Authorization: `Bearer ${alice.accessToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({ invite: [run.service.botUserId], preset: "private_chat" }),
    });
    expect(create.status).toBe(200);
    const { room_id: roomId } = (await create.json()) as { room_id: string };
    const isInvite = (e: MatrixEvent): boolean =>
      e.type === "m.room.member" && e.room_id === roomId && e.state_key === run.service.botUserId && e.content?.membership === "invite";
    await until(() => run.seen.some(isInvite));
    // The homeserver sends an appservice's transactions one after the other: once an invite to a second
    // room arrived, any (wrong) redelivery of the first would have arrived before it.
    const second = await fetch(`${env.homeserver.url}/_matrix/client/v3/createRoom`, {
      method: "POST",
      headers: { Authorization: `Bearer ${alice.accessToken}`, "Content-Type": "application/json" },
      body: JSON.stringify({ invite: [run.service.botUserId], preset: "private_chat" }),
    });
    const { room_id: markerRoom } = (await second.json()) as { room_id: string };
    await until(() => run.seen.some((e) => e.type === "m.room.member" && e.room_id === markerRoom));
    expect(run.seen.filter(isInvite)).toHaveLength(1);
  });

  it("keeps every token out of the logs", () => {
    const all = run.logs.join("");
    expect(all).toContain("hive-matrix is ready");
    expect(all).not.toContain(slot.asToken);
    expect(all).not.toContain(slot.hsToken);
  });
});

describe("hs_token mismatch against the homeserver", () => {
  it("the ping fails and the service says why", async () => {
    const slot = await acquireSlot("badtoken");
    try {
      const run = await startOn(slot);
      expect(run.service.isReady()).toBe(true);
      // tuwunel has no M_BAD_STATUS; its M_UNKNOWN names the appservice's answer, which the service reads.
      expect(run.service.lastPing).toMatchObject({ ok: false, errcode: onTuwunel ? "M_UNKNOWN" : "M_BAD_STATUS" });
      const all = run.logs.join("");
      expect(all).toMatch(/homeserver could not ping the appservice: the appservice refused the homeserver's hs_token \(HTTP 403\)/);
      expect(all).toMatch(/wrong hs_token refused/);
      await run.service.stop();
    } finally {
      slot.release();
    }
  });
});
