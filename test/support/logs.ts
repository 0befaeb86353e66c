import { Writable } from "node:stream";

/** A log destination that keeps every line, so tests can assert on what the service logged. */
export function captureLogs(): { lines: string[]; destination: Writable } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString("utf8"));
      cb();
    },
  });
  return { lines, destination };
}
