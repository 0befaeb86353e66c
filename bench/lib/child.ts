/**
 * The child side of the bench's IPC (bench/lib/protocol.ts): sending messages, reporting a fatal
 * start-up error, and the request loop of the simple HTTP targets (the baseline appservice and the
 * HTTP-only diagnostic), which only describe themselves, sample memory and stop.
 */
import type { Server } from "node:http";
import { sampleMemory } from "./memory-sample";
import type { HostEnvelope, HostMessage } from "./protocol";

export function send(message: HostMessage): void {
  process.send?.(message);
}

/** Runs the child's main; an error in it is reported to the bench as fatal and ends the process. */
export function runChild(main: () => void | Promise<void>): void {
  const fatal = (err: unknown): void => {
    send({ kind: "fatal", error: err instanceof Error ? err.message : String(err) });
    setTimeout(() => process.exit(1), 100);
  };
  try {
    void Promise.resolve(main()).catch(fatal);
  } catch (err) {
    fatal(err);
  }
}

export interface SimpleTarget {
  /** Named in the answer to a request the target does not serve. */
  name: string;
  /** Starts listening; calls `onListening` once it does. */
  listen(onListening: () => void): Server;
  describe(): string;
  /** Whether the target answers "memory" requests. */
  memory: boolean;
}

/** Listens, says "ready" with a memory sample, then answers the bench until told to stop. */
export function serveSimpleTarget(target: SimpleTarget): void {
  const started = process.hrtime.bigint();
  const server = target.listen(() => {
    void sampleMemory().then((memory) => send({ kind: "ready", startupMs: Number(process.hrtime.bigint() - started) / 1e6, memory }));
  });
  process.on("message", (raw: HostEnvelope) => {
    const { id, request } = raw;
    if (request.op === "memory" && target.memory) void sampleMemory().then((value) => send({ kind: "answer", id, ok: true, value }));
    else if (request.op === "describe") send({ kind: "answer", id, ok: true, value: { text: target.describe() } });
    else if (request.op === "stop") {
      server.close();
      send({ kind: "answer", id, ok: true, value: { ok: true } });
      setTimeout(() => process.exit(0), 100);
    } else send({ kind: "answer", id, ok: false, error: `the ${target.name} does not do ${request.op}` });
  });
  process.on("disconnect", () => process.exit(0));
}
