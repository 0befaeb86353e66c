/**
 * Reading an append-only journal of JSON lines (transactions.journal, agents.journal), the same
 * rule for both: a missing file is empty; every whole line must parse against the schema, or the
 * file is refused as corrupted (StateError, naming the line; the file is left as it is). The last
 * line without its newline is a write a crash cut off (even one that parses: the newline belongs
 * to the same write): nobody was told it was on disk, so it is not returned, and `wholeBytes`
 * tells the caller where the whole lines end, so that the fragment goes before the next append
 * (glued to the next whole line, it would be a corrupted line in the middle of the file).
 */
import { readFileSync } from "node:fs";
import type { z } from "zod";
import { StateError } from "./state-store";

export interface JournalLines<T> {
  entries: T[];
  /** Bytes up to the end of the last whole line; less than the file's size when the tail is torn. */
  wholeBytes: number;
  torn: boolean;
}

export function readJournalLines<S extends z.ZodTypeAny>(path: string, schema: S, corrupted: string): JournalLines<z.infer<S>> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { entries: [], wholeBytes: 0, torn: false };
    throw new StateError(path, `cannot read (${code ?? String(err)})`);
  }
  const wholeBytes = bytes.lastIndexOf(10) + 1;
  const lines = bytes.toString("utf8", 0, wholeBytes).split("\n");
  const entries: z.infer<S>[] = [];
  lines.forEach((line, i) => {
    if (line === "") return;
    let parsed;
    try {
      parsed = schema.safeParse(JSON.parse(line));
    } catch {
      parsed = undefined;
    }
    if (!parsed?.success) throw new StateError(path, `line ${i + 1} is corrupted; ${corrupted}`);
    entries.push(parsed.data);
  });
  return { entries, wholeBytes, torn: wholeBytes < bytes.length };
}
