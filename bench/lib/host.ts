/**
 * The bench side of a child process (the service under test or the baseline appservice): spawn it
 * with `node --expose-gc`, wait for it to say it is ready, call it over IPC, stop it. Every child
 * is tracked so that a failing or interrupted run still stops all of them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import type { HostMessage, HostOp, HostReplies, HostRequest, MemorySample } from "./protocol";

const live = new Set<ChildHost>();

export interface SpawnOptions {
  /** A name for messages, e.g. "hive-matrix (ingest)". */
  name: string;
  script: string;
  args: string[];
  /** The child's stdout and stderr are appended here. */
  logFile: string;
  readyTimeoutMs: number;
  /** Extra node flags, e.g. --cpu-prof (see `--profile`). */
  nodeArgs?: string[];
}

export class ChildHost {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (value: unknown) => void; reject: (err: Error) => void }>();
  private exited = false;
  private readonly exit: Promise<void>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    readonly logFile: string,
    readonly ready: { startupMs: number; memory: MemorySample },
    exit: Promise<void>,
  ) {
    this.exit = exit;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  static spawn(options: SpawnOptions): Promise<ChildHost> {
    const out = openSync(options.logFile, "a");
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, ["--expose-gc", ...(options.nodeArgs ?? []), options.script, ...options.args], {
        stdio: ["ignore", out, out, "ipc"],
      });
    } finally {
      closeSync(out);
    }
    let host: ChildHost | undefined;
    const exit = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`${options.name} did not get ready within ${options.readyTimeoutMs} ms (log: ${options.logFile})`));
      }, options.readyTimeoutMs);
      child.on("message", (message: HostMessage) => {
        if (message.kind === "ready" && !host) {
          clearTimeout(timer);
          host = new ChildHost(options.name, child, options.logFile, { startupMs: message.startupMs, memory: message.memory }, exit);
          live.add(host);
          resolve(host);
        } else if (message.kind === "fatal") {
          clearTimeout(timer);
          reject(new Error(`${options.name} failed: ${message.error} (log: ${options.logFile})`));
        } else if (message.kind === "answer") {
          host?.settle(message);
        }
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        if (host) host.exited = true;
        if (host) live.delete(host);
        host?.failPending(`${options.name} exited (${signal ?? `code ${code}`})`);
        if (!host) reject(new Error(`${options.name} exited before it was ready (${signal ?? `code ${code}`}; log: ${options.logFile})`));
      });
    });
  }

  call<K extends HostOp>(request: Extract<HostRequest, { op: K }>, timeoutMs = 600_000): Promise<HostReplies[K]> {
    if (this.exited) return Promise.reject(new Error(`${this.name} is not running`));
    const id = this.nextId++;
    return new Promise<HostReplies[K]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}: ${request.op} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as HostReplies[K]);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      this.child.send({ id, request });
    });
  }

  /** Asks the child to stop; kills it when it does not exit within `graceMs`. */
  async stop(graceMs = 20_000): Promise<void> {
    if (this.exited) return;
    const asked = this.call({ op: "stop" }, graceMs).catch(() => undefined);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    await asked;
    await this.exit;
    clearTimeout(timer);
  }

  private settle(message: Extract<HostMessage, { kind: "answer" }>): void {
    const waiter = this.pending.get(message.id);
    if (!waiter) return;
    this.pending.delete(message.id);
    if (message.ok) waiter.resolve(message.value);
    else waiter.reject(new Error(`${this.name}: ${message.error}`));
  }

  private failPending(reason: string): void {
    for (const waiter of this.pending.values()) waiter.reject(new Error(reason));
    this.pending.clear();
  }
}

/** Stops every child still running (at the end of a run, also a failed or interrupted one). */
export async function stopAllChildren(): Promise<void> {
  await Promise.all([...live].map((host) => host.stop(10_000).catch(() => undefined)));
}
