/** The `hive-matrix` command line: run, registration, check-config. */
import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { discoverAgents } from "./agents/discovery";
import { loadMetricsToken } from "./appservice/auth";
import { ConfigError, loadConfigFile } from "./config/load";
import type { Config } from "./config/schema";
import { createLogger } from "./logging";
import { VERSION } from "./version";
import { RegistrationError, loadRegistration, templateHasFixedPart, writeRegistration, type Registration } from "./registration";

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

interface Command {
  name: string;
  summary: string;
  usage: string;
  options: Record<string, { type: "string" | "boolean"; description: string }>;
  run(values: Record<string, string | boolean | undefined>): Promise<number>;
}

const configOption = { type: "string" as const, description: "path of the YAML config file (required)" };

const COMMANDS: Command[] = [
  {
    name: "run",
    summary: "run the appservice",
    usage: "hive-matrix run --config FILE",
    options: { config: configOption },
    run: async (v) => runService(requireConfig(v)),
  },
  {
    name: "registration",
    summary: "write the homeserver registration YAML (an existing file keeps its tokens)",
    usage: "hive-matrix registration --config FILE [--out FILE]",
    options: { config: configOption, out: { type: "string", description: "where to write (default: appservice.registration)" } },
    run: async (v) => registrationCommand(requireConfig(v), typeof v.out === "string" ? v.out : undefined),
  },
  {
    name: "check-config",
    summary: "validate a config file and print every problem",
    usage: "hive-matrix check-config --config FILE",
    options: { config: configOption },
    run: async (v) => checkConfig(requireConfig(v)),
  },
];

class UsageError extends Error {}

function requireConfig(values: Record<string, string | boolean | undefined>): string {
  if (typeof values.config !== "string" || values.config === "") throw new UsageError("--config FILE is required");
  return values.config;
}

function topHelp(): string {
  const lines = ["Usage: hive-matrix <command> [options]", "", "Commands:"];
  for (const c of COMMANDS) lines.push(`  ${c.name.padEnd(14)}${c.summary}`);
  lines.push("", "Run `hive-matrix <command> --help` for a command's options.");
  return lines.join("\n");
}

function commandHelp(c: Command): string {
  const lines = [`Usage: ${c.usage}`, "", c.summary, "", "Options:"];
  for (const [name, o] of Object.entries(c.options)) lines.push(`  --${name.padEnd(12)}${o.description}`);
  lines.push(`  --${"help".padEnd(12)}show this help`);
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<void> {
  const code = await cli(argv);
  // `run` keeps the process alive on its own; the other commands end here.
  if (code !== undefined) process.exitCode = code;
}

/** Returns the exit code, or undefined for a service that keeps running. */
export async function cli(
  argv: string[],
  out: (s: string) => void = (s) => process.stdout.write(`${s}\n`),
  err: (s: string) => void = (s) => process.stderr.write(`${s}\n`),
): Promise<number | undefined> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    out(topHelp());
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (name === "--version") {
    out(VERSION);
    return EXIT_OK;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    err(`hive-matrix: unknown command "${name}"\n\n${topHelp()}`);
    return EXIT_USAGE;
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    const options = Object.fromEntries(Object.entries(command.options).map(([k, o]) => [k, { type: o.type }]));
    values = parseArgs({
      args: rest,
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (e) {
    err(`hive-matrix ${name}: ${(e as Error).message}\n\n${commandHelp(command)}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    out(commandHelp(command));
    return EXIT_OK;
  }
  try {
    const code = await command.run(values);
    return name === "run" && code === EXIT_OK ? undefined : code;
  } catch (e) {
    if (e instanceof UsageError) {
      err(`hive-matrix ${name}: ${e.message}\n\n${commandHelp(command)}`);
      return EXIT_USAGE;
    }
    if (e instanceof ConfigError || e instanceof RegistrationError) {
      err(`hive-matrix ${name}: ${e.message}`);
      return EXIT_USAGE;
    }
    err(`hive-matrix ${name}: ${(e as Error).message}`);
    return EXIT_FAILURE;
  }
}

function checkConfig(path: string): Promise<number> {
  let config: Config;
  try {
    config = loadConfigFile(path);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    process.stderr.write(`${e.message}\n`);
    return Promise.resolve(EXIT_FAILURE);
  }
  const lines = [
    `${path}: OK`,
    `  homeserver ${config.homeserver.url} (${config.homeserver.domain})`,
    `  appservice ${config.appservice.id} on ${config.appservice.bind}:${config.appservice.port}, bot @${config.appservice.botLocalpart}:${config.homeserver.domain}`,
  ];
  if (config.operators.length === 0) lines.push("  warning: no operators configured: nobody can command the hive and nobody is invited");
  if (!existsSync(config.appservice.registration)) {
    lines.push(
      `  warning: registration ${config.appservice.registration} does not exist yet; create it with \`hive-matrix registration --config ${path}\``,
    );
  } else {
    try {
      checkRegistrationMatches(config, loadRegistration(config.appservice.registration));
    } catch (e) {
      lines.push(`  warning: ${(e as Error).message}`);
    }
  }
  if (config.appservice.metricsTokenFile) {
    try {
      loadMetricsToken(config.appservice.metricsTokenFile);
    } catch (e) {
      lines.push(`  warning: ${(e as Error).message} (run refuses to start)`);
    }
  }
  process.stdout.write(`${lines.join("\n")}\n`);
  return Promise.resolve(EXIT_OK);
}

function registrationCommand(configPath: string, outPath: string | undefined): Promise<number> {
  const config = loadConfigFile(configPath);
  const path = outPath ?? config.appservice.registration;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const names = templateHasFixedPart(config.agents.localpart) ? [] : discoverAgents(config).names;
  const { registration, freshTokens } = writeRegistration(config, path, names);
  process.stdout.write(
    `${freshTokens ? "wrote" : "updated"} ${path} (${freshTokens ? "new tokens" : "tokens kept"}; ` +
      `${registration.namespaces.users.length} user namespace entr${registration.namespaces.users.length === 1 ? "y" : "ies"})\n` +
      "Load it on the homeserver: Synapse: app_service_config_files + restart; tuwunel: appservice_dir or `!admin appservices register`.\n",
  );
  return Promise.resolve(EXIT_OK);
}

/** The registration the homeserver loaded must describe this config, or nothing will work. */
export function checkRegistrationMatches(config: Config, reg: Registration): void {
  const problems: string[] = [];
  if (reg.id !== config.appservice.id) problems.push(`id is "${reg.id}" but appservice.id is "${config.appservice.id}"`);
  if (reg.sender_localpart !== config.appservice.botLocalpart) {
    problems.push(`sender_localpart is "${reg.sender_localpart}" but appservice.botLocalpart is "${config.appservice.botLocalpart}"`);
  }
  if (problems.length > 0) {
    throw new RegistrationError(
      `registration ${config.appservice.registration} does not match the config: ${problems.join("; ")}; regenerate it with \`hive-matrix registration\``,
    );
  }
}

async function runService(configPath: string): Promise<number> {
  const config = loadConfigFile(configPath);
  const registration = loadRegistration(config.appservice.registration);
  checkRegistrationMatches(config, registration);
  const { logger, scrubber } = createLogger({ level: config.logging.level, pretty: config.logging.pretty });
  // Imported late so that `--help` and `check-config` do not load the SDK; the crypto stub first.
  await import("./crypto-stub");
  const { HiveMatrixService } = await import("./service");
  const service = new HiveMatrixService({ config, registration, logger, scrubber });
  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "stopping");
    service.stop().then(
      () => process.exit(EXIT_OK),
      (e: unknown) => {
        logger.error({ err: (e as Error).message }, "error while stopping");
        process.exit(EXIT_FAILURE);
      },
    );
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  // Re-reads the registration (new agents under the {name} template); the file is watched too.
  process.on("SIGHUP", () => void service.reloadRegistration("SIGHUP"));
  try {
    await service.start();
  } catch (e) {
    logger.fatal({ err: (e as Error).message }, "startup failed");
    logger.flush();
    await service.stop().catch(() => undefined);
    throw e;
  }
  if (registration.url && registration.url !== config.appservice.url) {
    logger.warn(
      { configured: config.appservice.url, registered: registration.url },
      "appservice.url differs from the url in the registration file",
    );
  }
  return EXIT_OK;
}
