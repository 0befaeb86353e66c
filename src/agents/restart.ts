/**
 * Restarting an agent's daemon after its token file changed: an argv template, no shell, so an
 * agent name can never inject anything. A failure is reported to the caller as a warning, never
 * thrown: the agent's own path-watcher brings the daemon up anyway (docs/architecture.md).
 */
import { spawn } from "node:child_process";

export interface RestartResult {
  ok: boolean;
  /** Why it failed, for a warning line; undefined when ok. */
  problem?: string;
  durationMs: number;
}

export function restartArgv(template: string[], name: string): string[] {
  return template.map((arg) => arg.split("{name}").join(name));
}

export function runRestart(template: string[], name: string, timeoutMs: number): Promise<RestartResult> {
  const [command, ...args] = restartArgv(template, name);
  const started = Date.now();
  return new Promise((resolve) => {
    let stderr = "";
    let settled = false;
    const finish = (problem?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ok: problem === undefined, problem, durationMs: Date.now() - started });
    };
    const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"], shell: false });
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-400);
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      finish(`\`${command}\` did not finish within ${Math.round(timeoutMs / 1000)} s and was killed`);
    }, timeoutMs);
    timer.unref();
    child.on("error", (err: NodeJS.ErrnoException) => {
      finish(err.code === "ENOENT" ? `\`${command}\` was not found` : `\`${command}\` could not be started (${err.code ?? err.message})`);
    });
    child.on("close", (code, signal) => {
      if (code === 0) finish();
      else {
        const why = signal ? `was killed by ${signal}` : `exited with status ${code}`;
        finish(`\`${command}\` ${why}${stderr.trim() ? `: ${stderr.trim()}` : ""}`);
      }
    });
  });
}
