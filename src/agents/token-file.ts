/**
 * The agent's `<agent-state>/matrix-token`: one line, mode 0600, a regular file. The agent dir is
 * writable by the agent, so everything here assumes a hostile tenant: a symlink or hardlink planted
 * at the token path is never followed, read through or chmod-ed, and a symlinked state dir is refused.
 */
import { constants, closeSync, fchmodSync, fstatSync, lstatSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../store/atomic-file";

export const TOKEN_FILE = "matrix-token";
const MAX_TOKEN_BYTES = 4096;

export type StateDirStatus = { ok: true } | { ok: false; missing: boolean; reason: string };

/** The agent's state dir must be a real directory, and so must its parent: a symlink could point the write anywhere. */
export function checkStateDir(stateRoot: string, name: string): StateDirStatus {
  const agentDir = join(stateRoot, name);
  for (const dir of [agentDir, join(agentDir, "state")]) {
    let st;
    try {
      st = lstatSync(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return { ok: false, missing: true, reason: `${dir} does not exist` };
      return { ok: false, missing: false, reason: `${dir} cannot be inspected (${code ?? String(err)})` };
    }
    if (st.isSymbolicLink()) return { ok: false, missing: false, reason: `${dir} is a symlink; refusing to write through it` };
    if (!st.isDirectory()) return { ok: false, missing: false, reason: `${dir} is not a directory` };
  }
  return { ok: true };
}

export type TokenFileRead =
  | { kind: "token"; token: string }
  | { kind: "missing" }
  /** Something is at the path that must not be trusted (symlink, hardlink, not a regular file, garbage). */
  | { kind: "unsafe"; reason: string };

export function tokenFilePath(stateDir: string): string {
  return join(stateDir, TOKEN_FILE);
}

/**
 * Reads the token without following a symlink (O_NOFOLLOW) and refuses hardlinks: a hardlink to
 * another file would make us send that file's content to the homeserver as a token. A valid file
 * with a wrong mode is tightened through the already-open descriptor.
 */
export function readTokenFile(stateDir: string): TokenFileRead {
  const path = tokenFilePath(stateDir);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { kind: "missing" };
    if (code === "ELOOP") return { kind: "unsafe", reason: "is a symlink" };
    return { kind: "unsafe", reason: `cannot be opened (${code ?? String(err)})` };
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return { kind: "unsafe", reason: "is not a regular file" };
    if (st.nlink > 1) return { kind: "unsafe", reason: "has other hard links" };
    if (st.size > MAX_TOKEN_BYTES) return { kind: "unsafe", reason: "is too large to be a token" };
    const buffer = Buffer.alloc(st.size);
    let offset = 0;
    while (offset < buffer.length) {
      const n = readSync(fd, buffer, offset, buffer.length - offset, offset);
      if (n === 0) break;
      offset += n;
    }
    const token = buffer.subarray(0, offset).toString("utf8").trim();
    if (token === "" || /\s/.test(token)) return { kind: "unsafe", reason: "does not hold exactly one token" };
    if ((st.mode & 0o777) !== 0o600) fchmodSync(fd, 0o600);
    return { kind: "token", token };
  } finally {
    closeSync(fd);
  }
}

/** One line, 0600, through an exclusively created temp file and a rename (see writeFileAtomic). */
export function writeTokenFile(stateDir: string, token: string): void {
  writeFileAtomic(tokenFilePath(stateDir), `${token}\n`, { mode: 0o600 });
}
