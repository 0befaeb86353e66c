import { lstatSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { createLogger } from "../../src/logging";
import type { Registration } from "../../src/registration";
import { HiveMatrixService } from "../../src/service";
import type { MatrixEvent } from "../../src/store/transactions";
import { captureLogs } from "./logs";

export interface StartedService {
  service: HiveMatrixService;
  /** Every log line the service wrote (debug level), for assertions. */
  logs: string[];
  /** Every event the service handled, in order. */
  seen: MatrixEvent[];
}

const started: StartedService[] = [];

/** Starts a service whose logs are captured and whose handled events are recorded. */
export async function startRecordedService(
  config: Config,
  registration: Registration,
  options: { controlRoom?: boolean } = {},
): Promise<StartedService> {
  const { lines, destination } = captureLogs();
  const { logger, scrubber } = createLogger({ level: "debug", destination });
  const service = new HiveMatrixService({ config, registration, logger, scrubber, ...options });
  const seen: MatrixEvent[] = [];
  service.onEvent((e) => {
    seen.push(e);
  });
  const run = { service, logs: lines, seen };
  started.push(run);
  await service.start();
  return run;
}

/** Agent tokens currently on disk under stateRoot (regular files only: a planted symlink is not a token). */
function agentTokens(config: Config): string[] {
  const tokens: string[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(config.agents.stateRoot);
  } catch {
    return tokens;
  }
  for (const name of names) {
    const file = join(config.agents.stateRoot, name, "state", "matrix-token");
    try {
      if (lstatSync(file).isFile()) tokens.push(readFileSync(file, "utf8").trim());
    } catch {
      /* no token file */
    }
  }
  return tokens.filter((t) => t.length >= 8);
}

/**
 * Run after every e2e file (test/harness/after-each-file.ts): no service started in the file may
 * have logged its as_token, hs_token or any agent token that is on disk now.
 */
export function secretsFoundInLogs(): string[] {
  const problems: string[] = [];
  for (const run of started.splice(0)) {
    const { config, registration } = run.service;
    const secrets = [
      ["as_token", registration.as_token],
      ["hs_token", registration.hs_token],
      ...agentTokens(config).map((t) => ["an agent token", t]),
    ];
    const all = run.logs.join("");
    for (const [what, secret] of secrets) if (all.includes(secret)) problems.push(`${what} of ${config.appservice.id} appears in its logs`);
  }
  return problems;
}
