/**
 * A hive-matrix service in its own process, driven by the bench over IPC (see bench/lib/protocol.ts),
 * so that the load generator and the bench's own memory do not share its event loop or its heap.
 * Run as plain JavaScript with `node --expose-gc` (see bench/lib/build.ts).
 */
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import pino from "pino";
import { parseConfig } from "../../src/config/load";
import { createLogger } from "../../src/logging";
import { loadRegistration } from "../../src/registration";
import { desiredRoom } from "../../src/rooms/desired";
import { ROOM_KEYS, type ReconcileReport } from "../../src/rooms/types";
import { HiveMatrixService } from "../../src/service";
import { sampleMemory as memory } from "../lib/memory-sample";
import { runChild, send } from "../lib/child";
import type { AgentWait, HostEnvelope, HostReplies, HostRequest, RequestSnapshot } from "../lib/protocol";

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function snapshot(service: HiveMatrixService): Promise<RequestSnapshot> {
  const requests = await service.metrics.homeserverRequests.get();
  const writes = await service.metrics.homeserverWrites.get();
  const latency = await service.metrics.homeserverLatency.get();
  const strip = (labels: Record<string, string | number | undefined>): Record<string, string> =>
    Object.fromEntries(
      Object.entries(labels)
        .filter(([k, v]) => v !== undefined && k !== "le")
        .map(([k, v]) => [k, String(v)]),
    );
  return {
    requests: requests.values.map((v) => ({ labels: strip(v.labels), value: v.value })),
    writes: writes.values.map((v) => ({ labels: strip(v.labels), value: v.value })),
    latencySum: latency.values.filter((v) => v.metricName?.endsWith("_sum")).map((v) => ({ labels: strip(v.labels), value: v.value })),
    latencyCount: latency.values.filter((v) => v.metricName?.endsWith("_count")).map((v) => ({ labels: strip(v.labels), value: v.value })),
    reconcileRuns: service.roomsLoop.runs,
  };
}

/** What re-applying the whole desired state without reading the rooms first would write. */
function blindWrites(service: HiveMatrixService, report: ReconcileReport): number {
  if (!report.spaceId || !report.chatId) return 0;
  const inputs = { botUserId: service.botUserId, members: service.agents.membership(), spaceId: report.spaceId, chatId: report.chatId };
  let writes = 0;
  for (const key of ROOM_KEYS) {
    const room = desiredRoom(key, service.config, inputs);
    writes += room.state.length + (room.alias ? 1 : 0) + room.members.agents.length * 2 + room.members.operators.length;
  }
  return writes;
}

async function waitAgents(service: HiveMatrixService, request: Extract<HostRequest, { op: "waitAgents" }>): Promise<AgentWait> {
  const deadline = Date.now() + request.timeoutMs;
  const goal = request.until === "joined" ? ["joined"] : ["token_written", "joined"];
  const stateOf = (name: string): string => service.agents.records.get(name)?.state ?? "unknown";
  // A timer that polls wakes the service's event loop, and every wake-up costs the service CPU that
  // the onboarding is charged with (≈ 0.2 ms on a small VM). So the wait looks only when the
  // service says an agent moved (onboarded, joined, failed: inside a wake-up it makes anyway) and,
  // to miss nothing, every few seconds. Only the agents not there yet are looked at (an agent does
  // not leave its goal during a bench), in order, up to the first one still on its way (agents get
  // there roughly in order); every look on the timer goes through all of them, to see if the rest failed.
  const waiting = new Set(request.names);
  const look = (full: boolean): boolean => {
    let failed = 0;
    for (const name of waiting) {
      const state = stateOf(name);
      if (goal.includes(state)) waiting.delete(name);
      else if (state === "failed") failed++;
      else if (!full) break;
    }
    return waiting.size === 0 || (full && failed === waiting.size);
  };
  let settled = look(true);
  if (!settled) {
    settled = await new Promise<boolean>((resolve) => {
      const events = ["onboarded", "joined", "failed"] as const;
      const finish = (result: boolean): void => {
        clearInterval(timer);
        for (const event of events) service.agents.off(event, onMove);
        resolve(result);
      };
      // Looked at once the event's own work is through (the state it announces is set by then).
      let queued = false;
      const onMove = (): void => {
        if (queued) return;
        queued = true;
        queueMicrotask(() => {
          queued = false;
          if (look(false)) finish(true);
        });
      };
      const timer = setInterval(() => {
        if (look(true)) finish(true);
        else if (Date.now() > deadline) finish(false);
      }, 2000);
      for (const event of events) service.agents.on(event, onMove);
    });
  }
  const timedOut = !settled;
  if (settled) await service.agents.idle();
  const states: Record<string, number> = {};
  const reasons: string[] = [];
  let done = 0;
  let failed = 0;
  for (const name of request.names) {
    const state = stateOf(name);
    states[state] = (states[state] ?? 0) + 1;
    if (goal.includes(state)) done++;
    if (state === "failed") {
      failed++;
      const reason = service.agents.records.get(name)?.reason;
      if (reasons.length < 5 && reason) reasons.push(`${name}: ${reason}`);
    }
  }
  return { states, done, failed, reasons, timedOut };
}

/** Total requests the service has made to the homeserver so far. */
async function requestTotal(service: HiveMatrixService): Promise<number> {
  return (await service.metrics.homeserverRequests.get()).values.reduce((sum, v) => sum + v.value, 0);
}

async function quiet(service: HiveMatrixService, request: Extract<HostRequest, { op: "quiet" }>): Promise<HostReplies["quiet"]> {
  const deadline = Date.now() + request.timeoutMs;
  let lastActivity = performance.now();
  let lastTotal = await requestTotal(service);
  for (;;) {
    await sleep(25);
    const total = await requestTotal(service);
    const queued = (await service.metrics.eventQueue.get()).values[0]?.value ?? 0;
    const agentsIdle = await Promise.race([service.agents.idle().then(() => true), sleep(0).then(() => false)]);
    const busy = total !== lastTotal || queued > 0 || service.roomsLoop.running || service.roomsLoop.waiting || !agentsIdle;
    lastTotal = total;
    if (busy) lastActivity = performance.now();
    else if (performance.now() - lastActivity >= request.quietMs) return { quietForMs: performance.now() - lastActivity, timedOut: false };
    if (Date.now() > deadline) return { quietForMs: performance.now() - lastActivity, timedOut: true };
  }
}

/** Rooms agents open with each other, as the Space's map sees them (see the `hiveRooms` op). */
async function hiveRooms(
  service: HiveMatrixService,
  request: Extract<HostRequest, { op: "hiveRooms" }>,
): Promise<{ listed: number; ms: number }> {
  const started = Date.now();
  const userOf = (name: string): string => service.agents.userId(name);
  const cs = "/_matrix/client/v3";
  let next = 0;
  const created: string[] = [];
  const worker = async (): Promise<void> => {
    while (next < request.count) {
      const i = next++;
      const [a, b] = [request.agents[i % request.agents.length], request.agents[(i + 1) % request.agents.length]];
      const { room_id } = await service.transport.request<{ room_id: string }>("POST", `${cs}/createRoom`, {
        asUser: userOf(a),
        body: { name: `bench room ${i}`, invite: [userOf(b)] },
      });
      await service.transport.request("POST", `${cs}/join/${encodeURIComponent(room_id)}`, { asUser: userOf(b), body: {} });
      created.push(room_id);
    }
  };
  await Promise.all(Array.from({ length: 4 }, worker));
  const deadline = started + request.timeoutMs;
  for (;;) {
    await service.hiveRooms.idle();
    const listed = new Set(service.hiveRooms.children().listed);
    const done = created.filter((id) => listed.has(id)).length;
    if (done === created.length || Date.now() > deadline) return { listed: done, ms: Date.now() - started };
    await sleep(100);
  }
}

async function answer(service: HiveMatrixService, request: HostRequest): Promise<HostReplies[HostRequest["op"]]> {
  switch (request.op) {
    case "rescan":
      service.agents.rescan();
      return { ok: true };
    case "waitAgents":
      return waitAgents(service, request);
    case "requests":
      return snapshot(service);
    case "memory":
      return memory();
    case "reconcile": {
      const started = process.hrtime.bigint();
      // Through the service's loop, as `!hive sync` does: runs are serialised and the agents learn what was applied.
      const report = await service.roomsLoop.trigger(request.reason);
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      if (!report) throw new Error("the reconcile did not run (the loop is stopping)");
      return {
        changes: report.changes,
        problems: report.problems,
        writes: report.writes,
        durationMs,
        blindWrites: blindWrites(service, report),
      };
    }
    case "hiveRooms":
      return hiveRooms(service, request);
    case "controlRoom": {
      const deadline = Date.now() + request.timeoutMs;
      for (;;) {
        const roomId = service.control.roomId;
        if (roomId) return { roomId };
        if (Date.now() > deadline) throw new Error(`the control room was not set up within ${request.timeoutMs} ms`);
        await sleep(50);
      }
    }
    case "describe": {
      const counts = await service.metrics.transactions.get();
      const text = counts.values.map((v) => `${v.value} ${String(v.labels.result)}`).join(", ") || "no transactions";
      // Transactions and done lines share the journal's writes: fewer writes than transactions is group commit at work.
      const { flushes, flushMs, syncFlushes } = service.transactions;
      return {
        text:
          `${text}; ${flushes} journal writes (${syncFlushes} of them on the event loop), ` +
          `${flushes ? Math.round((flushMs / flushes) * 1000) / 1000 : 0} ms each on average (write to the disk's acknowledgement, as the service saw it)`,
      };
    }
    case "drain": {
      const started = process.hrtime.bigint();
      const queued = (await service.metrics.eventQueue.get()).values[0]?.value ?? 0;
      await service.events.idle();
      return {
        queued,
        ms: Number(process.hrtime.bigint() - started) / 1e6,
        journal: {
          flushes: service.transactions.flushes,
          flushMs: service.transactions.flushMs,
          syncFlushes: service.transactions.syncFlushes,
        },
        // Cumulative: the bench takes differences between phases.
        eventLoopActiveMs: performance.eventLoopUtilization().active,
      };
    }
    case "quiet":
      return quiet(service, request);
    case "stop":
      await service.stop();
      return { ok: true };
  }
}

async function main(): Promise<void> {
  const init = JSON.parse(process.argv[2] ?? "{}") as { configPath?: string; logFile?: string };
  if (!init.configPath || !init.logFile) throw new Error('usage: service-host.js \'{"configPath": ..., "logFile": ...}\'');
  const config = parseConfig(JSON.parse(readFileSync(init.configPath, "utf8")), init.configPath);
  const registration = loadRegistration(config.appservice.registration);
  // As deployed: the CLI logs through pino's own destination (to stdout, synchronous), not a node stream.
  const destination = pino.destination({ dest: init.logFile, append: true, sync: true });
  const { logger, scrubber } = createLogger({ level: config.logging.level, destination: destination as unknown as NodeJS.WritableStream });
  const service = new HiveMatrixService({ config, registration, logger, scrubber });
  let stopping = false;
  process.on("message", (raw: HostEnvelope) => {
    if (raw.request.op === "stop") stopping = true;
    answer(service, raw.request).then(
      (value) => {
        send({ kind: "answer", id: raw.id, ok: true, value });
        if (raw.request.op === "stop")
          setTimeout(() => {
            destination.flushSync();
            process.exit(0);
          }, 100);
      },
      (err: unknown) => send({ kind: "answer", id: raw.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
    );
  });
  // The bench went away: stop cleanly rather than linger.
  process.on("disconnect", () => {
    if (stopping) return;
    void service.stop().finally(() => {
      destination.flushSync();
      process.exit(0);
    });
  });
  const started = process.hrtime.bigint();
  await service.start();
  send({ kind: "ready", startupMs: Number(process.hrtime.bigint() - started) / 1e6, memory: await memory() });
}

runChild(main);
