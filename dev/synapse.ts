/**
 * A real Synapse for the dev hive (`npm run dev`), the e2e tests and the benchmarks: installed into a local virtualenv by
 * `scripts/synapse-install.sh`, configured in a scratch directory (sqlite, one client listener on
 * 127.0.0.1, every rate limit off) and run as a detached process whose PID is kept in
 * `<baseDir>/synapse.pid`, so that any process of the test run can stop or restart it.
 */
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import YAML from "yaml";
import {
  HomeserverHttpError,
  cmdlineOf,
  errcodeOf,
  freePort,
  isAlive,
  readPidFile,
  signal,
  tail,
  terminate,
  waitForExit,
  waitForVersions,
  type RegisteredUser,
} from "./server-process";

export const REPO_ROOT = resolve(__dirname, "..");
export const INSTALL_SCRIPT = join(REPO_ROOT, "scripts", "synapse-install.sh");
export const DEFAULT_SERVER_NAME = "hive.test";
const STARTUP_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 10_000;

export interface SynapseOptions {
  baseDir: string;
  /** Default `hive.test`. */
  serverName?: string;
  /** Default: a free port. */
  port?: number;
  appserviceConfigFiles: string[];
  /** Shallow-merged over the generated homeserver.yaml, last. */
  extraConfig?: Record<string, unknown>;
}

export interface RunningSynapse {
  url: string;
  serverName: string;
  port: number;
  /** PID of the current process; updated by `restart()`. */
  pid: number;
  baseDir: string;
  sharedSecret: string;
  stop(): Promise<void>;
  restart(): Promise<void>;
}

/** What a caller needs to talk to Synapse as an admin. */
export interface SynapseAccess {
  url: string;
  sharedSecret: string;
}

/** Written next to homeserver.yaml so that another process can `attachSynapse` to a running server. */
interface SynapseInfo {
  url: string;
  serverName: string;
  port: number;
  baseDir: string;
  sharedSecret: string;
}

export function venvDir(): string {
  return process.env.HIVE_MATRIX_SYNAPSE_VENV ?? join(REPO_ROOT, ".synapse-venv");
}

/**
 * Runs the install script (a no-op taking milliseconds when the pinned version is installed, so a
 * changed pin is picked up) and returns the venv's python.
 */
export async function ensureSynapseVenv(): Promise<string> {
  const venv = await new Promise<string>((resolveVenv, reject) => {
    // stderr passes through: a first install takes up to a minute and says so.
    const child = spawn("bash", [INSTALL_SCRIPT], {
      env: { ...process.env, HIVE_MATRIX_SYNAPSE_VENV: venvDir() },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let stdout = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => (stdout += chunk));
    child.once("error", reject);
    child.once("close", (code) => {
      if (code !== 0) {
        reject(new Error(`${INSTALL_SCRIPT} failed with exit code ${code} (its stderr is above)`));
        return;
      }
      const lines = stdout.trim().split("\n");
      resolveVenv(lines[lines.length - 1]);
    });
  });
  const python = join(venv, "bin", "python");
  if (!existsSync(python)) throw new Error(`${INSTALL_SCRIPT} did not produce ${python}`);
  return python;
}

/** Huge limits for every rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py). */
function noRateLimits(): Record<string, unknown> {
  const off = { per_second: 1_000_000, burst_count: 1_000_000 };
  return {
    rc_message: off,
    rc_registration: off,
    rc_registration_token_validity: off,
    rc_login: { address: off, account: off, failed_attempts: off },
    rc_admin_redaction: off,
    rc_joins: { local: off, remote: off },
    rc_joins_per_room: off,
    rc_key_requests: off,
    rc_3pid_validation: off,
    rc_invites: { per_room: off, per_user: off, per_issuer: off },
    rc_third_party_invite: off,
    rc_media_create: off,
    rc_presence: { per_user: off },
    rc_delayed_event_mgmt: off,
    rc_room_creation: off,
    rc_reports: off,
    rc_user_directory: off,
    rc_profile: off,
    // Not a token bucket: federation (unused here, no federation listener) and remote media.
    rc_federation: { window_size: 1000, sleep_limit: 1_000_000, sleep_delay: 1, reject_limit: 1_000_000, concurrent: 1_000 },
    remote_media_download_per_second: "1G",
    remote_media_download_burst_count: "100G",
  };
}

function logConfig(logFile: string): Record<string, unknown> {
  return {
    version: 1,
    formatters: {
      precise: { format: "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s" },
    },
    filters: { context: { "()": "synapse.logging.context.LoggingContextFilter", request: "" } },
    handlers: {
      file: { class: "logging.FileHandler", formatter: "precise", filename: logFile, filters: ["context"], encoding: "utf8" },
    },
    loggers: { "synapse.storage.SQL": { level: "INFO" } },
    root: { level: "INFO", handlers: ["file"] },
    disable_existing_loggers: false,
  };
}

/** A Synapse signing key: `ed25519 <key id> <unpadded base64 of a 32-byte seed>`. */
function signingKey(): string {
  const keyId = `a_${randomBytes(3).toString("base64url").slice(0, 4)}`;
  return `ed25519 ${keyId} ${randomBytes(32).toString("base64").replace(/=+$/, "")}\n`;
}

function readPid(baseDir: string): number | undefined {
  return readPidFile(paths(baseDir).pid);
}

function paths(dir: string): { config: string; pid: string; log: string; stdout: string; info: string } {
  const baseDir = resolve(dir);
  return {
    config: join(baseDir, "homeserver.yaml"),
    pid: join(baseDir, "synapse.pid"),
    log: join(baseDir, "synapse.log"),
    stdout: join(baseDir, "synapse.stdout.log"),
    info: join(baseDir, "synapse.json"),
  };
}

type SecretKey = "registration_shared_secret" | "macaroon_secret_key" | "form_secret";

function readPreviousSecrets(configPath: string): Partial<Record<SecretKey, string>> {
  let parsed: unknown;
  try {
    parsed = YAML.parse(readFileSync(configPath, "utf8"));
  } catch {
    return {};
  }
  const out: Partial<Record<SecretKey, string>> = {};
  if (typeof parsed !== "object" || parsed === null) return out;
  const record = parsed as Record<string, unknown>;
  for (const key of ["registration_shared_secret", "macaroon_secret_key", "form_secret"] as const) {
    const value = record[key];
    if (typeof value === "string") out[key] = value;
  }
  return out;
}

function writeSynapseConfig(opts: Required<Omit<SynapseOptions, "extraConfig">> & { extraConfig: Record<string, unknown> }): SynapseInfo {
  const { baseDir, serverName, port } = opts;
  mkdirSync(baseDir, { recursive: true, mode: 0o700 });
  const p = paths(baseDir);
  // Starting again on an existing directory (e.g. with other appservices) keeps key and secrets.
  const previous = readPreviousSecrets(p.config);
  const sharedSecret = previous.registration_shared_secret ?? randomBytes(32).toString("hex");
  const keyPath = join(baseDir, `${serverName}.signing.key`);
  if (!existsSync(keyPath)) writeFileSync(keyPath, signingKey(), { mode: 0o600 });
  const logConfigPath = join(baseDir, "log.config");
  writeFileSync(logConfigPath, YAML.stringify(logConfig(p.log)));
  const config: Record<string, unknown> = {
    server_name: serverName,
    public_baseurl: `http://127.0.0.1:${port}/`,
    listeners: [
      {
        port,
        bind_addresses: ["127.0.0.1"],
        type: "http",
        tls: false,
        x_forwarded: false,
        resources: [{ names: ["client"], compress: false }],
      },
    ],
    database: { name: "sqlite3", args: { database: join(baseDir, "homeserver.db") } },
    log_config: logConfigPath,
    media_store_path: join(baseDir, "media_store"),
    signing_key_path: keyPath,
    registration_shared_secret: sharedSecret,
    macaroon_secret_key: previous.macaroon_secret_key ?? randomBytes(32).toString("hex"),
    form_secret: previous.form_secret ?? randomBytes(32).toString("hex"),
    enable_registration: false,
    report_stats: false,
    enable_metrics: false,
    trusted_key_servers: [],
    suppress_key_server_warning: true,
    presence: { enabled: false },
    url_preview_enabled: false,
    app_service_config_files: opts.appserviceConfigFiles,
    ...noRateLimits(),
    ...opts.extraConfig,
  };
  writeFileSync(p.config, YAML.stringify(config), { mode: 0o600 });
  const info: SynapseInfo = { url: `http://127.0.0.1:${port}`, serverName, port, baseDir, sharedSecret };
  writeFileSync(p.info, JSON.stringify(info, null, 2) + "\n", { mode: 0o600 });
  return info;
}

function failureContext(baseDir: string): string {
  const p = paths(baseDir);
  return `--- tail of ${p.log} ---\n${tail(p.log)}\n--- tail of ${p.stdout} ---\n${tail(p.stdout, 20)}`;
}

/** Guards against PID reuse: only signal a process that runs this directory's homeserver.yaml. */
function isOurSynapse(pid: number, baseDir: string): boolean {
  const cmdline = cmdlineOf(pid);
  return cmdline.includes("synapse.app.homeserver") && cmdline.includes(paths(baseDir).config);
}

/** SIGTERM, SIGKILL after 10 s, then wait for the exit. Removes the pid file. No-op if not running. */
export async function stopSynapseByPidFile(baseDir: string): Promise<void> {
  const pid = readPid(baseDir);
  if (pid !== undefined && isAlive(pid) && isOurSynapse(pid, baseDir)) {
    await terminate(pid, STOP_GRACE_MS, "synapse");
  }
  rmSync(paths(baseDir).pid, { force: true });
}

/** Starts Synapse on an existing config directory; returns its PID once it answers. */
async function launch(python: string, info: SynapseInfo): Promise<number> {
  const p = paths(info.baseDir);
  const out = openSync(p.stdout, "a");
  let pid: number | undefined;
  try {
    const child = spawn(python, ["-m", "synapse.app.homeserver", "-c", p.config], {
      cwd: info.baseDir,
      detached: true,
      stdio: ["ignore", out, out],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    child.on("error", () => undefined); // reported through the wait below
    child.unref();
    pid = child.pid;
  } finally {
    closeSync(out);
  }
  if (pid === undefined) throw new Error(`could not spawn ${python}\n${failureContext(info.baseDir)}`);
  writeFileSync(p.pid, `${pid}\n`);
  const started = pid;
  try {
    await waitForVersions(info.url, STARTUP_TIMEOUT_MS, () => !isAlive(started));
  } catch (err) {
    signal(started, "SIGKILL");
    await waitForExit(started, 5_000);
    rmSync(p.pid, { force: true });
    throw new Error(`synapse did not start: ${(err as Error).message}\n${failureContext(info.baseDir)}`);
  }
  return started;
}

function handle(python: string, info: SynapseInfo, pid: number): RunningSynapse {
  const running: RunningSynapse = {
    ...info,
    pid,
    stop: () => stopSynapseByPidFile(info.baseDir),
    restart: async () => {
      await stopSynapseByPidFile(info.baseDir);
      running.pid = await launch(python, info);
    },
  };
  return running;
}

/**
 * Writes the config into `opts.baseDir` and starts Synapse there. On a directory used before, the
 * signing key, secrets and database are kept (the config is rewritten, e.g. with other appservices).
 */
export async function startSynapse(opts: SynapseOptions): Promise<RunningSynapse> {
  const running = readPid(resolve(opts.baseDir));
  if (running !== undefined && isAlive(running) && isOurSynapse(running, resolve(opts.baseDir))) {
    throw new Error(`synapse is already running in ${opts.baseDir} (pid ${running})`);
  }
  const python = await ensureSynapseVenv();
  const info = writeSynapseConfig({
    baseDir: resolve(opts.baseDir),
    serverName: opts.serverName ?? DEFAULT_SERVER_NAME,
    port: opts.port ?? (await freePort()),
    appserviceConfigFiles: opts.appserviceConfigFiles.map((f) => resolve(f)),
    extraConfig: opts.extraConfig ?? {},
  });
  const pid = await launch(python, info);
  return handle(python, info, pid);
}

/**
 * A handle on a Synapse started by another process (e.g. the run's global setup), for tests that
 * need to stop or restart it. Does not start it.
 */
export async function attachSynapse(baseDir: string): Promise<RunningSynapse> {
  const info = JSON.parse(readFileSync(paths(baseDir).info, "utf8")) as SynapseInfo;
  const python = await ensureSynapseVenv();
  return handle(python, info, readPid(baseDir) ?? 0);
}

/** Registers a user through Synapse's shared-secret admin API (`/_synapse/admin/v1/register`). */
export async function registerUser(
  synapse: SynapseAccess,
  localpart: string,
  opts: { password?: string; admin?: boolean; displayname?: string } = {},
): Promise<RegisteredUser> {
  const endpoint = `${synapse.url}/_synapse/admin/v1/register`;
  const nonceRes = await fetch(endpoint);
  if (!nonceRes.ok) throw new Error(`GET ${endpoint}: HTTP ${nonceRes.status} ${await nonceRes.text()}`);
  const { nonce } = (await nonceRes.json()) as { nonce: string };
  const password = opts.password ?? randomBytes(16).toString("hex");
  const admin = opts.admin ?? false;
  const mac = createHmac("sha1", synapse.sharedSecret)
    .update([nonce, localpart, password, admin ? "admin" : "notadmin"].join("\0"))
    .digest("hex");
  const body: Record<string, unknown> = { nonce, username: localpart, password, admin, mac };
  if (opts.displayname !== undefined) body.displayname = opts.displayname;
  const res = await fetch(endpoint, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) {
    throw new HomeserverHttpError(`registering ${localpart}: HTTP ${res.status} ${text}`, res.status, errcodeOf(text), text);
  }
  const json = JSON.parse(text) as { user_id: string; access_token: string; device_id: string };
  return { userId: json.user_id, accessToken: json.access_token, deviceId: json.device_id, password };
}
