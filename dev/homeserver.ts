/**
 * The homeserver of the dev hive, the e2e tests and the benchmarks: tuwunel when `TUWUNEL_BIN`
 * names a tuwunel binary, Synapse otherwise. One handle shape for both, so callers start, stop,
 * restart and create users without knowing which one runs.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { registerUser as registerSynapseUser, startSynapse, stopSynapseByPidFile, attachSynapse } from "./synapse";
import { TUWUNEL_BIN_ENV, attachTuwunel, registerTuwunelUser, startTuwunel, stopTuwunelByPidFile } from "./tuwunel";
import type { RegisteredUser } from "./server-process";

export type HomeserverKind = "synapse" | "tuwunel";

/** tuwunel when `TUWUNEL_BIN` is set (to anything non-empty), Synapse otherwise. */
export function selectedHomeserver(): HomeserverKind {
  return process.env[TUWUNEL_BIN_ENV] ? "tuwunel" : "synapse";
}

interface CommonAccess {
  url: string;
  serverName: string;
  port: number;
  baseDir: string;
  /** e.g. `Synapse 1.143.0` or `tuwunel 1.4.6`. */
  version: string;
}

/** How to reach the homeserver and create users on it; plain data, passed between processes as JSON. */
export type HomeserverAccess =
  | (CommonAccess & { kind: "synapse"; sharedSecret: string })
  | (CommonAccess & { kind: "tuwunel"; registrationToken: string; admin: RegisteredUser });

export type RunningHomeserver = HomeserverAccess & {
  /** PID of the current process; updated by `restart()`. */
  pid: number;
  stop(): Promise<void>;
  restart(): Promise<void>;
};

export interface HomeserverOptions {
  /** Default: `selectedHomeserver()`. */
  kind?: HomeserverKind;
  baseDir: string;
  serverName?: string;
  /** Default: a free port. */
  port?: number;
  /** Registration YAML files, loaded at start. */
  appserviceConfigFiles: string[];
  /** Merged over Synapse's generated homeserver.yaml; tuwunel ignores it. */
  synapseConfig?: Record<string, unknown>;
}

/** Synapse answers its version on an unauthenticated admin endpoint. */
async function synapseVersion(url: string): Promise<string> {
  try {
    const res = await fetch(`${url}/_synapse/admin/v1/server_version`, { signal: AbortSignal.timeout(5_000) });
    const json = (await res.json()) as { server_version?: unknown };
    if (typeof json.server_version === "string") return `Synapse ${json.server_version}`;
  } catch {
    // fall through
  }
  return "Synapse (version unknown)";
}

/**
 * Writes the selected homeserver's config into `opts.baseDir` and starts it there. A directory used
 * before keeps its database and secrets; the appservice list is the one given now.
 */
export async function startHomeserver(opts: HomeserverOptions): Promise<RunningHomeserver> {
  const kind = opts.kind ?? selectedHomeserver();
  const common = { baseDir: opts.baseDir, serverName: opts.serverName, port: opts.port, appserviceConfigFiles: opts.appserviceConfigFiles };
  if (kind === "tuwunel") {
    const t = await startTuwunel(common);
    return Object.assign(t, { kind: "tuwunel" as const });
  }
  const s = await startSynapse({ ...common, extraConfig: opts.synapseConfig });
  return Object.assign(s, { kind: "synapse" as const, version: await synapseVersion(s.url) });
}

function kindIn(baseDir: string): HomeserverKind | undefined {
  if (existsSync(join(baseDir, "tuwunel.json"))) return "tuwunel";
  if (existsSync(join(baseDir, "synapse.json"))) return "synapse";
  return undefined;
}

/**
 * A handle on a homeserver started by another process (e.g. the run's global setup), for tests
 * that stop or restart it. Does not start it.
 */
export async function attachHomeserver(access: HomeserverAccess): Promise<RunningHomeserver> {
  if (access.kind === "tuwunel") return Object.assign(attachTuwunel(access.baseDir), { kind: "tuwunel" as const });
  const s = await attachSynapse(access.baseDir);
  return Object.assign(s, { kind: "synapse" as const, version: access.version });
}

/** Stops whichever homeserver runs in `baseDir` (by its PID file); no-op if none. */
export async function stopHomeserverByPidFile(baseDir: string): Promise<void> {
  const dir = resolve(baseDir);
  const kind = kindIn(dir);
  if (kind === undefined || kind === "synapse") await stopSynapseByPidFile(dir);
  if (kind === undefined || kind === "tuwunel") await stopTuwunelByPidFile(dir);
}

/** Plain data of a running homeserver, for a JSON file other processes read. */
export function accessOf(hs: RunningHomeserver): HomeserverAccess {
  const common: CommonAccess = { url: hs.url, serverName: hs.serverName, port: hs.port, baseDir: hs.baseDir, version: hs.version };
  return hs.kind === "tuwunel"
    ? { ...common, kind: "tuwunel", registrationToken: hs.registrationToken, admin: hs.admin }
    : { ...common, kind: "synapse", sharedSecret: hs.sharedSecret };
}

export function readAccess(file: string): HomeserverAccess {
  return JSON.parse(readFileSync(file, "utf8")) as HomeserverAccess;
}

/**
 * Creates an ordinary user: Synapse's shared-secret admin API, or tuwunel's token-gated UIAA
 * registration (what a client does). Server admins: Synapse makes one on request; on tuwunel the
 * only one is the launcher's own first user (`access.admin`), so asking for another is an error.
 */
export async function registerUser(
  access: HomeserverAccess,
  localpart: string,
  opts: { password?: string; admin?: boolean; displayname?: string } = {},
): Promise<RegisteredUser> {
  if (access.kind === "synapse") return registerSynapseUser(access, localpart, opts);
  if (opts.admin) {
    throw new Error(`tuwunel: ${localpart} cannot be made a server admin here; the admin is ${access.admin.userId} (the first user)`);
  }
  return registerTuwunelUser(access, localpart, opts);
}
