/**
 * Restarting an agent's daemon after its token file changed: an argv template, no shell, so an
 * agent name can never inject anything. A failure is reported to the caller as a warning, never
 * thrown: the agent's own path-watcher brings the daemon up anyway (docs/architecture.md).
 *
 * The commands run through a fork server (fork-server.ts): spawning from the service itself costs
 * it a fork of its whole address space per agent. Without `/bin/sh` they are spawned directly.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { ForkServer, STDERR_TAIL_CHARS, type CommandOutcome } from "./fork-server";

export interface RestartResult {
  ok: boolean;
  /** Why it failed, for a warning line; undefined when ok. */
  problem?: string;
  durationMs: number;
}

export function restartArgv(template: string[], name: string): string[] {
  return template.map((arg) => arg.split("{name}").join(name));
}

/** The warning's wording, one for both ways of running a command; undefined when it succeeded. */
export function describeOutcome(command: string, outcome: CommandOutcome, timeoutMs: number): string | undefined {
  const stderr = "stderr" in outcome && outcome.stderr.trim() ? `: ${outcome.stderr.trim()}` : "";
  switch (outcome.kind) {
    case "exited":
      return outcome.status === 0 ? undefined : `\`${command}\` exited with status ${outcome.status}${stderr}`;
    case "signalled":
      return `\`${command}\` was killed by ${outcome.signal}${stderr}`;
    case "not-found":
      return `\`${command}\` was not found`;
    case "unstartable":
      return `\`${command}\` could not be started (${outcome.reason})`;
    case "lost":
      return `\`${command}\` gave no result: ${outcome.reason}`;
    case "timed-out":
      return `\`${command}\` did not finish within ${Math.round(timeoutMs / 1000)} s and was killed`;
  }
}

/** Runs `argv` as a child of the calling process (libuv: fork + exec). Never rejects. */
export function spawnCommand(argv: readonly string[], timeoutMs: number): Promise<CommandOutcome> {
  const [command, ...args] = argv;
  return new Promise((resolve) => {
    let stderr = "";
    let settled = false;
    const finish = (outcome: CommandOutcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    let child: ReturnType<typeof spawn> | undefined;
    const timer = setTimeout(() => {
      child?.kill("SIGKILL");
      finish({ kind: "timed-out" });
    }, timeoutMs);
    timer.unref();
    try {
      child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"], shell: false });
    } catch (err) {
      // E.g. a NUL byte in an argument.
      finish({ kind: "unstartable", reason: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
      return;
    }
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_TAIL_CHARS);
    });
    child.on("error", (err: NodeJS.ErrnoException) => {
      finish(err.code === "ENOENT" ? { kind: "not-found" } : { kind: "unstartable", reason: err.code ?? err.message });
    });
    child.on("close", (code, signal) => {
      finish(signal ? { kind: "signalled", signal, stderr } : { kind: "exited", status: code ?? -1, stderr });
    });
  });
}

async function timed(command: string, timeoutMs: number, run: Promise<CommandOutcome>): Promise<RestartResult> {
  const started = Date.now();
  const problem = describeOutcome(command, await run, timeoutMs);
  return { ok: problem === undefined, problem, durationMs: Date.now() - started };
}

/** One restart spawned from the calling process, without a fork server (the older flow in bench/ uses it). */
export function runRestart(template: string[], name: string, timeoutMs: number): Promise<RestartResult> {
  const argv = restartArgv(template, name);
  return timed(argv[0], timeoutMs, spawnCommand(argv, timeoutMs));
}

/**
 * Runs the restarts of one service: through a fork server started at the first restart, ended by
 * close(). After close(), or where `shell` does not exist, restarts are spawned directly.
 */
export class Restarter {
  private forkServer: ForkServer | undefined;
  private closed = false;

  constructor(private readonly shell = "/bin/sh") {}

  /** The fork server's pid while it runs. */
  get forkServerPid(): number | undefined {
    return this.forkServer?.pid;
  }

  run(template: string[], name: string, timeoutMs: number): Promise<RestartResult> {
    const argv = restartArgv(template, name);
    const server = this.server();
    // `exec -x` would be taken for an option by some shells: such a command (however unlikely) is spawned.
    const viaServer = server !== undefined && !argv[0].startsWith("-");
    return timed(argv[0], timeoutMs, viaServer ? server.run(argv, timeoutMs) : spawnCommand(argv, timeoutMs));
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.forkServer?.close();
  }

  private server(): ForkServer | undefined {
    if (this.closed) return undefined;
    if (!this.forkServer && existsSync(this.shell)) this.forkServer = new ForkServer(this.shell);
    return this.forkServer;
  }
}
