/**
 * A load generator for the appservice transactions endpoint on loopback: PUT
 * `/_matrix/app/v1/transactions/<txnId>` with the hs_token as a Bearer header, over keep-alive
 * connections. Two shapes: a fixed offered rate (open loop: requests go out on schedule whether or
 * not earlier ones were answered) and saturation (closed loop: `concurrency` requests in flight).
 * Latency is from issuing the request to the end of the response, by process.hrtime.
 */
import { Agent, request } from "node:http";
import { elapsedMs, now, sleep, summarize, type Summary } from "./stats";

export interface Target {
  name: string;
  /** Base URL, e.g. http://127.0.0.1:9010 */
  url: string;
  hsToken: string;
}

export interface LoadResult {
  target: string;
  /** Requests answered 200. */
  ok: number;
  errors: number;
  statuses: Record<string, number>;
  elapsedMs: number;
  txnPerSecond: number;
  eventsPerSecond: number;
  latencyMs: Summary;
  /** Open loop only: how late requests went out against their schedule (the generator's own health). */
  scheduleLagMs?: Summary;
  offeredTxnPerSecond?: number;
}

interface Put {
  status: number;
  ms: number;
}

function put(agent: Agent, target: Target, txnId: string, body: Buffer): Promise<Put> {
  const url = new URL(target.url);
  const started = now();
  return new Promise((resolve) => {
    const req = request(
      {
        host: url.hostname,
        port: url.port,
        method: "PUT",
        path: `/_matrix/app/v1/transactions/${encodeURIComponent(txnId)}`,
        agent,
        headers: { Authorization: `Bearer ${target.hsToken}`, "Content-Type": "application/json", "Content-Length": body.length },
      },
      (res) => {
        res.resume();
        res.once("end", () => resolve({ status: res.statusCode ?? 0, ms: elapsedMs(started) }));
        res.once("error", () => resolve({ status: 0, ms: elapsedMs(started) }));
      },
    );
    req.once("error", () => resolve({ status: 0, ms: elapsedMs(started) }));
    req.end(body);
  });
}

function tally(target: Target, results: Put[], ms: number, eventsPerTxn: number): LoadResult {
  const statuses: Record<string, number> = {};
  const latencies: number[] = [];
  let ok = 0;
  for (const r of results) {
    statuses[String(r.status)] = (statuses[String(r.status)] ?? 0) + 1;
    if (r.status === 200) {
      ok++;
      latencies.push(r.ms);
    }
  }
  return {
    target: target.name,
    ok,
    errors: results.length - ok,
    statuses,
    elapsedMs: ms,
    txnPerSecond: (ok / ms) * 1000,
    eventsPerSecond: ((ok * eventsPerTxn) / ms) * 1000,
    latencyMs: summarize(latencies),
  };
}

export interface FixedRateOptions {
  txnPerSecond: number;
  durationMs: number;
  eventsPerTxn: number;
  txnPrefix: string;
}

/** Open loop at a fixed rate; waits for the last answers before returning. */
export async function fixedRate(target: Target, bodies: readonly Buffer[], options: FixedRateOptions): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: Infinity });
  const interval = 1000 / options.txnPerSecond;
  const total = Math.round((options.durationMs / 1000) * options.txnPerSecond);
  const inflight: Promise<Put>[] = [];
  const lag: number[] = [];
  const start = now();
  try {
    for (let i = 0; i < total; i++) {
      const due = i * interval;
      const wait = due - elapsedMs(start);
      if (wait > 0) await sleep(wait);
      lag.push(Math.max(0, elapsedMs(start) - due));
      inflight.push(put(agent, target, `${options.txnPrefix}-${i}`, bodies[i % bodies.length]));
    }
    const sentMs = elapsedMs(start);
    const results = await Promise.all(inflight);
    const result = tally(target, results, elapsedMs(start), options.eventsPerTxn);
    return { ...result, scheduleLagMs: summarize(lag), offeredTxnPerSecond: (total / sentMs) * 1000 };
  } finally {
    agent.destroy();
  }
}

export interface ClosedLoopOptions {
  concurrency: number;
  durationMs: number;
  eventsPerTxn: number;
  txnPrefix: string;
}

/** Closed loop: `concurrency` workers, each sending its next transaction when the last is answered. */
export async function closedLoop(target: Target, bodies: readonly Buffer[], options: ClosedLoopOptions): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: options.concurrency });
  const results: Put[] = [];
  let next = 0;
  const start = now();
  const worker = async (): Promise<void> => {
    while (elapsedMs(start) < options.durationMs) {
      const i = next++;
      results.push(await put(agent, target, `${options.txnPrefix}-${i}`, bodies[i % bodies.length]));
    }
  };
  try {
    await Promise.all(Array.from({ length: options.concurrency }, worker));
    return tally(target, results, elapsedMs(start), options.eventsPerTxn);
  } finally {
    agent.destroy();
  }
}
