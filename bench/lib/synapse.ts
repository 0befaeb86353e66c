/**
 * The run's homeserver (Synapse, or tuwunel when TUWUNEL_BIN is set): started through the dev
 * launchers (127.0.0.1, Synapse's rate limits off) under the run dir, with every hive-matrix
 * registration the selected scenarios need, and registration with a registration token so the
 * older onboarding flow can be measured against the same server.
 */
import { join } from "node:path";
import { registerUser, startHomeserver, type RunningHomeserver } from "../../dev/homeserver";
import { freePort, type RegisteredUser } from "../../dev/server-process";
import { prepareHive, type HiveKind, type HiveSpec } from "./hive";
import { BenchUser, callOk } from "./matrix";

export const SERVER_NAME = "hive.bench";

export interface BenchSynapse {
  synapse: RunningHomeserver;
  /** A server admin (on tuwunel the launcher's own first user). */
  admin: RegisteredUser;
  /** The hive's operator (in every instance's `operators`). */
  operator: BenchUser;
  /** A second user, for the homeserver's own message round trip. */
  observer: BenchUser;
  hives: Map<HiveKind, HiveSpec>;
  startupMs: number;
}

/** The older flow's prerequisites on Synapse (docs/architecture.md: "a shared registration token and registered every agent through UIAA"); tuwunel's launcher always sets a registration token. */
const LEGACY_REGISTRATION = {
  enable_registration: true,
  enable_registration_without_verification: true,
  registration_requires_token: true,
};

export async function startBenchSynapse(runDir: string, kinds: readonly HiveKind[]): Promise<BenchSynapse> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const operatorId = `@operator:${SERVER_NAME}`;
  const hives = new Map<HiveKind, HiveSpec>();
  for (const kind of kinds) hives.set(kind, await prepareHive(kind, runDir, { url, serverName: SERVER_NAME }, [operatorId]));
  const started = Date.now();
  const synapse = await startHomeserver({
    baseDir: join(runDir, "homeserver"),
    serverName: SERVER_NAME,
    port,
    appserviceConfigFiles: [...hives.values()].map((h) => h.config.appservice.registration),
    synapseConfig: LEGACY_REGISTRATION,
  });
  const startupMs = Date.now() - started;
  try {
    const admin = synapse.kind === "tuwunel" ? synapse.admin : await registerUser(synapse, "bench-admin", { admin: true });
    const operator = await registerUser(synapse, "operator", { displayname: "Operator" });
    const observer = await registerUser(synapse, "observer", { displayname: "Observer" });
    return {
      synapse,
      admin,
      operator: new BenchUser(synapse.url, operator.userId, operator.accessToken),
      observer: new BenchUser(synapse.url, observer.userId, observer.accessToken),
      hives,
      startupMs,
    };
  } catch (err) {
    await synapse.stop();
    throw err;
  }
}

/**
 * A registration token for the older flow: a new one through Synapse's admin API; tuwunel (before
 * 1.6) has only the one from its config, without a use limit.
 */
export async function createRegistrationToken(synapse: BenchSynapse, usesAllowed: number): Promise<string> {
  if (synapse.synapse.kind === "tuwunel") return synapse.synapse.registrationToken;
  const res = await callOk(synapse.synapse.url, "POST", "/_synapse/admin/v1/registration_tokens/new", {
    token: synapse.admin.accessToken,
    body: { uses_allowed: usesAllowed },
  });
  if (typeof res.token !== "string") throw new Error("Synapse answered registration_tokens/new without a token");
  return res.token;
}
