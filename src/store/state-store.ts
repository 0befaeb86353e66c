/**
 * The service's state directory: small named files, each written atomically (0600) in a 0700
 * directory. A file that exists but cannot be parsed is an error naming the file, never a
 * silent reset: losing a room ID or an agent record would create duplicates on the homeserver.
 */
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, accessSync, constants, writeSync } from "node:fs";
import { join } from "node:path";
import type { ZodType } from "zod";
import { writeFileAtomic } from "./atomic-file";

export class StateError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = "StateError";
  }
}

const NAME = /^[A-Za-z0-9._-]+$/;

/** Whether a process with this PID exists (EPERM: it does, but belongs to someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

const lockedInProcess = new Set<string>();

export class StateStore {
  private locked = false;

  constructor(readonly dir: string) {}

  /** Creates the directory (0700) or tightens an existing one, and proves it is writable. */
  init(): void {
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      const st = statSync(this.dir);
      if (!st.isDirectory()) throw new StateError(this.dir, "is not a directory");
      if ((st.mode & 0o077) !== 0) chmodSync(this.dir, 0o700);
      accessSync(this.dir, constants.W_OK | constants.X_OK);
    } catch (err) {
      if (err instanceof StateError) throw err;
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new StateError(this.dir, `state directory is not usable (${code}); it must be a writable directory`);
    }
  }

  /**
   * Claims the directory for this process (`lock`, holding the PID). Two services on one state dir
   * would both provision and both create rooms; a lock left by a dead process is taken over.
   */
  lock(): void {
    const file = join(this.dir, "lock");
    // The PID cannot tell two instances in one process apart (tests, embedders).
    if (lockedInProcess.has(this.dir)) throw new StateError(this.dir, "is in use by another hive-matrix instance in this process");
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
        try {
          writeSync(fd, `${process.pid}\n`);
        } finally {
          closeSync(fd);
        }
        this.locked = true;
        lockedInProcess.add(this.dir);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
          throw new StateError(file, `cannot create the instance lock (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
        }
      }
      let owner = Number.NaN;
      try {
        owner = Number.parseInt(readFileSync(file, "utf8"), 10);
      } catch {
        continue;
      }
      if (Number.isInteger(owner) && owner !== process.pid && processAlive(owner)) {
        throw new StateError(
          this.dir,
          `is in use by another hive-matrix (pid ${owner}); stop it first, or remove ${file} if that process is not hive-matrix`,
        );
      }
      try {
        unlinkSync(file);
      } catch {
        /* removed meanwhile */
      }
    }
    throw new StateError(file, "could not take the instance lock");
  }

  unlock(): void {
    if (!this.locked) return;
    this.locked = false;
    lockedInProcess.delete(this.dir);
    try {
      if (Number.parseInt(readFileSync(join(this.dir, "lock"), "utf8"), 10) === process.pid) unlinkSync(join(this.dir, "lock"));
    } catch {
      /* already gone */
    }
  }

  path(name: string): string {
    if (!NAME.test(name)) throw new Error(`invalid state file name ${JSON.stringify(name)}`);
    return join(this.dir, name);
  }

  /** The file's trimmed text, or undefined when it is missing or empty. */
  readText(name: string): string | undefined {
    const file = this.path(name);
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return undefined;
      throw new StateError(file, `cannot read (${code ?? String(err)})`);
    }
    const trimmed = text.trim();
    return trimmed === "" ? undefined : trimmed;
  }

  writeText(name: string, text: string): void {
    const file = this.path(name);
    try {
      writeFileAtomic(file, text.endsWith("\n") ? text : `${text}\n`, { mode: 0o600 });
    } catch (err) {
      throw new StateError(file, `cannot write (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
  }

  readJson<T>(name: string, schema: ZodType<T>): T | undefined {
    const text = this.readText(name);
    if (text === undefined) return undefined;
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new StateError(this.path(name), "is corrupted (not valid JSON); restore it from a backup or remove it deliberately");
    }
    const parsed = schema.safeParse(raw);
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => `${i.path.join(".") || "(top)"}: ${i.message}`).join("; ");
      throw new StateError(this.path(name), `is corrupted (${why}); restore it from a backup or remove it deliberately`);
    }
    return parsed.data;
  }

  writeJson(name: string, value: unknown): void {
    this.writeText(name, JSON.stringify(value, null, 2));
  }

  remove(name: string): void {
    try {
      unlinkSync(this.path(name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
}
