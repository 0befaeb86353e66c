/**
 * Crash-safe, symlink-safe file writes. The content goes into a temp file created exclusively
 * (O_EXCL | O_NOFOLLOW) in the target's own directory, is fsynced (unless `durable` is false),
 * then renamed over the target.
 * rename(2) replaces a symlink planted at the target instead of following it, so a hostile link
 * in an agent's state dir can never redirect the write; readers see the old or the new file whole.
 */
import { constants, closeSync, fchmodSync, fsyncSync, openSync, renameSync, unlinkSync, write, writeSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { basename, dirname, join } from "node:path";

/** Writes all of `data` at the descriptor's position (a write(2) may take less than asked). */
export function writeAllSync(fd: number, data: Buffer): void {
  for (let offset = 0; offset < data.length;) offset += writeSync(fd, data, offset, data.length - offset);
}

/** writeAllSync on libuv's thread pool: the event loop goes on meanwhile. */
export function writeAll(fd: number, data: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (offset: number): void => {
      write(fd, data, offset, data.length - offset, null, (err, written) => {
        if (err) reject(err);
        else if (offset + written < data.length) step(offset + written);
        else resolve();
      });
    };
    step(0);
  });
}

export interface AtomicWriteOptions {
  /** File mode, applied with fchmod so the umask cannot widen or narrow it. */
  mode?: number;
  /**
   * false: neither the file nor the rename is synced. Readers still see the old or the new file
   * whole, but after a crash of the machine the name may hold the old file, an empty one or none.
   * For files the service re-derives at every start (the agents' token files), where two disk
   * flushes per write would be spent on nothing.
   */
  durable?: boolean;
}

export function writeFileAtomic(path: string, data: string | Buffer, options: AtomicWriteOptions = {}): void {
  const mode = options.mode ?? 0o600;
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.tmp-${randomBytes(6).toString("hex")}`);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  let renamed = false;
  try {
    fchmodSync(fd, mode);
    writeAllSync(fd, typeof data === "string" ? Buffer.from(data, "utf8") : data);
    if (options.durable !== false) fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
    renamed = true;
    if (options.durable !== false) fsyncDir(dir);
  } finally {
    if (!renamed) {
      try {
        closeSync(fd);
      } catch {
        /* already closed */
      }
      try {
        unlinkSync(tmp);
      } catch {
        /* never created or already gone */
      }
    }
  }
}

/** Makes a rename durable: without it a crash can forget the new directory entry. */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(fd);
  } catch {
    // Some filesystems refuse fsync on directories; the rename itself is still atomic.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
