/**
 * A diagnostic ingest target: hive-matrix's appservice HTTP layer (createAppserviceApp, wired as
 * src/service.ts wires it, with the same auth, body limit, validation and metrics) with an
 * in-memory de-duplication set instead of the durable TransactionStore. Comparing it with the real
 * service separates the cost of the HTTP layer from the cost of durability.
 *
 * With `journal`, it is also the least a durable service can do: each transaction's body is
 * appended to that file, opened with O_DSYNC, on the event loop before the 200; nothing else (no
 * digest, no handling). With one transaction in flight, what it reaches is the serial bound.
 */
import { closeSync, constants, openSync, writeSync } from "node:fs";
import { createAppserviceApp } from "../../src/appservice/http";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { runChild, serveSimpleTarget } from "../lib/child";

export interface HttpOnlyInit {
  port: number;
  hsToken: string;
  /** A file to append each transaction's body to, synchronously and durably, before answering. */
  journal?: string;
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
  const app = createAppserviceApp(
    {
      onTransaction: async (txnId, events, raw) => {
        if (seen.has(txnId)) return "duplicate";
        if (fd !== undefined) {
          const data = Buffer.concat([raw ?? Buffer.from(JSON.stringify({ events })), newline]);
          for (let offset = 0; offset < data.length;) offset += writeSync(fd, data, offset, data.length - offset);
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
