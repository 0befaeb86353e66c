/**
 * A diagnostic ingest target: hive-matrix's appservice HTTP layer (createAppserviceApp, wired as
 * src/service.ts wires it, with the same auth, body limit, validation and metrics) with an
 * in-memory de-duplication set instead of the durable TransactionStore. Comparing it with the real
 * service separates the cost of the HTTP layer from the cost of durability.
 */
import { createAppserviceApp } from "../../src/appservice/http";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { sampleMemory } from "../lib/memory-sample";
import type { HostEnvelope, HostMessage } from "../lib/protocol";

export interface HttpOnlyInit {
  port: number;
  hsToken: string;
}

function send(message: HostMessage): void {
  process.send?.(message);
}

function main(): void {
  const init = JSON.parse(process.argv[2] ?? "{}") as Partial<HttpOnlyInit>;
  if (!init.port || !init.hsToken) throw new Error('usage: http-only.js \'{"port": ..., "hsToken": ...}\'');
  const { logger } = createLogger({ level: "warn" });
  const metrics = new Metrics({ defaultMetrics: true });
  const seen = new Set<string>();
  const app = createAppserviceApp(
    {
      onTransaction: async (txnId) => {
        if (seen.has(txnId)) return "duplicate";
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
  const started = process.hrtime.bigint();
  const server = app.listen(init.port, "127.0.0.1", () => {
    void sampleMemory().then((memory) => send({ kind: "ready", startupMs: Number(process.hrtime.bigint() - started) / 1e6, memory }));
  });
  process.on("message", (raw: HostEnvelope) => {
    const { id, request } = raw;
    if (request.op === "describe") send({ kind: "answer", id, ok: true, value: { text: `${seen.size} transactions` } });
    else if (request.op === "stop") {
      server.close();
      send({ kind: "answer", id, ok: true, value: { ok: true } });
      setTimeout(() => process.exit(0), 100);
    } else send({ kind: "answer", id, ok: false, error: `the HTTP-only target does not do ${request.op}` });
  });
  process.on("disconnect", () => process.exit(0));
}

try {
  main();
} catch (err) {
  send({ kind: "fatal", error: err instanceof Error ? err.message : String(err) });
  setTimeout(() => process.exit(1), 100);
}
