/**
 * Application-service "slots" on the run's one homeserver (Synapse, or tuwunel when TUWUNEL_BIN is
 * set; see dev/homeserver.ts). Both read appservice registrations only at startup, so global setup
 * registers a fixed pool of them; each e2e test file takes a free
 * slot of the kind it needs, runs its own hive-matrix instance on it, and releases it.
 *
 * Layout of a run directory (`<repo>/.cache/e2e/<timestamp>-<pid>`):
 *   homeserver.json                    how to reach the run's homeserver (see `e2eEnv`)
 *   homeserver/                        its config, database, logs, pid file
 *   slots/<name>/slot.json             the slot (see `Slot`)
 *   slots/<name>/registration.yaml     the service's copy (0600), restored on every acquire
 *   slots/<name>/homeserver-registration.yaml   the copy the homeserver loaded
 *   slots/<name>/lock                  present while a test holds the slot
 *   tmp/                               per-test state dirs from `makeTestConfig`
 */
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { configSchema, type Config, type ConfigInput } from "../../src/config/schema";
import { buildRegistration, newToken, userNamespaces } from "../../src/registration";
import { REPO_ROOT } from "../../dev/synapse";
import { readAccess, stopHomeserverByPidFile, type HomeserverAccess } from "../../dev/homeserver";
import { freePort, type RegisteredUser } from "../../dev/server-process";
import { processAlive } from "../../src/store/state-store";

export interface SlotKindSpec {
  /** How many slots of this kind global setup registers. */
  count: number;
  /** Identity of slot number `k` (1-based). Namespaces of all slots must not overlap. */
  id(k: number): string;
  botLocalpart(k: number): string;
  agentTemplate(k: number): string;
  /** Agent names listed in the registration (needed when the template is the bare `{name}`). */
  agentNames(k: number): string[];
  /** The homeserver's copy of the registration gets a different hs_token, so homeserver→service calls fail auth. */
  mismatchedHsToken: boolean;
  /**
   * Create the listed agents' accounts as ordinary users BEFORE the homeserver loads this slot's
   * registration, as the older registration-token flow did (afterwards the exclusive namespace
   * refuses any non-appservice registration). Their credentials are in `Slot.preexistingAccounts`.
   */
  preexistingAccounts: boolean;
}

/** The pool. Add a kind here; global setup and `acquireSlot` pick it up. */
export const SLOT_KINDS = {
  standard: {
    count: 6,
    id: (k) => `hm-s${k}`,
    botLocalpart: (k) => `hive-s${k}`,
    agentTemplate: (k) => `s${k}-{name}`,
    agentNames: () => [],
    mismatchedHsToken: false,
    preexistingAccounts: false,
  },
  badtoken: {
    count: 1,
    id: (k) => `hm-bad${k}`,
    botLocalpart: (k) => `hive-bad${k}`,
    agentTemplate: (k) => `bad${k}-{name}`,
    agentNames: () => [],
    mismatchedHsToken: true,
    preexistingAccounts: false,
  },
  legacy: {
    count: 1,
    id: (k) => `hm-legacy${k}`,
    botLocalpart: (k) => `hive-legacy${k}`,
    agentTemplate: () => "{name}",
    // Listed names are exclusive user IDs: a second legacy slot needs different ones.
    agentNames: (k) => (k === 1 ? ["old1", "old2", "old3"] : [`old${k}a`, `old${k}b`, `old${k}c`]),
    mismatchedHsToken: false,
    preexistingAccounts: true,
  },
} satisfies Record<string, SlotKindSpec>;

export type SlotKind = keyof typeof SLOT_KINDS;

export interface PreexistingAccount extends RegisteredUser {
  name: string;
}

/** Contents of `slots/<name>/slot.json`. */
export interface Slot {
  name: string;
  kind: SlotKind;
  /** Appservice ID. */
  id: string;
  /** Port the hive-matrix instance listens on; the registration's url is http://127.0.0.1:<port>. */
  port: number;
  botLocalpart: string;
  agentTemplate: string;
  agentNames: string[];
  /** The service's copy (what `appservice.registration` points at). */
  registrationPath: string;
  /** The copy the homeserver loaded (same as the service's except for the hs_token of a badtoken slot). */
  homeserverRegistrationPath: string;
  asToken: string;
  /** The hs_token in the service's copy. */
  hsToken: string;
  /** The hs_token the homeserver sends; differs from `hsToken` only for a badtoken slot. */
  homeserverHsToken: string;
  preexistingAccounts: PreexistingAccount[];
}

export interface AcquiredSlot extends Slot {
  /** Removes the lock; idempotent. */
  release(): void;
}

export interface E2eEnv {
  runDir: string;
  homeserver: HomeserverAccess;
}

export const CURRENT_RUN_FILE = join(REPO_ROOT, ".cache", "e2e-current");
export const RUNS_ROOT = join(REPO_ROOT, ".cache", "e2e");
export const RUN_DIR_ENV = "HIVE_MATRIX_E2E_DIR";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function slotsRoot(runDir: string): string {
  return join(runDir, "slots");
}

function pristinePath(slotDir: string): string {
  return join(slotDir, ".registration.pristine.yaml");
}

function writeSecret(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

/** User IDs that the slot's namespace must claim (used to check that no two slots overlap). */
function sampleUsers(slot: { botLocalpart: string; agentTemplate: string; agentNames: string[] }, domain: string): string[] {
  const users = [`@${slot.botLocalpart}:${domain}`];
  if (slot.agentTemplate === "{name}") users.push(...slot.agentNames.map((n) => `@${n}:${domain}`));
  else users.push(`@${slot.agentTemplate.replace("{name}", "x1")}:${domain}`);
  return users;
}

/**
 * Writes every slot of `SLOT_KINDS` under `<runDir>/slots` for a homeserver at `hs.url`, using the
 * project's own registration builder. Returns them in a stable order.
 */
export async function buildSlots(runDir: string, hs: { url: string; serverName: string }): Promise<Slot[]> {
  const slots: Slot[] = [];
  const usedPorts = new Set<number>([Number(new URL(hs.url).port)]);
  const kinds = Object.keys(SLOT_KINDS) as SlotKind[];
  for (const kind of kinds) {
    const spec: SlotKindSpec = SLOT_KINDS[kind];
    for (let k = 1; k <= spec.count; k++) {
      const name = `${kind}-${k}`;
      const dir = join(slotsRoot(runDir), name);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      let port = await freePort();
      while (usedPorts.has(port)) port = await freePort();
      usedPorts.add(port);
      const registrationPath = join(dir, "registration.yaml");
      const homeserverRegistrationPath = join(dir, "homeserver-registration.yaml");
      const agentNames = spec.agentNames(k);
      const config = configSchema.parse({
        homeserver: { url: hs.url, domain: hs.serverName },
        appservice: {
          id: spec.id(k),
          port,
          url: `http://127.0.0.1:${port}`,
          botLocalpart: spec.botLocalpart(k),
          registration: registrationPath,
        },
        agents: { localpart: spec.agentTemplate(k), names: agentNames },
      });
      const asToken = newToken();
      const hsToken = newToken();
      const homeserverHsToken = spec.mismatchedHsToken ? newToken() : hsToken;
      const header = `# e2e slot ${name}: generated by test/harness/slots.ts\n`;
      const serviceCopy = header + YAML.stringify(buildRegistration(config, { asToken, hsToken }, agentNames));
      writeSecret(registrationPath, serviceCopy);
      writeSecret(pristinePath(dir), serviceCopy);
      writeSecret(
        homeserverRegistrationPath,
        header + YAML.stringify(buildRegistration(config, { asToken, hsToken: homeserverHsToken }, agentNames)),
      );
      slots.push({
        name,
        kind,
        id: config.appservice.id,
        port,
        botLocalpart: config.appservice.botLocalpart,
        agentTemplate: config.agents.localpart,
        agentNames,
        registrationPath,
        homeserverRegistrationPath,
        asToken,
        hsToken,
        homeserverHsToken,
        preexistingAccounts: [],
      });
    }
  }
  checkNoOverlap(slots, hs.serverName);
  for (const slot of slots) saveSlot(runDir, slot);
  return slots;
}

function checkNoOverlap(slots: Slot[], domain: string): void {
  for (const a of slots) {
    const regexes = userNamespaces(
      configSchema.parse({
        homeserver: { url: "http://127.0.0.1:1", domain },
        appservice: { botLocalpart: a.botLocalpart },
        agents: { localpart: a.agentTemplate },
      }),
      a.agentNames,
    ).map((ns) => new RegExp(ns.regex));
    for (const b of slots) {
      if (a === b) continue;
      const clash = sampleUsers(b, domain).find((u) => regexes.some((r) => r.test(u)));
      if (clash) throw new Error(`slot table: ${clash} of slot ${b.name} is inside the namespace of slot ${a.name}`);
    }
  }
}

export function saveSlot(runDir: string, slot: Slot): void {
  writeSecret(join(slotsRoot(runDir), slot.name, "slot.json"), JSON.stringify(slot, null, 2) + "\n");
}

export function listSlots(runDir: string): Slot[] {
  const root = slotsRoot(runDir);
  return readdirSync(root)
    .filter((name) => existsSync(join(root, name, "slot.json")))
    .sort()
    .map((name) => JSON.parse(readFileSync(join(root, name, "slot.json"), "utf8")) as Slot);
}

/**
 * Stops the homeserver of every earlier run whose jest process (the PID in the run directory's name)
 * is gone, e.g. after an interrupted run. Concurrent runs are left alone.
 */
export async function stopOrphanedHomeservers(exceptRunDir?: string): Promise<void> {
  if (!existsSync(RUNS_ROOT)) return;
  for (const name of readdirSync(RUNS_ROOT)) {
    const dir = join(RUNS_ROOT, name);
    const owner = Number.parseInt(name.slice(name.lastIndexOf("-") + 1), 10);
    if (dir === exceptRunDir || !Number.isInteger(owner) || processAlive(owner)) continue;
    await stopHomeserverByPidFile(join(dir, "homeserver"));
  }
}

/** The run directory and its homeserver, as written by global setup. */
export function e2eEnv(): E2eEnv {
  let runDir = process.env[RUN_DIR_ENV];
  if (!runDir) {
    try {
      runDir = readFileSync(CURRENT_RUN_FILE, "utf8").trim();
    } catch {
      throw new Error(
        `no e2e run: ${RUN_DIR_ENV} is unset and ${CURRENT_RUN_FILE} is missing ` +
          "(run e2e tests with `npx jest --selectProjects e2e`, whose global setup starts the homeserver)",
      );
    }
  }
  return { runDir, homeserver: readAccess(join(runDir, "homeserver.json")) };
}

const held = new Set<string>();
let exitHookInstalled = false;

function releaseLock(lockPath: string): void {
  if (!held.delete(lockPath)) return;
  try {
    const owner = Number.parseInt(readFileSync(lockPath, "utf8"), 10);
    if (owner === process.pid) unlinkSync(lockPath);
  } catch {
    // already gone
  }
}

function tryLock(lockPath: string): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockPath, "wx", 0o600);
      try {
        writeSync(fd, `${process.pid}\n`);
      } finally {
        closeSync(fd);
      }
      held.add(lockPath);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    // A lock whose holder died (a crashed jest worker) is stale: remove it and try once more.
    let owner = Number.NaN;
    try {
      owner = Number.parseInt(readFileSync(lockPath, "utf8"), 10);
    } catch {
      continue; // released meanwhile
    }
    if (!Number.isInteger(owner) || processAlive(owner)) return false;
    try {
      unlinkSync(lockPath);
    } catch {
      // someone else removed it
    }
  }
  return false;
}

/**
 * Takes a free slot of `kind` (O_EXCL lock file), waiting up to `timeoutMs` (default 120 s) for one.
 * The service's registration copy is reset to the generated one, so a test may rewrite it.
 * Homeserver-side state (users, rooms) left by earlier holders of the slot remains.
 */
export async function acquireSlot(kind: SlotKind, opts: { timeoutMs?: number } = {}): Promise<AcquiredSlot> {
  const { runDir } = e2eEnv();
  const candidates = listSlots(runDir).filter((s) => s.kind === kind);
  if (candidates.length === 0) throw new Error(`no e2e slots of kind ${kind} in ${runDir}`);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on("exit", () => {
      for (const lock of [...held]) releaseLock(lock);
    });
  }
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  for (;;) {
    for (const slot of candidates) {
      const dir = join(slotsRoot(runDir), slot.name);
      const lockPath = join(dir, "lock");
      if (!tryLock(lockPath)) continue;
      copyFileSync(pristinePath(dir), slot.registrationPath);
      chmodSync(slot.registrationPath, 0o600);
      return { ...slot, release: () => releaseLock(lockPath) };
    }
    if (Date.now() >= deadline) {
      throw new Error(`all ${candidates.length} e2e slot(s) of kind ${kind} stayed taken for ${opts.timeoutMs ?? 120_000} ms`);
    }
    await sleep(250);
  }
}

type DeepPartial<T> = T extends readonly unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;
export type ConfigOverrides = DeepPartial<ConfigInput>;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Objects merge key by key; arrays and scalars in `over` replace. */
export function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) continue;
    const current = out[key];
    out[key] = isPlainObject(current) && isPlainObject(value) ? deepMerge(current, value) : value;
  }
  return out;
}

/**
 * A parsed Config for a hive-matrix instance on `slot`: the run's homeserver, the slot's appservice
 * identity and registration, fresh state dirs (stateDir 0700 and agents.stateRoot, both created)
 * under `<runDir>/tmp`, no operators, `restartCommand: ["true"]`, unique Space and hive-chat aliases, log level warn.
 * `overrides` is deep-merged onto that raw input before parsing.
 */
export function makeTestConfig(
  slot: Pick<Slot, "name" | "id" | "port" | "botLocalpart" | "registrationPath" | "agentTemplate">,
  overrides: ConfigOverrides = {},
): Config {
  const { runDir, homeserver } = e2eEnv();
  const tmpRoot = join(runDir, "tmp");
  mkdirSync(tmpRoot, { recursive: true });
  const dir = mkdtempSync(join(tmpRoot, `${slot.name}-${randomBytes(2).toString("hex")}-`));
  const stateDir = join(dir, "state");
  const stateRoot = join(dir, "agents");
  mkdirSync(stateDir, { mode: 0o700 });
  mkdirSync(stateRoot, { mode: 0o700 });
  const unique = randomBytes(3).toString("hex");
  const raw: Record<string, unknown> = {
    homeserver: { url: homeserver.url, domain: homeserver.serverName },
    appservice: {
      id: slot.id,
      bind: "127.0.0.1",
      port: slot.port,
      url: `http://127.0.0.1:${slot.port}`,
      botLocalpart: slot.botLocalpart,
      registration: slot.registrationPath,
    },
    stateDir,
    operators: [],
    agents: { stateRoot, localpart: slot.agentTemplate, restartCommand: ["true"] },
    // Aliases are global on the shared homeserver: each instance gets its own, or they would fight over one.
    rooms: { chat: { alias: `hive-chat-${slot.name}-${unique}` }, space: { alias: `hive-${slot.name}-${unique}` } },
    logging: { level: "warn" },
  };
  return configSchema.parse(deepMerge(raw, overrides as Record<string, unknown>));
}
