/**
 * A diagnostic ingest target: hive-matrix's appservice HTTP layer (createAppserviceApp, wired as
 * src/service.ts wires it, with the same auth, body limit, validation and metrics) with an
 * in-memory de-duplication set instead of the durable TransactionStore. Comparing it with the real
 * service separates the cost of the HTTP layer from the cost of durability.
 *
 * With `journal`, it is also the least a durable service can do: each transaction's body is
 * appended to that file, opened with O_DSYNC, before the 200; nothing else (no digest, no
 * handling, no done lines). `durable: "serial"` appends on the event loop, the fastest way with
 * one transaction in flight; `durable: "group"` commits in groups, one write at a time on the
 * thread pool with every body queued meanwhile in the next, the first write of a round waiting for
 * the I/O already read (setImmediate), which is how to go fastest with several in flight. What
 * they reach at 1 and at 8 in flight is the bound a durable service is judged against.
 */
import { closeSync, constants, openSync } from "node:fs";
import { createAppserviceApp } from "../../src/appservice/http";
import { createLogger } from "../../src/logging";
import { writeAll, writeAllSync } from "../../src/store/atomic-file";
import { Metrics } from "../../src/metrics";
import { runChild, serveSimpleTarget } from "../lib/child";

export interface HttpOnlyInit {
  port: number;
  hsToken: string;
  /** A file to append each transaction's body to, durably, before answering. */
  journal?: string;
  /** How: on the event loop, or in groups on the thread pool (see above). */
  durable?: "serial" | "group";
}

/** Group commit: bodies queued while a write is under way go out together in the next. */
function groupWriter(fd: number): (data: Buffer) => Promise<void> {
  let queued: Buffer[] = [];
  let waiters: { resolve: () => void; reject: (err: unknown) => void }[] = [];
  let writing = false;
  const flush = (): void => {
    const data = Buffer.concat(queued);
    const settled = waiters;
    queued = [];
    waiters = [];
    const next = (): void => {
      if (queued.length > 0) flush();
      else writing = false;
    };
    writeAll(fd, data).then(
      () => {
        settled.forEach((w) => w.resolve());
        next();
      },
      (err: unknown) => {
        settled.forEach((w) => w.reject(err));
        next();
      },
    );
  };
  return (data) =>
    new Promise((resolve, reject) => {
      queued.push(data);
      waiters.push({ resolve, reject });
      if (!writing) {
        writing = true;
        setImmediate(flush);
      }
    });
}

function main(): void {
  const init = JSON.parse(process.argv[2] ?? "{}") as Partial<HttpOnlyInit>;
  if (!init.port || !init.hsToken) throw new Error('usage: http-only.js \'{"port": ..., "hsToken": ...}\'');
  const port = init.port;
  const { logger } = createLogger({ level: "warn" });
  const metrics = new Metrics({ defaultMetrics: true });
  const seen = new Set<string>();
  const fd =
    init.journal === undefined
      ? undefined
      : openSync(init.journal, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC, 0o600);
  const newline = Buffer.from("\n");
  process.once("exit", () => fd !== undefined && closeSync(fd));
  const grouped = fd !== undefined && init.durable === "group" ? groupWriter(fd) : undefined;
  const app = createAppserviceApp(
    {
      onTransaction: async (txnId, events, raw) => {
        if (seen.has(txnId)) return "duplicate";
        if (fd !== undefined) {
          const data = Buffer.concat([raw ?? Buffer.from(JSON.stringify({ events })), newline]);
          if (grouped) await grouped(data);
          else writeAllSync(fd, data);
        }
        seen.add(txnId);
        return "accepted";
      },
      onUserQuery: async () => false,
      onPing: () => undefined,
      health: () => ({ ready: true }),
      metrics: async () => ({ contentType: metrics.registry.contentType, body: await metrics.registry.metrics() }),
    },
    { hsToken: init.hsToken, maxBodyBytes: 20_000_000, logger, metrics },
  );
  serveSimpleTarget({
    name: "HTTP-only target",
    listen: (onListening) => app.listen(port, "127.0.0.1", onListening),
    describe: () => `${seen.size} transactions`,
    memory: false,
  });
}

runChild(main);
