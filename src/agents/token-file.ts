/**
 * The agent's `<agent-state>/matrix-token`: one line, mode 0600, a regular file. The agent dir is
 * writable by the agent, so everything here assumes a hostile tenant that swaps names under us
 * while we work: checking a path and then using it by name is a race the tenant wins.
 *
 * So every read and write is anchored to a directory handle: `<stateRoot>/<name>` and its `state`
 * are opened one component at a time with O_DIRECTORY|O_NOFOLLOW, each relative to the handle of
 * its parent, and files are then reached as `/proc/self/fd/<fd>/<file>`. The kernel resolves such
 * a path from the directory the descriptor holds, whatever its name points to by now, so a
 * symlink swapped in after the open cannot redirect anything. Node has no openat(2); the /proc
 * path is how Linux offers the same. Each handle is re-checked (device and inode of the /proc path
 * against fstat of the descriptor), so a missing /proc fails closed instead of resolving elsewhere.
 * A symlink or hardlink planted at the token path itself is never followed, read through or chmod-ed.
 */
import { accessSync, constants, closeSync, fchmodSync, fstatSync, lstatSync, openSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../store/atomic-file";

export const TOKEN_FILE = "matrix-token";
const MAX_TOKEN_BYTES = 4096;
const DIR_FLAGS = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

export type StateDirStatus = { ok: true } | { ok: false; missing: boolean; denied: boolean; reason: string };

/**
 * The agent's state dir is refused: missing, a symlink, not a directory, or not anchorable; or
 * `denied`: hive-matrix may not enter or write it (yet). Under the NixOS module the service runs
 * unprivileged and an agent dir's ACL is granted a moment after the dir appears, so a denial is
 * something to wait for, not a verdict.
 */
export class StateDirError extends Error {
  constructor(
    readonly missing: boolean,
    readonly reason: string,
    readonly denied = false,
  ) {
    super(reason);
    this.name = "StateDirError";
  }
}

function isDenial(code: string | undefined): boolean {
  return code === "EACCES" || code === "EPERM";
}

function fdPath(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

/** Fails closed when `/proc/self/fd/<fd>` is not the descriptor's own directory (no procfs, or not Linux). */
function verifyAnchor(fd: number, shown: string): void {
  const held = fstatSync(fd);
  let seen;
  try {
    seen = statSync(fdPath(fd));
  } catch (err) {
    throw new StateDirError(
      false,
      `${shown} cannot be anchored: ${fdPath(fd)} is unavailable (${(err as NodeJS.ErrnoException).code ?? String(err)}); /proc must be mounted`,
    );
  }
  if (!held.isDirectory() || seen.dev !== held.dev || seen.ino !== held.ino) {
    throw new StateDirError(false, `${shown} cannot be anchored: ${fdPath(fd)} does not resolve to the opened directory`);
  }
}

/** Opens `component` inside the directory held by `parentFd`, never following a link at it. */
function openChild(parentFd: number, component: string, shown: string): number {
  let fd: number;
  try {
    fd = openSync(`${fdPath(parentFd)}/${component}`, DIR_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new StateDirError(true, `${shown} does not exist`);
    if (code === "ELOOP" || code === "ENOTDIR") {
      // Only for the message; the decision was the kernel's. What is there now may differ already.
      let now: "link" | "file" | "other" = "other";
      try {
        const st = lstatSync(`${fdPath(parentFd)}/${component}`);
        now = st.isSymbolicLink() ? "link" : st.isDirectory() ? "other" : "file";
      } catch {
        /* gone meanwhile */
      }
      const why =
        now === "link"
          ? "is a symlink"
          : now === "file"
            ? "is not a directory"
            : "was a symlink or not a directory when opened (it is being swapped)";
      throw new StateDirError(false, `${shown} ${why}; refusing to write through it`);
    }
    throw new StateDirError(false, `${shown} cannot be opened (${code ?? String(err)})`, isDenial(code));
  }
  try {
    verifyAnchor(fd, shown);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return fd;
}

/**
 * Runs `fn` with a path that names `<stateRoot>/<name>/state` through a descriptor: everything
 * `fn` does below that path stays in that directory even if the tenant swaps any name meanwhile.
 * Throws StateDirError when the dir is missing, a symlink (at either level) or not a directory.
 */
export function withStateDir<T>(stateRoot: string, name: string, fn: (dir: string) => T): T {
  // Names are validated long before; this module still never lets one step outside stateRoot.
  if (name === "" || name === "." || name === ".." || /[/\0]/.test(name)) {
    throw new StateDirError(false, `${JSON.stringify(name)} is not a single directory name`);
  }
  const agentShown = join(stateRoot, name);
  const stateShown = join(agentShown, "state");
  const fds: number[] = [];
  try {
    let rootFd: number;
    try {
      // stateRoot itself is the administrator's (it may be a symlink to a volume): followed.
      rootFd = openSync(stateRoot, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new StateDirError(code === "ENOENT", `${stateRoot} cannot be opened (${code ?? String(err)})`);
    }
    fds.push(rootFd);
    verifyAnchor(rootFd, stateRoot);
    const agentFd = openChild(rootFd, name, agentShown);
    fds.push(agentFd);
    const stateFd = openChild(agentFd, "state", stateShown);
    fds.push(stateFd);
    return fn(fdPath(stateFd));
  } finally {
    for (const fd of fds.reverse()) closeSync(fd);
  }
}

/**
 * Whether `<stateRoot>/<name>/state` can be used: a real directory inside a real agent dir, which
 * hive-matrix may write. Checked before any homeserver call, so that an account is never logged
 * out for a token that could not be written.
 */
export function checkStateDir(stateRoot: string, name: string): StateDirStatus {
  try {
    return withStateDir(stateRoot, name, (dir) => {
      try {
        accessSync(dir, constants.W_OK | constants.X_OK);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new StateDirError(
          false,
          `${join(stateRoot, name, "state")} is not writable by hive-matrix (${code ?? String(err)})`,
          isDenial(code),
        );
      }
      return { ok: true } as const;
    });
  } catch (err) {
    if (err instanceof StateDirError) return { ok: false, missing: err.missing, denied: err.denied, reason: err.reason };
    throw err;
  }
}

export type TokenFileRead =
  | { kind: "token"; token: string }
  | { kind: "missing" }
  /** Something is at the path that must not be trusted (symlink, hardlink, not a regular file, garbage). */
  | { kind: "unsafe"; reason: string };

/**
 * Reads the agent's token without following a symlink (O_NOFOLLOW) and refuses hardlinks: a
 * hardlink to another file would make us send that file's content to the homeserver as a token.
 * A valid file with a wrong mode is tightened through the already-open descriptor. A state dir
 * that cannot be used reads as "missing" when absent and "unsafe" otherwise.
 */
export function readTokenFile(stateRoot: string, name: string): TokenFileRead {
  try {
    return withStateDir(stateRoot, name, (dir) => readTokenIn(dir));
  } catch (err) {
    if (!(err instanceof StateDirError)) throw err;
    return err.missing ? { kind: "missing" } : { kind: "unsafe", reason: err.reason };
  }
}

function readTokenIn(dir: string): TokenFileRead {
  let fd: number;
  try {
    fd = openSync(join(dir, TOKEN_FILE), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
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
    if ((st.mode & 0o777) !== 0o600) {
      try {
        fchmodSync(fd, 0o600);
      } catch (err) {
        // Not ours to tighten (another owner): not trusted either; a fresh file of ours replaces it.
        return {
          kind: "unsafe",
          reason: `has mode ${(st.mode & 0o777).toString(8)} and cannot be made 0600 (${(err as NodeJS.ErrnoException).code ?? String(err)})`,
        };
      }
    }
    return { kind: "token", token };
  } finally {
    closeSync(fd);
  }
}

/**
 * One line, 0600, through an exclusively created temp file and a rename (see writeFileAtomic),
 * all inside the anchored state dir; the temp file is removed on every failure. Throws
 * StateDirError (nothing written) when the state dir cannot be used.
 *
 * Not synced to disk: every start checks each agent's token file against the homeserver and
 * writes a new one where it is missing, empty or not valid, so a crash of the machine right after
 * a write costs the agent one more token at the next start, never its access. Syncing would cost
 * two disk flushes per agent onboarded.
 */
export function writeTokenFile(stateRoot: string, name: string, token: string): void {
  withStateDir(stateRoot, name, (dir) => writeFileAtomic(join(dir, TOKEN_FILE), `${token}\n`, { mode: 0o600, durable: false }));
}

/** What `!hive agent info` shows, looked at through the anchored dir: no state dir, a regular token file, or none. */
export function tokenFileStatus(stateRoot: string, name: string): "none" | "ok" | "missing" {
  try {
    return withStateDir(stateRoot, name, (dir) => {
      try {
        return lstatSync(join(dir, TOKEN_FILE)).isFile() ? "ok" : "missing";
      } catch {
        return "missing";
      }
    });
  } catch (err) {
    if (err instanceof StateDirError) return "none";
    throw err;
  }
}
