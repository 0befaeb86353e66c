/**
 * The e2e harness itself: the run's homeserver, its appservice slots and the helpers the other e2e
 * tests rely on, checked against what the homeserver (Synapse or tuwunel) actually answers.
 */
import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { createServer, type Server } from "node:http";
import YAML from "yaml";
import { acquireSlot, e2eEnv, makeTestConfig, type AcquiredSlot, type Slot } from "../harness/slots";
import { registerUser } from "../../dev/homeserver";
import { HomeserverHttpError } from "../../dev/server-process";
import { itSynapseOnly, onTuwunel } from "../support/homeserver";

interface MxResponse {
  status: number;
  body: Record<string, unknown>;
}

const env = e2eEnv();
const hs = env.homeserver;
const rand = (): string => randomBytes(4).toString("hex");

async function mx(
  method: string,
  path: string,
  token: string,
  opts: { body?: unknown; query?: Record<string, string> } = {},
): Promise<MxResponse> {
  const url = new URL(path, hs.url);
  for (const [k, v] of Object.entries(opts.query ?? {})) url.searchParams.set(k, v);
  const res = await fetch(url, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

function asRegister(slot: Slot, username: string): Promise<MxResponse> {
  return mx("POST", "/_matrix/client/v3/register", slot.asToken, {
    body: { type: "m.login.application_service", username },
  });
}

/** Stands in for the appservice on the slot's port: answers the ping only with the service's hs_token. */
async function fakeAppservice(slot: Slot): Promise<{ server: Server; seenTokens: string[] }> {
  const serviceCopy = YAML.parse(readFileSync(slot.registrationPath, "utf8")) as { hs_token: string };
  const seenTokens: string[] = [];
  const server = createServer((req, res) => {
    const token = (req.headers.authorization ?? "").replace(/^Bearer /, "");
    seenTokens.push(token);
    const ok = token === serviceCopy.hs_token;
    res.writeHead(ok ? 200 : 403, { "content-type": "application/json" });
    res.end(ok ? "{}" : JSON.stringify({ errcode: "M_FORBIDDEN" }));
  });
  await new Promise<void>((resolve) => server.listen(slot.port, "127.0.0.1", resolve));
  return { server, seenTokens };
}

describe("e2e harness", () => {
  it("registerUser gives a working access token", async () => {
    const localpart = `u${rand()}`;
    const user = await registerUser(hs, localpart, { displayname: "U" });
    expect(user.userId).toBe(`@${localpart}:${hs.serverName}`);
    expect(user.deviceId).toBeTruthy();
    const whoami = await mx("GET", "/_matrix/client/v3/account/whoami", user.accessToken);
    expect(whoami).toMatchObject({ status: 200, body: { user_id: user.userId } });
  });

  describe("a standard slot", () => {
    let slot: AcquiredSlot;
    beforeAll(async () => {
      slot = await acquireSlot("standard");
    });
    afterAll(() => slot.release());

    it("registers users in its namespace with its as_token and can act as them", async () => {
      const localpart = slot.agentTemplate.replace("{name}", `probe${rand()}`);
      const reg = await asRegister(slot, localpart);
      expect(reg).toMatchObject({ status: 200, body: { user_id: `@${localpart}:${hs.serverName}` } });
      const whoami = await mx("GET", "/_matrix/client/v3/account/whoami", slot.asToken, {
        query: { user_id: `@${localpart}:${hs.serverName}` },
      });
      expect(whoami).toMatchObject({ status: 200, body: { user_id: `@${localpart}:${hs.serverName}` } });
      // "ensure registered" relies on this answer for an existing user.
      expect(await asRegister(slot, localpart)).toMatchObject({ status: 400, body: { errcode: "M_USER_IN_USE" } });
    });

    it("cannot register users outside its namespace", async () => {
      const reg = await asRegister(slot, `outsider${rand()}`);
      expect(reg.status).toBeGreaterThanOrEqual(400);
      expect(["M_EXCLUSIVE", "M_FORBIDDEN", "M_INVALID_USERNAME"]).toContain(reg.body.errcode);
    });

    it("keeps its namespace exclusive against non-appservice registration", async () => {
      const localpart = slot.agentTemplate.replace("{name}", `x${rand()}`);
      // The other way in: Synapse's shared-secret admin API (it runs the same check_username as
      // /register), tuwunel's token-gated /register. Both must refuse.
      const err = await registerUser(hs, localpart).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(HomeserverHttpError);
      expect((err as HomeserverHttpError).errcode).toBe("M_EXCLUSIVE");
    });

    itSynapseOnly("/_synapse/admin is Synapse's admin API", "reports the namespace as taken to a server admin", async () => {
      const localpart = slot.agentTemplate.replace("{name}", `x${rand()}`);
      const admin = await registerUser(hs, `admin${rand()}`, { admin: true });
      const available = await mx("GET", "/_synapse/admin/v1/username_available", admin.accessToken, {
        query: { username: localpart },
      });
      expect(available).toMatchObject({ status: 400, body: { errcode: "M_EXCLUSIVE" } });
    });

    it("is reachable by the homeserver with the hs_token of the service's copy", async () => {
      const { server, seenTokens } = await fakeAppservice(slot);
      try {
        const pingOnce = () => mx("POST", `/_matrix/client/v1/appservice/${slot.id}/ping`, slot.asToken, { body: {} });
        // Synapse answers 502 ("AlreadyCalled") to a ping that meets its own retry of transactions
        // queued for the slot, as after another test file restarted the shared Synapse; a ping a
        // moment later is answered.
        let ping = await pingOnce();
        for (let i = 0; i < 5 && ping.status === 502; i++) {
          await new Promise((r) => setTimeout(r, 500));
          ping = await pingOnce();
        }
        expect(ping.status).toBe(200);
        // The homeserver may also deliver transactions queued for this slot by earlier tests: every request counts.
        expect(seenTokens.length).toBeGreaterThan(0);
        expect([...new Set(seenTokens)]).toEqual([slot.hsToken]);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    });

    it("gives test configs the slot's identity and fresh state dirs", () => {
      const a = makeTestConfig(slot);
      const b = makeTestConfig(slot, { agents: { names: ["alpha"] }, logging: { level: "debug" } });
      expect(a.homeserver).toMatchObject({ url: hs.url, domain: hs.serverName });
      expect(a.appservice).toMatchObject({
        id: slot.id,
        port: slot.port,
        url: `http://127.0.0.1:${slot.port}`,
        botLocalpart: slot.botLocalpart,
        registration: slot.registrationPath,
      });
      expect(a.agents).toMatchObject({ localpart: slot.agentTemplate, restartCommand: ["true"], names: [] });
      expect(a.operators).toEqual([]);
      expect(a.logging.level).toBe("warn");
      expect(b.agents).toMatchObject({ names: ["alpha"], localpart: slot.agentTemplate, restartCommand: ["true"] });
      expect(b.logging.level).toBe("debug");
      expect(a.stateDir).not.toBe(b.stateDir);
      expect(a.agents.stateRoot).not.toBe(b.agents.stateRoot);
      expect(a.stateDir.startsWith(env.runDir)).toBe(true);
      expect(statSync(a.stateDir).mode & 0o777).toBe(0o700);
      expect(statSync(slot.registrationPath).mode & 0o777).toBe(0o600);
    });
  });

  it("hands out each slot once until it is released", async () => {
    const taken: AcquiredSlot[] = [];
    try {
      for (;;) {
        const next = await acquireSlot("standard", { timeoutMs: 300 }).catch(() => undefined);
        if (!next) break;
        taken.push(next);
      }
      expect(taken.length).toBeGreaterThan(0);
      expect(new Set(taken.map((s) => s.name)).size).toBe(taken.length);
      const waiting = acquireSlot("standard", { timeoutMs: 5_000 });
      const freed = taken.pop();
      freed?.release();
      const again = await waiting;
      expect(again.name).toBe(freed?.name);
      taken.push(again);
    } finally {
      for (const s of taken) s.release();
    }
  });

  it("a badtoken slot: the homeserver's hs_token differs from the service's, so the ping fails auth", async () => {
    const slot = await acquireSlot("badtoken");
    try {
      expect(slot.homeserverHsToken).not.toBe(slot.hsToken);
      const homeserverCopy = YAML.parse(readFileSync(slot.homeserverRegistrationPath, "utf8")) as Record<string, unknown>;
      const serviceCopy = YAML.parse(readFileSync(slot.registrationPath, "utf8")) as Record<string, unknown>;
      expect({ ...homeserverCopy, hs_token: "x" }).toEqual({ ...serviceCopy, hs_token: "x" });

      const { server, seenTokens } = await fakeAppservice(slot);
      try {
        const ping = await mx("POST", `/_matrix/client/v1/appservice/${slot.id}/ping`, slot.asToken, { body: {} });
        // tuwunel has no M_BAD_STATUS: any failed appservice call is its generic 500.
        if (onTuwunel) expect(ping).toMatchObject({ status: 500, body: { errcode: "M_UNKNOWN" } });
        else expect(ping).toMatchObject({ status: 502, body: { errcode: "M_BAD_STATUS", status: 403 } });
        expect(seenTokens).toEqual([slot.homeserverHsToken]);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
      // The as_token is shared, so the service can still talk to the homeserver. tuwunel 1.4 does not
      // create the bot user of a configured appservice: "ensure registered" first, as the service does.
      const bot = await asRegister(slot, slot.botLocalpart);
      expect(bot.status === 200 || bot.body.errcode === "M_USER_IN_USE").toBe(true);
      const whoami = await mx("GET", "/_matrix/client/v3/account/whoami", slot.asToken);
      expect(whoami).toMatchObject({ status: 200, body: { user_id: `@${slot.botLocalpart}:${hs.serverName}` } });
    } finally {
      slot.release();
    }
  });

  it("a legacy slot: accounts from the older flow exist, work, and are in the exclusive namespace", async () => {
    const slot = await acquireSlot("legacy");
    try {
      expect(slot.agentTemplate).toBe("{name}");
      expect(slot.preexistingAccounts.map((a) => a.name)).toEqual(["old1", "old2", "old3"]);
      const regexes = (
        YAML.parse(readFileSync(slot.registrationPath, "utf8")) as { namespaces: { users: { regex: string }[] } }
      ).namespaces.users.map((u) => u.regex);
      expect(regexes).toContain(`^@old1:${hs.serverName.replace(/\./g, "\\.")}$`);
      for (const account of slot.preexistingAccounts) {
        expect(account.userId).toBe(`@${account.name}:${hs.serverName}`);
        // old3 is the adoption test's (onboarding.test.ts), which revokes its old token: whichever file runs first.
        if (account.name !== "old3") {
          const own = await mx("GET", "/_matrix/client/v3/account/whoami", account.accessToken);
          expect(own).toMatchObject({ status: 200, body: { user_id: account.userId } });
        }
        const asUser = await mx("GET", "/_matrix/client/v3/account/whoami", slot.asToken, {
          query: { user_id: account.userId },
        });
        expect(asUser).toMatchObject({ status: 200, body: { user_id: account.userId } });
        expect(await asRegister(slot, account.name)).toMatchObject({ status: 400, body: { errcode: "M_USER_IN_USE" } });
      }
      const err = await registerUser(hs, `oldx${rand()}`).then(
        () => undefined,
        (e: unknown) => e,
      );
      // An unlisted name is NOT in the namespace: an ordinary registration may create it.
      expect(err).toBeUndefined();
    } finally {
      slot.release();
    }
  });

  it("has rate limits off: messages, room creation and logins in quick succession all succeed", async () => {
    const user = await registerUser(hs, `rl${rand()}`);
    const room = await mx("POST", "/_matrix/client/v3/createRoom", user.accessToken, { body: { preset: "private_chat" } });
    expect(room.status).toBe(200);
    const roomId = encodeURIComponent(String(room.body.room_id));
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) {
      const sent = await mx("PUT", `/_matrix/client/v3/rooms/${roomId}/send/m.room.message/t${i}-${rand()}`, user.accessToken, {
        body: { msgtype: "m.text", body: `message ${i}` },
      });
      statuses.push(sent.status);
    }
    expect(statuses).toEqual(Array(30).fill(200));

    const rooms: number[] = [];
    for (let i = 0; i < 12; i++) {
      rooms.push((await mx("POST", "/_matrix/client/v3/createRoom", user.accessToken, { body: {} })).status);
    }
    expect(rooms).toEqual(Array(12).fill(200)); // default rc_room_creation burst is 10

    const logins: number[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${hs.url}/_matrix/client/v3/login`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ type: "m.login.password", identifier: { type: "m.id.user", user: user.userId }, password: user.password }),
      });
      logins.push(res.status);
    }
    expect(logins).toEqual(Array(6).fill(200)); // default rc_login.account burst is 3
  });
});
