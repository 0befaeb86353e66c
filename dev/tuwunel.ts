/**
 * A real tuwunel for the dev hive, the e2e tests and the benchmarks, when `TUWUNEL_BIN` names a
 * tuwunel binary (tuwunel is in no package registry: build it from its repository). Same shape as
 * synapse.ts: configured in a scratch directory (`tuwunel.toml`: loopback, no federation,
 * registration behind a token) and run as a detached process whose PID is kept in
 * `<baseDir>/tuwunel.pid`, so that any process of the test run can stop or restart it.
 *
 * tuwunel reads appservice registrations only at start: as `[global.appservice.<id>]` tables (every
 * version) or, from 1.6 on, as YAML files in `appservice_dir`; both ways load each registration
 * once (tuwunel refuses a duplicate ID). The first user to register becomes the server admin, so
 * the launcher registers its own admin account right after the first start, before anything else
 * can register.
 */
import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { accessSync, closeSync, constants, copyFileSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
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

export const TUWUNEL_BIN_ENV = "TUWUNEL_BIN";
const DEFAULT_SERVER_NAME = "hive.test";
const ADMIN_LOCALPART = "tuwunel-admin";
const STARTUP_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 10_000;

export interface TuwunelOptions {
  baseDir: string;
  /** Default `hive.test`. */
  serverName?: string;
  /** Default: a free port. */
  port?: number;
  /** Registration YAML files (what Synapse's `app_service_config_files` lists). */
  appserviceConfigFiles: string[];
  /** Merged over the generated `[global]` table, last. */
  extraConfig?: Record<string, TomlValue>;
  /** Default: `$TUWUNEL_BIN`. */
  bin?: string;
}

/** What a caller needs to register users on tuwunel. */
export interface TuwunelAccess {
  url: string;
  registrationToken: string;
}

/** Written next to tuwunel.toml so that another process can `attachTuwunel` to a running server. */
interface TuwunelInfo {
  url: string;
  serverName: string;
  port: number;
  baseDir: string;
  bin: string;
  /** `tuwunel --version`, e.g. `tuwunel 1.4.6`. */
  version: string;
  registrationToken: string;
  /** The server admin (the first user registered), created by the launcher. */
  admin: RegisteredUser;
  /** Re-read on every (re)start, as Synapse re-reads its `app_service_config_files`. */
  appserviceConfigFiles: string[];
  extraConfig: Record<string, TomlValue>;
}

export interface RunningTuwunel extends TuwunelInfo {
  /** PID of the current process; updated by `restart()`. */
  pid: number;
  stop(): Promise<void>;
  restart(): Promise<void>;
}

type TomlValue = string | number | boolean | TomlValue[] | { [key: string]: TomlValue };

function paths(dir: string): { config: string; pid: string; log: string; info: string; db: string; appservices: string } {
  const baseDir = resolve(dir);
  return {
    config: join(baseDir, "tuwunel.toml"),
    pid: join(baseDir, "tuwunel.pid"),
    log: join(baseDir, "tuwunel.log"),
    info: join(baseDir, "tuwunel.json"),
    db: join(baseDir, "db"),
    appservices: join(baseDir, "appservices"),
  };
}

/** The binary to run: `bin`, else `$TUWUNEL_BIN`; an error says what is missing. */
export function tuwunelBin(bin?: string): string {
  const path = bin ?? process.env[TUWUNEL_BIN_ENV];
  if (!path) throw new Error(`${TUWUNEL_BIN_ENV} is not set: it must name a tuwunel binary`);
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`${TUWUNEL_BIN_ENV}=${path} is not an executable file`);
  }
  return resolve(path);
}

export function tuwunelVersion(bin: string): string {
  return execFileSync(bin, ["--version"], { encoding: "utf8", timeout: 30_000 }).trim().split("\n")[0];
}

/** [major, minor] of a `tuwunel x.y.z` version line; [0, 0] when it has none. */
function versionNumbers(version: string): [number, number] {
  const m = /(\d+)\.(\d+)/.exec(version);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

/** `appservice_dir` exists from tuwunel 1.6 on. */
export function hasAppserviceDir(version: string): boolean {
  const [major, minor] = versionNumbers(version);
  return major > 1 || (major === 1 && minor >= 6);
}

function tomlKey(key: string): string {
  return /^[A-Za-z0-9_-]+$/.test(key) ? key : JSON.stringify(key);
}

/** TOML basic strings share JSON's escapes; numbers, booleans and arrays read the same way too. */
function tomlInline(value: TomlValue): string {
  if (Array.isArray(value)) return `[${value.map(tomlInline).join(", ")}]`;
  if (typeof value === "object") {
    return `{ ${Object.entries(value)
      .map(([k, v]) => `${tomlKey(k)} = ${tomlInline(v)}`)
      .join(", ")} }`;
  }
  return JSON.stringify(value);
}

function tomlTable(name: string, table: Record<string, TomlValue>): string {
  const lines = Object.entries(table).map(([k, v]) => `${tomlKey(k)} = ${tomlInline(v)}`);
  return `[${name}]\n${lines.join("\n")}\n`;
}

interface RegistrationFile {
  id: string;
  url: string | null;
  as_token: string;
  hs_token: string;
  sender_localpart: string;
  rate_limited?: boolean;
  namespaces?: Partial<Record<"users" | "aliases" | "rooms", { exclusive: boolean; regex: string }[]>>;
}

function readRegistration(file: string): RegistrationFile {
  const parsed = YAML.parse(readFileSync(file, "utf8")) as RegistrationFile;
  if (typeof parsed?.id !== "string" || typeof parsed.as_token !== "string" || typeof parsed.hs_token !== "string") {
    throw new Error(`${file} is not an appservice registration (id, as_token, hs_token)`);
  }
  return parsed;
}

/** The `[global.appservice.<id>]` table for a registration file. */
function appserviceTable(reg: RegistrationFile): Record<string, TomlValue> {
  const ns = (kind: "users" | "aliases" | "rooms"): TomlValue[] =>
    (reg.namespaces?.[kind] ?? []).map((n) => ({ exclusive: n.exclusive, regex: n.regex }));
  const table: Record<string, TomlValue> = {
    id: reg.id,
    as_token: reg.as_token,
    hs_token: reg.hs_token,
    sender_localpart: reg.sender_localpart,
    rate_limited: reg.rate_limited ?? false,
    users: ns("users"),
    aliases: ns("aliases"),
    rooms: ns("rooms"),
  };
  if (reg.url !== null) table.url = reg.url;
  return table;
}

function readInfo(baseDir: string): TuwunelInfo | undefined {
  try {
    return JSON.parse(readFileSync(paths(baseDir).info, "utf8")) as TuwunelInfo;
  } catch {
    return undefined;
  }
}

function writeInfo(info: TuwunelInfo): void {
  writeFileSync(paths(info.baseDir).info, JSON.stringify(info, null, 2) + "\n", { mode: 0o600 });
}

function writeTuwunelConfig(
  opts: Pick<TuwunelInfo, "baseDir" | "serverName" | "port" | "appserviceConfigFiles" | "extraConfig" | "version" | "registrationToken">,
): void {
  const { version, registrationToken } = opts;
  const p = paths(opts.baseDir);
  const global: Record<string, TomlValue> = {
    server_name: opts.serverName,
    address: ["127.0.0.1"],
    port: opts.port,
    database_path: p.db,
    allow_federation: false,
    trusted_servers: [],
    allow_registration: true,
    registration_token: registrationToken,
    allow_guest_registration: false,
    grant_admin_to_first_user: true,
    new_user_displayname_suffix: "",
    allow_check_for_updates: false,
    url_preview_domain_explicit_allowlist: [],
    log: "info",
    log_colors: false,
  };
  const tables: string[] = [];
  // Rewritten on every start: the registrations listed now, nothing left from an earlier start.
  rmSync(p.appservices, { recursive: true, force: true });
  if (hasAppserviceDir(version)) {
    mkdirSync(p.appservices, { mode: 0o700 });
    global.appservice_dir = p.appservices;
    opts.appserviceConfigFiles.forEach((file, i) => {
      const reg = readRegistration(file);
      copyFileSync(file, join(p.appservices, `${String(i).padStart(2, "0")}-${basename(reg.id)}.yaml`));
    });
  } else {
    for (const file of opts.appserviceConfigFiles) {
      const reg = readRegistration(file);
      tables.push(tomlTable(`global.appservice.${tomlKey(reg.id)}`, appserviceTable(reg)));
    }
  }
  const header = "# Generated by dev/tuwunel.ts for a local test server; rewritten on every start.\n";
  const text = [header + tomlTable("global", { ...global, ...opts.extraConfig }), ...tables].join("\n");
  writeFileSync(p.config, text, { mode: 0o600 });
}

function failureContext(baseDir: string): string {
  const p = paths(baseDir);
  return `--- tail of ${p.log} ---\n${tail(p.log)}`;
}

/** Guards against PID reuse: only signal a process that runs this directory's tuwunel.toml. */
function isOurTuwunel(pid: number, baseDir: string): boolean {
  return cmdlineOf(pid).includes(paths(baseDir).config);
}

/** SIGTERM, SIGKILL after 10 s, then wait for the exit. Removes the pid file. No-op if not running. */
export async function stopTuwunelByPidFile(baseDir: string): Promise<void> {
  const pid = readPidFile(paths(baseDir).pid);
  if (pid !== undefined && isAlive(pid) && isOurTuwunel(pid, baseDir)) await terminate(pid, STOP_GRACE_MS, "tuwunel");
  rmSync(paths(baseDir).pid, { force: true });
}

/** Starts tuwunel on an existing config directory; returns its PID once it answers. */
async function launch(bin: string, baseDir: string, url: string): Promise<number> {
  const p = paths(baseDir);
  const out = openSync(p.log, "a");
  let pid: number | undefined;
  try {
    const child = spawn(bin, ["-c", p.config], { cwd: baseDir, detached: true, stdio: ["ignore", out, out] });
    child.on("error", () => undefined); // reported through the wait below
    child.unref();
    pid = child.pid;
  } finally {
    closeSync(out);
  }
  if (pid === undefined) throw new Error(`could not spawn ${bin}\n${failureContext(baseDir)}`);
  writeFileSync(p.pid, `${pid}\n`);
  const started = pid;
  try {
    await waitForVersions(url, STARTUP_TIMEOUT_MS, () => !isAlive(started));
  } catch (err) {
    signal(started, "SIGKILL");
    await waitForExit(started, 5_000);
    rmSync(p.pid, { force: true });
    throw new Error(`tuwunel did not start: ${(err as Error).message}\n${failureContext(baseDir)}`);
  }
  return started;
}

function handle(info: TuwunelInfo, pid: number): RunningTuwunel {
  const running: RunningTuwunel = {
    ...info,
    pid,
    stop: () => stopTuwunelByPidFile(info.baseDir),
    restart: async () => {
      await stopTuwunelByPidFile(info.baseDir);
      // A registration file changed since the last start takes effect now, as on Synapse.
      writeTuwunelConfig(info);
      running.pid = await launch(info.bin, info.baseDir, info.url);
    },
  };
  return running;
}

/**
 * Writes the config into `opts.baseDir` and starts tuwunel there. On a directory used before, the
 * database, registration token and admin account are kept (the config is rewritten, e.g. with other
 * appservices).
 */
export async function startTuwunel(opts: TuwunelOptions): Promise<RunningTuwunel> {
  const baseDir = resolve(opts.baseDir);
  const running = readPidFile(paths(baseDir).pid);
  if (running !== undefined && isAlive(running) && isOurTuwunel(running, baseDir)) {
    throw new Error(`tuwunel is already running in ${opts.baseDir} (pid ${running})`);
  }
  const bin = tuwunelBin(opts.bin);
  const version = tuwunelVersion(bin);
  mkdirSync(baseDir, { recursive: true, mode: 0o700 });
  const previous = readInfo(baseDir);
  const serverName = opts.serverName ?? previous?.serverName ?? DEFAULT_SERVER_NAME;
  const port = opts.port ?? (await freePort());
  const url = `http://127.0.0.1:${port}`;
  const registrationToken = previous?.registrationToken ?? randomBytes(24).toString("hex");
  const appserviceConfigFiles = opts.appserviceConfigFiles.map((f) => resolve(f));
  const extraConfig = opts.extraConfig ?? {};
  writeTuwunelConfig({ baseDir, serverName, port, appserviceConfigFiles, extraConfig, version, registrationToken });
  const pid = await launch(bin, baseDir, url);
  let admin = previous?.admin;
  if (admin === undefined) {
    try {
      admin = await registerTuwunelUser({ url, registrationToken }, ADMIN_LOCALPART);
    } catch (err) {
      await stopTuwunelByPidFile(baseDir);
      throw err;
    }
  }
  const info: TuwunelInfo = { url, serverName, port, baseDir, bin, version, registrationToken, admin, appserviceConfigFiles, extraConfig };
  writeInfo(info);
  return handle(info, pid);
}

/**
 * A handle on a tuwunel started by another process (e.g. the run's global setup), for tests that
 * need to stop or restart it. Does not start it.
 */
export function attachTuwunel(baseDir: string): RunningTuwunel {
  const info = readInfo(baseDir);
  if (info === undefined) throw new Error(`no tuwunel was started in ${baseDir} (${paths(baseDir).info} is missing)`);
  return handle(info, readPidFile(paths(baseDir).pid) ?? 0);
}

const HANDLED_STAGES = new Set(["m.login.registration_token", "m.login.dummy"]);

interface UiaaState {
  session?: string;
  flows?: { stages: string[] }[];
  completed?: string[];
}

/**
 * Registers a user the way a client does on a token-gated tuwunel: `POST /register`, then one
 * call per UIAA stage (`m.login.registration_token`, and `m.login.dummy` where asked for).
 * tuwunel lower-cases the localpart.
 */
export async function registerTuwunelUser(
  tuwunel: TuwunelAccess,
  localpart: string,
  opts: { password?: string; displayname?: string } = {},
): Promise<RegisteredUser> {
  const endpoint = `${tuwunel.url}/_matrix/client/v3/register`;
  const password = opts.password ?? randomBytes(16).toString("hex");
  const base = { username: localpart, password, initial_device_display_name: "hive-matrix dev" };
  let auth: Record<string, unknown> | undefined;
  for (let round = 0; round < 5; round++) {
    const res = await fetch(endpoint, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(auth === undefined ? base : { ...base, auth }),
    });
    const text = await res.text();
    if (res.ok) {
      const json = JSON.parse(text) as { user_id: string; access_token: string; device_id: string };
      const user = { userId: json.user_id, accessToken: json.access_token, deviceId: json.device_id, password };
      if (opts.displayname !== undefined) await setDisplayname(tuwunel.url, user, opts.displayname);
      return user;
    }
    const uiaa = (res.status === 401 ? JSON.parse(text) : {}) as UiaaState;
    const flow = uiaa.flows?.find((f) => f.stages.every((s) => HANDLED_STAGES.has(s)));
    if (res.status !== 401 || flow === undefined || (auth !== undefined && errcodeOf(text) !== undefined)) {
      throw new HomeserverHttpError(`registering ${localpart}: HTTP ${res.status} ${text}`, res.status, errcodeOf(text), text);
    }
    const next = flow.stages.find((s) => !(uiaa.completed ?? []).includes(s));
    if (next === undefined) throw new HomeserverHttpError(`registering ${localpart}: UIAA loops: ${text}`, res.status, undefined, text);
    auth =
      next === "m.login.registration_token"
        ? { type: next, token: tuwunel.registrationToken, session: uiaa.session }
        : { type: next, session: uiaa.session };
  }
  throw new Error(`registering ${localpart}: UIAA did not finish in 5 rounds`);
}

async function setDisplayname(url: string, user: RegisteredUser, displayname: string): Promise<void> {
  const res = await fetch(`${url}/_matrix/client/v3/profile/${encodeURIComponent(user.userId)}/displayname`, {
    method: "PUT",
    headers: { "content-type": "application/json", Authorization: `Bearer ${user.accessToken}` },
    body: JSON.stringify({ displayname }),
  });
  const text = await res.text();
  if (!res.ok)
    throw new HomeserverHttpError(
      `setting the display name of ${user.userId}: HTTP ${res.status} ${text}`,
      res.status,
      errcodeOf(text),
      text,
    );
}
