/**
 * A fork server for the restart commands: one small `/bin/sh` co-process, started at the first
 * command, forks and execs every command, while the service only writes a request line to its
 * stdin and reads result lines from its stdout. libuv spawns with fork(), which copies the page
 * tables of the whole service and then charges it a copy-on-write fault for every heap page it
 * writes afterwards: per agent, that cost grew with the service's memory. A shell is a few MB.
 *
 * Protocol (one line each way, so no argument can break the framing):
 * - request: `<id> <argv>`, every argument single-quoted for `eval "set -- ..."`: `'` becomes
 *   `'\''` and a newline `'"$nl"'` (the script's `nl` holds one), so a line never contains a raw
 *   newline and nothing in an argument is ever code. NUL cannot be passed to exec and is refused.
 * - results: `<id> pid <pid>` once the command is forked, then `<id> exit <status>` (`wait`'s:
 *   128+n when killed by signal n), or `<id> missing` when `command -v` does not find it.
 * Each command runs in the background (in a subshell that waits for it and reports), so commands
 * run in parallel; stdin and stdout are /dev/null, stderr goes to `<dir>/<id>`, read by the
 * service for a failing command. Ids are reused only once a command's exit line arrived.
 *
 * The shell runs in its own session (process group): at EOF on stdin (the service stopped or
 * died) it sends SIGTERM to its group, i.e. to commands still running (a `systemctl restart`
 * client killed this way does not cancel the restart job systemd queued), removes `<dir>` and
 * exits; it never outlives the service.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { open } from "node:fs/promises";
import type { Socket } from "node:net";
import { constants, tmpdir } from "node:os";
import { join } from "node:path";

/** What became of one command, however it was run. */
export type CommandOutcome =
  | { kind: "exited"; status: number; stderr: string }
  | { kind: "signalled"; signal: string; stderr: string }
  | { kind: "not-found" }
  | { kind: "unstartable"; reason: string }
  /** Started, but the fork server died before it said how the command ended. */
  | { kind: "lost"; reason: string }
  | { kind: "timed-out" };

/** The name the shell runs under (its `$0`): how `ps` and the bench tell it from other shells. */
export const FORK_SERVER_NAME = "hive-matrix-fork-server";

/** How much of a failing command's stderr is kept. */
export const STDERR_TAIL_CHARS = 400;

const SCRIPT = `nl='
'
dir=$1
# Results go to fd 3; nothing else may write into the service's pipe.
exec 3>&1 >/dev/null
while IFS= read -r request; do
  id=\${request%% *}
  eval "set -- \${request#* }"
  if command -v -- "$1" >/dev/null 2>&1; then
    (
      (exec "$@") </dev/null >/dev/null 2>"$dir/$id" 3>&- &
      echo "$id pid $!" >&3
      wait "$!"
      echo "$id exit $?" >&3
    ) &
  else
    echo "$id missing" >&3
  fi
done
# EOF: the service stopped or died. End the commands still running: kill 0 is this shell's own
# group only when it leads one (it is started in a session of its own), so check first.
trap '' TERM
if read -r pid comm state ppid pgrp rest 2>/dev/null </proc/$$/stat && [ "$pgrp" = "$$" ]; then kill -s TERM 0; fi
rm -rf -- "$dir"
`;

/** `arg` as one word for the fork server's `eval`; see the protocol above. */
export function quoteForForkServer(arg: string): string {
  if (arg.includes("\0")) throw new Error("an argument contains a NUL byte");
  return `'${arg.replaceAll("'", "'\\''").replaceAll("\n", `'"$nl"'`)}'`;
}

interface Request {
  settle: (outcome: CommandOutcome) => void;
  settled: boolean;
  pid?: number;
  killWhenStarted: boolean;
  timer?: NodeJS.Timeout;
}

/** SIGKILL for 9: the shell gives a signal's number only. */
function signalName(n: number): string | undefined {
  return Object.entries(constants.signals).find(([, v]) => v === n)?.[0];
}

export class ForkServer {
  private child: ChildProcess | undefined;
  private dir: string | undefined;
  private buffer = "";
  private stderrTail = "";
  private readonly requests = new Map<number, Request>();
  private readonly freeIds: number[] = [];
  private nextId = 0;

  constructor(private readonly shell: string) {}

  /** The co-process's pid while it runs (the bench adds its CPU to the service's). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /**
   * Runs `argv` (argv[0] looked up in PATH, like spawn) with stdin and stdout at /dev/null; kills
   * it with SIGKILL after `timeoutMs`. Never rejects.
   */
  run(argv: readonly string[], timeoutMs: number): Promise<CommandOutcome> {
    let line: string;
    try {
      line = argv.map(quoteForForkServer).join(" ");
    } catch (err) {
      return Promise.resolve({ kind: "unstartable", reason: (err as Error).message });
    }
    const child = this.child ?? this.start();
    if ("reason" in child) return Promise.resolve({ kind: "unstartable", reason: child.reason });
    const id = this.freeIds.pop() ?? this.nextId++;
    return new Promise((resolve) => {
      const request: Request = { settled: false, killWhenStarted: false, settle: () => undefined };
      request.settle = (outcome) => {
        if (request.settled) return;
        request.settled = true;
        clearTimeout(request.timer);
        resolve(outcome);
      };
      request.timer = setTimeout(() => {
        request.settle({ kind: "timed-out" });
        if (request.pid === undefined) request.killWhenStarted = true;
        else kill(request.pid);
      }, timeoutMs);
      request.timer.unref();
      if (this.requests.size === 0) this.ref(true);
      this.requests.set(id, request);
      child.stdin?.write(`${id} ${line}\n`);
    });
  }

  /** Closes the co-process's stdin and waits for it to exit (it ends its commands still running). */
  async close(): Promise<void> {
    const child = this.child;
    if (!child) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.stdin?.end();
    const timer = setTimeout(() => {
      // It should have exited at EOF at once: end its whole group.
      if (child.pid !== undefined) kill(-child.pid);
    }, 5000);
    await exited;
    clearTimeout(timer);
  }

  private start(): ChildProcess | { reason: string } {
    let dir: string;
    try {
      dir = mkdtempSync(join(tmpdir(), "hive-matrix-restart-"));
    } catch (err) {
      return { reason: `no directory for its stderr (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
    }
    // Detached: its own session, so that at EOF it can end its own process group and nothing else.
    const child = spawn(this.shell, ["-c", SCRIPT, FORK_SERVER_NAME, dir], { stdio: ["pipe", "pipe", "pipe"], detached: true });
    this.child = child;
    this.dir = dir;
    this.buffer = "";
    this.stderrTail = "";
    child.stdout?.setEncoding("utf8");
    child.stdout?.on("data", (chunk: string) => this.onData(chunk));
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL_CHARS);
    });
    // A write after it died fails with EPIPE: its exit, handled below, settles what was pending.
    child.stdin?.on("error", () => undefined);
    child.on("error", (err: NodeJS.ErrnoException) => this.gone(child, `could not be started (${err.code ?? err.message})`));
    child.on("exit", (code, signal) => {
      const why = signal ? `was killed by ${signal}` : `exited with status ${code}`;
      this.gone(child, `${why}${this.stderrTail.trim() ? `: ${this.stderrTail.trim()}` : ""}`);
    });
    this.ref(false);
    return child;
  }

  /** The co-process is gone: what it had not answered fails, and the next command starts a new one. */
  private gone(child: ChildProcess, why: string): void {
    if (this.child !== child) return;
    this.child = undefined;
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
    const pending = [...this.requests.values()];
    this.requests.clear();
    this.freeIds.length = 0;
    this.nextId = 0;
    for (const request of pending) {
      // Its command, if it had started, may still run: it is in the co-process's group, ended below.
      request.settle({ kind: "lost", reason: `the fork server (${this.shell}) ${why}` });
    }
    if (pending.length > 0 && child.pid !== undefined) kill(-child.pid, "SIGTERM");
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    const [idText, kind, value] = line.split(" ");
    const id = Number(idText);
    const request = this.requests.get(id);
    if (!request) return;
    if (kind === "pid") {
      request.pid = Number(value);
      if (request.killWhenStarted) kill(request.pid);
      return;
    }
    if (kind === "missing") {
      this.release(id);
      request.settle({ kind: "not-found" });
      return;
    }
    const status = Number(value);
    if (status === 0 || request.settled) {
      this.release(id);
      request.settle({ kind: "exited", status, stderr: "" });
      return;
    }
    const dir = this.dir;
    void stderrTail(dir === undefined ? undefined : join(dir, String(id))).then((stderr) => {
      // Only now may the id (and so its stderr file) serve another command.
      if (this.dir === dir) this.release(id);
      const signal = status > 128 ? signalName(status - 128) : undefined;
      request.settle(signal ? { kind: "signalled", signal, stderr } : { kind: "exited", status, stderr });
    });
  }

  private release(id: number): void {
    this.requests.delete(id);
    this.freeIds.push(id);
    if (this.requests.size === 0) this.ref(false);
  }

  /**
   * Holds the event loop open while commands run (as a spawned child would), never while idle:
   * a forgotten fork server must not keep a process alive; it exits at that process's exit (EOF).
   */
  private ref(on: boolean): void {
    const child = this.child;
    if (!child) return;
    for (const handle of [child, child.stdin as Socket | null, child.stdout as Socket | null, child.stderr as Socket | null]) {
      if (on) handle?.ref();
      else handle?.unref();
    }
  }
}

function kill(pid: number, signal: NodeJS.Signals = "SIGKILL"): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

/** The last STDERR_TAIL_CHARS characters of `path` (empty when unreadable). */
async function stderrTail(path: string | undefined): Promise<string> {
  if (path === undefined) return "";
  try {
    const file = await open(path, "r");
    try {
      const { size } = await file.stat();
      const length = Math.min(size, STDERR_TAIL_CHARS * 4);
      const { buffer, bytesRead } = await file.read(Buffer.alloc(length), 0, length, size - length);
      return buffer.subarray(0, bytesRead).toString("utf8").slice(-STDERR_TAIL_CHARS);
    } finally {
      await file.close();
    }
  } catch {
    return "";
  }
}
