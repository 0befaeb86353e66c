/**
 * `npm run dev`: the embedded default. Starts a loopback Synapse (installed from PyPI into
 * .synapse-venv by scripts/synapse-install.sh), or tuwunel when TUWUNEL_BIN names its binary,
 * writes a config and registration into .dev/ (.dev/tuwunel/ for tuwunel), creates two demo agent
 * state dirs and an operator account, and runs hive-matrix against it. Everything is reused on the
 * next start; delete .dev/ for a fresh hive.
 * The banner with the login comes once the hive can be used (control room, rooms, demo agents
 * joined), after the startup logs, so it is not scrolled away; the URL stays the same between runs.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import YAML from "yaml";
import { parseConfig } from "../src/config/load";
import { createLogger } from "../src/logging";
import { writeRegistration } from "../src/registration";
import { HiveMatrixService } from "../src/service";
import { registerUser, selectedHomeserver, startHomeserver } from "./homeserver";
import { HomeserverHttpError, freePort, isPortFree } from "./server-process";

const ROOT = resolve(__dirname, "..");
const KIND = selectedHomeserver();
// A hive's state names rooms of one server: each homeserver gets its own dev hive.
const DEV = KIND === "tuwunel" ? join(ROOT, ".dev", "tuwunel") : join(ROOT, ".dev");

/** The ports a fresh dev hive uses when they are free: the defaults of Synapse and of hive-matrix's config. */
const DEFAULT_PORTS = { synapse: 8008, appservice: 9010 };
/** How long the banner waits for the hive before it is printed with what is still missing. */
const READY_TIMEOUT_MS = 120_000;
const DEMO_AGENTS = ["alpha", "beta"];

type Ports = typeof DEFAULT_PORTS;
const LABEL: Record<keyof Ports, string> = { synapse: KIND === "tuwunel" ? "tuwunel" : "Synapse", appservice: "hive-matrix" };

/**
 * The same URL on every run: the ports of the last run, else the defaults, each when free; a port
 * taken by something else falls back to a free one (and says so).
 */
async function choosePorts(file: string): Promise<Ports> {
  const saved = existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Partial<Ports>) : {};
  const chosen = { ...DEFAULT_PORTS };
  for (const key of Object.keys(DEFAULT_PORTS) as (keyof Ports)[]) {
    const candidates = [...new Set([saved[key], DEFAULT_PORTS[key]].filter((p): p is number => typeof p === "number"))];
    let port: number | undefined;
    for (const candidate of candidates) if (port === undefined && (await isPortFree(candidate))) port = candidate;
    if (port === undefined) {
      port = await freePort();
      process.stdout.write(`port ${candidates.join(" and ")} is taken; ${LABEL[key]} listens on ${port} instead\n`);
    }
    chosen[key] = port;
  }
  writeFileSync(file, JSON.stringify(chosen));
  return chosen;
}

/** What the hive still lacks before an operator can use it; empty when it is ready. */
function missing(service: HiveMatrixService): string[] {
  const lacks: string[] = [];
  if (!service.isReady()) lacks.push("the service is starting");
  if (!service.control.roomId) lacks.push("the control room");
  if (!service.rooms.spaceId || !service.rooms.chatId) lacks.push("the Space and hive-chat");
  for (const name of DEMO_AGENTS) {
    if (service.agents.records.get(name)?.state !== "joined") lacks.push(`agent ${name} joined to the rooms`);
  }
  return lacks;
}

async function waitReady(service: HiveMatrixService): Promise<string[]> {
  const end = Date.now() + READY_TIMEOUT_MS;
  while (missing(service).length > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 250));
  return missing(service);
}

async function main(): Promise<void> {
  mkdirSync(DEV, { recursive: true, mode: 0o700 });
  const ports = await choosePorts(join(DEV, "ports.json"));
  const domain = "hive.localhost";
  const stateRoot = join(DEV, "agents");
  for (const name of DEMO_AGENTS) mkdirSync(join(stateRoot, name, "state"), { recursive: true });
  const raw = {
    homeserver: { url: `http://127.0.0.1:${ports.synapse}`, domain },
    appservice: { port: ports.appservice, url: `http://127.0.0.1:${ports.appservice}`, registration: join(DEV, "registration.yaml") },
    stateDir: join(DEV, "state"),
    operators: [`@operator:${domain}`],
    agents: { stateRoot, restartCommand: ["true"] },
    logging: { level: "info", pretty: true },
  };
  writeFileSync(join(DEV, "config.yaml"), YAML.stringify(raw));
  const config = parseConfig(raw, join(DEV, "config.yaml"));
  const { registration } = writeRegistration(config, config.appservice.registration);

  process.stdout.write(
    KIND === "tuwunel"
      ? `starting tuwunel (${process.env.TUWUNEL_BIN}) on 127.0.0.1:${ports.synapse}\n`
      : `starting Synapse on 127.0.0.1:${ports.synapse} (the first run installs it from PyPI, under a minute)\n`,
  );
  const homeserver = await startHomeserver({
    baseDir: join(DEV, KIND),
    serverName: domain,
    port: ports.synapse,
    appserviceConfigFiles: [config.appservice.registration],
  });
  const password = "hive-operator";
  try {
    // On tuwunel the server admin is the launcher's own first user, printed below.
    await registerUser(homeserver, "operator", { password, admin: homeserver.kind === "synapse" });
  } catch (err) {
    if (!(err instanceof HomeserverHttpError && err.errcode === "M_USER_IN_USE")) throw err;
  }
  const { logger, scrubber } = createLogger({ level: "info", pretty: true });
  const service = new HiveMatrixService({ config, registration, logger, scrubber });
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void service
      .stop()
      .then(() => homeserver.stop())
      .finally(() => process.exit(0));
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  await service.start();
  const lacking = await waitReady(service);
  // The pretty log stream writes asynchronously: let it drain, so that the banner comes last.
  await new Promise((r) => setTimeout(r, 300));
  if (stopping) return;
  const alias = (key: "space" | "chat"): string => service.rooms.aliases[key] ?? "(no alias)";
  process.stdout.write(
    [
      "",
      lacking.length === 0
        ? "hive-matrix dev hive is ready."
        : `hive-matrix dev hive is running, but after ${READY_TIMEOUT_MS / 1000} s it still lacks: ${lacking.join(", ")} (see the log above).`,
      `  homeserver    ${homeserver.url}  (${homeserver.version}, server name ${domain})`,
      `  operator      @operator:${domain}  password: ${password}`,
      ...(homeserver.kind === "tuwunel"
        ? [`  server admin  ${homeserver.admin.userId}  password: ${homeserver.admin.password}  (!admin commands in #admins:${domain})`]
        : []),
      `  control room  ${service.control.roomId ?? "(not yet)"}  (you are invited; send !hive help)`,
      `  Space         ${alias("space")}  ${service.rooms.spaceId ?? ""}`,
      `  hive-chat     ${alias("chat")}  ${service.rooms.chatId ?? ""}`,
      `  demo agents   ${stateRoot}/{${DEMO_AGENTS.join(",")}}/state`,
      `  config        ${join(DEV, "config.yaml")}`,
      `  health        http://127.0.0.1:${ports.appservice}/health`,
      "Log in with any Matrix client at the homeserver URL. Ctrl-C stops both.",
      "",
    ].join("\n"),
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`hive-matrix dev: ${(err as Error).message}\n`);
  process.exit(1);
});
