/**
 * The ingest baseline: a bare matrix-bot-sdk Appservice with an in-memory store and a no-op
 * handler, in its own process like the service under test. It is not started with `begin()`
 * (that registers the bot on a homeserver); its express app listens directly, which serves the
 * same routes. The SDK's per-request and per-event info lines are turned off, as hive-matrix
 * writes none per transaction either.
 */
import { Appservice, LogLevel, LogService, MemoryStorageProvider } from "matrix-bot-sdk";
import { sampleMemory as memory } from "../lib/memory-sample";
import type { HostEnvelope, HostMessage } from "../lib/protocol";

function send(message: HostMessage): void {
  process.send?.(message);
}

interface BaselineInit {
  port: number;
  hsToken: string;
  asToken: string;
  serverName: string;
}

function main(): void {
  const init = JSON.parse(process.argv[2] ?? "{}") as Partial<BaselineInit>;
  if (!init.port || !init.hsToken || !init.asToken || !init.serverName) throw new Error("usage: baseline-appservice.js '<json init>'");
  LogService.setLevel(LogLevel.WARN);
  const appservice = new Appservice({
    port: init.port,
    bindAddress: "127.0.0.1",
    homeserverName: init.serverName,
    homeserverUrl: "http://127.0.0.1:9", // never contacted: transactions are PUT to it directly
    storage: new MemoryStorageProvider(),
    registration: {
      id: "bench-baseline",
      url: `http://127.0.0.1:${init.port}`,
      as_token: init.asToken,
      hs_token: init.hsToken,
      sender_localpart: "baseline",
      namespaces: { users: [{ exclusive: true, regex: `@baseline-.*:${init.serverName.replace(/\./g, "\\.")}` }], rooms: [], aliases: [] },
      rate_limited: false,
    },
  });
  let events = 0;
  appservice.on("room.event", () => {
    events++;
  });
  const started = process.hrtime.bigint();
  const server = appservice.expressAppInstance.listen(init.port, "127.0.0.1", () => {
    void memory().then((m) => send({ kind: "ready", startupMs: Number(process.hrtime.bigint() - started) / 1e6, memory: m }));
  });
  process.on("message", (raw: HostEnvelope) => {
    const { id, request } = raw;
    if (request.op === "memory") void memory().then((value) => send({ kind: "answer", id, ok: true, value }));
    else if (request.op === "describe") send({ kind: "answer", id, ok: true, value: { text: `${events} events handled` } });
    else if (request.op === "stop") {
      server.close();
      send({ kind: "answer", id, ok: true, value: { ok: true } });
      setTimeout(() => process.exit(0), 100);
    } else send({ kind: "answer", id, ok: false, error: `the baseline appservice does not do ${request.op}` });
  });
  process.on("disconnect", () => process.exit(0));
}

try {
  main();
} catch (err) {
  send({ kind: "fatal", error: err instanceof Error ? err.message : String(err) });
  setTimeout(() => process.exit(1), 100);
}
