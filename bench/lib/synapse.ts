/**
 * The run's Synapse: started through the test harness (127.0.0.1, rate limits off) under the run
 * dir, with every hive-matrix registration the selected scenarios need, and open registration
 * with a registration token so the older onboarding flow can be measured against the same server.
 */
import { join } from "node:path";
import { freePort, registerUser, startSynapse, type RegisteredUser, type RunningSynapse } from "../../dev/synapse";
import { prepareHive, type HiveKind, type HiveSpec } from "./hive";
import { BenchUser, callOk } from "./matrix";

export const SERVER_NAME = "hive.bench";

export interface BenchSynapse {
  synapse: RunningSynapse;
  admin: RegisteredUser;
  /** The hive's operator (in every instance's `operators`). */
  operator: BenchUser;
  /** A second user, for the homeserver's own message round trip. */
  observer: BenchUser;
  hives: Map<HiveKind, HiveSpec>;
  startupMs: number;
}

/** The older flow's prerequisites (docs/architecture.md: "a shared registration token and registered every agent through UIAA"). */
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
  const synapse = await startSynapse({
    baseDir: join(runDir, "synapse"),
    serverName: SERVER_NAME,
    port,
    appserviceConfigFiles: [...hives.values()].map((h) => h.config.appservice.registration),
    extraConfig: LEGACY_REGISTRATION,
  });
  const startupMs = Date.now() - started;
  try {
    const admin = await registerUser(synapse, "bench-admin", { admin: true });
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

/** A registration token for the older flow, through Synapse's admin API. */
export async function createRegistrationToken(synapse: BenchSynapse, usesAllowed: number): Promise<string> {
  const res = await callOk(synapse.synapse.url, "POST", "/_synapse/admin/v1/registration_tokens/new", {
    token: synapse.admin.accessToken,
    body: { uses_allowed: usesAllowed },
  });
  if (typeof res.token !== "string") throw new Error("Synapse answered registration_tokens/new without a token");
  return res.token;
}
