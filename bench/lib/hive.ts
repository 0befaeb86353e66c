/**
 * The hive-matrix instances a run uses. Synapse reads appservice registrations only at start, so
 * every instance a run will need gets its registration (own namespace, own port, own state) before
 * Synapse starts; the service itself starts later, in a child process, when a scenario asks.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "../../src/config/load";
import type { Config, ConfigInput } from "../../src/config/schema";
import { writeRegistration, type Registration } from "../../src/registration";
import { freePort } from "../../dev/server-process";
import { ChildHost } from "./host";

export type HiveKind = "main" | "ingest" | "fleet" | "fleet-defaults";

interface HiveIdentity {
  id: string;
  botLocalpart: string;
  /** Agent localpart template; the namespaces of the kinds must not overlap. */
  template: string;
  /** hive-chat's alias localpart: rooms of different instances must not compete for one alias. */
  alias: string;
  /** The Space's alias localpart, likewise. */
  spaceAlias: string;
}

const IDENTITIES: Record<HiveKind, HiveIdentity> = {
  main: { id: "hm-main", botLocalpart: "hive", template: "agent-{name}", alias: "hive-chat", spaceAlias: "hive" },
  ingest: { id: "hm-ingest", botLocalpart: "hive-ingest", template: "ingest-{name}", alias: "hive-chat-ingest", spaceAlias: "hive-ingest" },
  fleet: { id: "hm-fleet", botLocalpart: "hive-fleet", template: "fleet-{name}", alias: "hive-chat-fleet", spaceAlias: "hive-fleet" },
  "fleet-defaults": {
    id: "hm-fleet-defaults",
    botLocalpart: "hive-fleetdef",
    template: "fleetd-{name}",
    alias: "hive-chat-fleetdef",
    spaceAlias: "hive-fleetdef",
  },
};

export interface HiveSpec {
  kind: HiveKind;
  dir: string;
  configPath: string;
  config: Config;
  registration: Registration;
  /** Where agents' state dirs go. */
  stateRoot: string;
  /** One line per invocation of the restart command (agent name), so a scenario can count daemon restarts. */
  restartLog: string;
}

/** Writes config and registration of one instance (nothing runs yet). */
export async function prepareHive(
  kind: HiveKind,
  runDir: string,
  homeserver: { url: string; serverName: string },
  operators: string[],
): Promise<HiveSpec> {
  const identity = IDENTITIES[kind];
  const dir = join(runDir, "hives", kind);
  const stateRoot = join(dir, "agents");
  mkdirSync(stateRoot, { recursive: true, mode: 0o700 });
  const port = await freePort();
  const restartLog = join(dir, "restarts.log");
  // As deployed (nix/module.nix), the registration has a directory of its own: the service watches
  // that directory for a new registration, and the logs written next to it would wake it per line.
  const registrationDir = join(dir, "registration");
  mkdirSync(registrationDir, { mode: 0o700 });
  const raw: ConfigInput = {
    homeserver: { url: homeserver.url, domain: homeserver.serverName, startupWaitSeconds: 120 },
    appservice: {
      id: identity.id,
      bind: "127.0.0.1",
      port,
      url: `http://127.0.0.1:${port}`,
      registration: join(registrationDir, "registration.yaml"),
      botLocalpart: identity.botLocalpart,
    },
    stateDir: join(dir, "state"),
    operators,
    // argv, no shell for hive-matrix: the agent name reaches sh as $1, never as code. `true` for the
    // main instance, whose onboarding is compared with the older flow running the same command.
    agents: {
      stateRoot,
      localpart: identity.template,
      restartCommand: kind === "main" ? ["true"] : ["sh", "-c", 'echo "$1" >> "$0"', restartLog, "{name}"],
    },
    // The bench triggers reconciles itself; a periodic one must not land inside a measurement.
    rooms: { chat: { alias: identity.alias }, space: { alias: identity.spaceAlias }, reconcileIntervalSeconds: 0 },
    logging: { level: "info" },
  };
  const configPath = join(dir, "config.json");
  writeFileSync(configPath, `${JSON.stringify(raw, null, 2)}\n`, { mode: 0o600 });
  const config = parseConfig(raw, configPath);
  const { registration } = writeRegistration(config, config.appservice.registration);
  return { kind, dir, configPath, config, registration, stateRoot, restartLog };
}

export class RunningHive {
  constructor(
    readonly spec: HiveSpec,
    readonly host: ChildHost,
  ) {}

  get url(): string {
    return this.spec.config.appservice.url;
  }

  /** Creates `<stateRoot>/<name>/state/` for each name: that is what makes an agent exist. */
  makeAgentDirs(names: readonly string[]): void {
    for (const name of names) mkdirSync(join(this.spec.stateRoot, name, "state"), { recursive: true });
  }

  stop(): Promise<void> {
    return this.host.stop();
  }
}

/** Starts the service of `spec` in a child process and waits until it is ready. */
export async function startHive(spec: HiveSpec, serviceHostScript: string, nodeArgs: string[] = []): Promise<RunningHive> {
  const host = await ChildHost.spawn({
    nodeArgs,
    name: `hive-matrix (${spec.kind})`,
    script: serviceHostScript,
    args: [JSON.stringify({ configPath: spec.configPath, logFile: join(spec.dir, "service.log") })],
    logFile: join(spec.dir, "child.log"),
    readyTimeoutMs: 180_000,
  });
  return new RunningHive(spec, host);
}
