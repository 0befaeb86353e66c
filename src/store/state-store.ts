/**
 * The service's state directory: small named files, each written atomically (0600) in a 0700
 * directory. A file that exists but cannot be parsed is an error naming the file, never a
 * silent reset: losing a room ID or an agent record would create duplicates on the homeserver.
 */
import { chmodSync, mkdirSync, readFileSync, statSync, unlinkSync, accessSync, constants } from "node:fs";
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

export class StateStore {
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
