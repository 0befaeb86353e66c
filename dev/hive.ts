/**
 * `npm run dev`: the embedded default. Starts a loopback Synapse (installed from PyPI into
 * .synapse-venv by scripts/synapse-install.sh), writes a config and registration into .dev/,
 * creates two demo agent state dirs and an operator account, and runs hive-matrix against it.
 * Everything lives under .dev/ and is reused on the next start; delete it for a fresh hive.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import YAML from "yaml";
import { parseConfig } from "../src/config/load";
import { createLogger } from "../src/logging";
import { writeRegistration } from "../src/registration";
import { HiveMatrixService } from "../src/service";
import { freePort, registerUser, startSynapse, SynapseHttpError } from "./synapse";

const ROOT = resolve(__dirname, "..");
const DEV = join(ROOT, ".dev");

async function main(): Promise<void> {
  mkdirSync(DEV, { recursive: true, mode: 0o700 });
  const portsFile = join(DEV, "ports.json");
  const ports = existsSync(portsFile)
    ? (JSON.parse(readFileSync(portsFile, "utf8")) as { synapse: number; appservice: number })
    : { synapse: await freePort(), appservice: await freePort() };
  writeFileSync(portsFile, JSON.stringify(ports));
  const domain = "hive.localhost";
  const stateRoot = join(DEV, "agents");
  for (const name of ["alpha", "beta"]) mkdirSync(join(stateRoot, name, "state"), { recursive: true });
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

  process.stdout.write(`starting Synapse on 127.0.0.1:${ports.synapse} (first run installs it from PyPI, ~30 s)\n`);
  const synapse = await startSynapse({
    baseDir: join(DEV, "synapse"),
    serverName: domain,
    port: ports.synapse,
    appserviceConfigFiles: [config.appservice.registration],
  });
  const password = "hive-operator";
  try {
    await registerUser(synapse, "operator", { password, admin: true });
  } catch (err) {
    if (!(err instanceof SynapseHttpError && err.errcode === "M_USER_IN_USE")) throw err;
  }
  const { logger, scrubber } = createLogger({ level: "info", pretty: true });
  const service = new HiveMatrixService({ config, registration, logger, scrubber });
  const stop = (): void => {
    void service
      .stop()
      .then(() => synapse.stop())
      .finally(() => process.exit(0));
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  await service.start();
  process.stdout.write(
    [
      "",
      "hive-matrix dev hive is running.",
      `  homeserver   ${synapse.url}  (server name ${domain})`,
      `  operator     @operator:${domain}  password: ${password}`,
      `  config       ${join(DEV, "config.yaml")}`,
      `  demo agents  ${stateRoot}/{alpha,beta}/state`,
      `  health       http://127.0.0.1:${ports.appservice}/health`,
      "Log in with any Matrix client at the homeserver URL. Ctrl-C stops both.",
      "",
    ].join("\n"),
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`hive-matrix dev: ${(err as Error).message}\n`);
  process.exit(1);
});
