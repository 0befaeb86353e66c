/**
 * Jest global teardown of the e2e project: stops the run's homeserver. The run directory is kept for
 * post-mortems (logs, slot files); only the 3 newest run directories are kept.
 */
import { existsSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { CURRENT_RUN_FILE, RUNS_ROOT, RUN_DIR_ENV } from "./slots";
import { stopHomeserverByPidFile } from "../../dev/homeserver";

const KEEP_RUNS = 3;

export default async function globalTeardown(): Promise<void> {
  let runDir = process.env[RUN_DIR_ENV];
  if (!runDir && existsSync(CURRENT_RUN_FILE)) runDir = readFileSync(CURRENT_RUN_FILE, "utf8").trim();
  if (runDir) await stopHomeserverByPidFile(join(runDir, "homeserver"));

  if (!existsSync(RUNS_ROOT)) return;
  const runs = readdirSync(RUNS_ROOT).sort(); // names start with a UTC timestamp
  for (const old of runs.slice(0, Math.max(0, runs.length - KEEP_RUNS))) {
    const dir = join(RUNS_ROOT, old);
    if (dir === runDir) continue;
    // An interrupted run may have left its homeserver behind (checked by command line, not just PID).
    await stopHomeserverByPidFile(join(dir, "homeserver"));
    rmSync(dir, { recursive: true, force: true });
  }
}
