/**
 * The ingest baseline: a bare matrix-bot-sdk Appservice with an in-memory store and a no-op
 * handler, in its own process like the service under test. It is not started with `begin()`
 * (that registers the bot on a homeserver); its express app listens directly, which serves the
 * same routes. The SDK's per-request and per-event info lines are turned off, as hive-matrix
 * writes none per transaction either.
 */
import { Appservice, LogLevel, LogService, MemoryStorageProvider } from "matrix-bot-sdk";
import { runChild, serveSimpleTarget } from "../lib/child";

interface BaselineInit {
  port: number;
  hsToken: string;
  asToken: string;
  serverName: string;
}

function main(): void {
  const init = JSON.parse(process.argv[2] ?? "{}") as Partial<BaselineInit>;
  if (!init.port || !init.hsToken || !init.asToken || !init.serverName) throw new Error("usage: baseline-appservice.js '<json init>'");
  const port = init.port;
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
  serveSimpleTarget({
    name: "baseline appservice",
    listen: (onListening) => appservice.expressAppInstance.listen(port, "127.0.0.1", onListening),
    describe: () => `${events} events handled`,
    memory: true,
  });
}

runChild(main);
