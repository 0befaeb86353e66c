/**
 * hive-matrix as a real process (`bin/hive-matrix.js run`), for tests that send it signals:
 * SIGTERM must finish in-flight work, SIGKILL must lose nothing that was acknowledged.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import type { Config } from "../../src/config/schema";
import { REPO_ROOT } from "../../dev/synapse";

export interface ServiceProcess {
  proc: ChildProcess;
  /** Every line the process wrote to stdout and stderr. */
  lines: string[];
  /** Resolves with the exit code (or the signal's name) once the process has ended. */
  exited: Promise<number | string>;
}

export function spawnService(config: Config, configDir: string): ServiceProcess {
  const file = join(configDir, `config-${Date.now()}.yaml`);
  writeFileSync(file, YAML.stringify(config), { mode: 0o600 });
  const proc = spawn(process.execPath, [join(REPO_ROOT, "bin", "hive-matrix.js"), "run", "--config", file], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, NODE_ENV: "production" },
  });
  const lines: string[] = [];
  for (const stream of [proc.stdout, proc.stderr]) {
    stream?.setEncoding("utf8");
    stream?.on("data", (chunk: string) => lines.push(...chunk.split("\n").filter(Boolean)));
  }
  const exited = new Promise<number | string>((resolve) => proc.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")));
  return { proc, lines, exited };
}

/** Waits until /health answers ready, or the process dies. */
export async function waitReady(url: string, child: ServiceProcess, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  let dead = false;
  void child.exited.then(() => (dead = true));
  while (Date.now() < end) {
    if (dead) throw new Error(`hive-matrix exited during startup:\n${child.lines.slice(-20).join("\n")}`);
    try {
      const res = await fetch(`${url}/health`);
      if (res.status === 200) return;
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("hive-matrix did not become ready in time");
}
