/**
 * How fast this run's disk makes a transaction durable, measured with the durable store's own
 * pattern: one journal line of a transaction's size appended to a file opened with O_DSYNC (the
 * write returns once the data is on disk). With one transaction in flight, as Synapse sends them,
 * every acknowledgement waits for one such write; on a shared machine it varies with what the
 * neighbours write, so the number is part of a run's ingest result.
 */
import { closeSync, constants, mkdirSync, openSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { elapsedMs, now, roundSummary, summarize, type Summary } from "./stats";

export function probeDisk(dir: string, iterations = 300, bytes = 23_000): Summary {
  // A fresh file each time, like the journal after a compaction.
  mkdirSync(dir, { recursive: true });
  const line = Buffer.alloc(bytes, 0x61);
  line[bytes - 1] = 0x0a;
  const fd = openSync(join(dir, "journal"), constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC, 0o600);
  const times: number[] = [];
  try {
    for (let i = 0; i < iterations; i++) {
      const started = now();
      writeSync(fd, line);
      times.push(elapsedMs(started));
    }
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  return roundSummary(summarize(times));
}
