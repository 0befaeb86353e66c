/** Requests the service made to the homeserver between two metric snapshots, by method and route. */
import type { CounterSample, RequestSnapshot } from "./protocol";
import { round } from "./stats";

export interface RouteProfile {
  method: string;
  route: string;
  count: number;
  /** Mean latency in ms (retries included), when the histogram has it. */
  meanMs: number | null;
}

export interface RequestDiff {
  total: number;
  /** GET requests. */
  reads: number;
  /** Every other method. */
  writes: number;
  byMethod: Record<string, number>;
  /** Answers that were not 2xx (errors the service expected, like M_USER_IN_USE, included). */
  nonSuccess: number;
  routes: RouteProfile[];
  /** Runs of the rooms reconcile loop in between. */
  reconcileRuns: number;
  /** The service's own count of state-changing requests (`homeserverWrites`), by kind. */
  writesByKind: Record<string, number>;
}

function key(labels: Record<string, string>, names: readonly string[]): string {
  return names.map((n) => labels[n] ?? "").join(" ");
}

function diffCounters(
  before: CounterSample[],
  after: CounterSample[],
  names: readonly string[],
): Map<string, { labels: Record<string, string>; value: number }> {
  const base = new Map(before.map((s) => [key(s.labels, names), s.value]));
  const out = new Map<string, { labels: Record<string, string>; value: number }>();
  for (const s of after) {
    const k = key(s.labels, names);
    const value = s.value - (base.get(k) ?? 0);
    if (value > 0) out.set(k, { labels: s.labels, value });
  }
  return out;
}

export function diffRequests(before: RequestSnapshot, after: RequestSnapshot): RequestDiff {
  const requests = diffCounters(before.requests, after.requests, ["method", "route", "outcome"]);
  const sums = diffCounters(before.latencySum, after.latencySum, ["method", "route"]);
  const counts = diffCounters(before.latencyCount, after.latencyCount, ["method", "route"]);
  const byMethod: Record<string, number> = {};
  const byRoute = new Map<string, RouteProfile>();
  let total = 0;
  let nonSuccess = 0;
  for (const { labels, value } of requests.values()) {
    const method = labels.method ?? "?";
    total += value;
    byMethod[method] = (byMethod[method] ?? 0) + value;
    if (!/^2\d\d$/.test(labels.outcome ?? "")) nonSuccess += value;
    const k = key(labels, ["method", "route"]);
    const sum = sums.get(k)?.value;
    const count = counts.get(k)?.value;
    const entry = byRoute.get(k) ?? {
      method,
      route: labels.route ?? "?",
      count: 0,
      meanMs: sum !== undefined && count ? round((sum / count) * 1000) : null,
    };
    entry.count += value;
    byRoute.set(k, entry);
  }
  const reads = byMethod.GET ?? 0;
  return {
    total,
    reads,
    writes: total - reads,
    byMethod,
    nonSuccess,
    routes: [...byRoute.values()].sort((a, b) => b.count - a.count),
    reconcileRuns: after.reconcileRuns - before.reconcileRuns,
    writesByKind: Object.fromEntries(
      [...diffCounters(before.writes, after.writes, ["kind"]).values()].map((w) => [w.labels.kind ?? "?", w.value]),
    ),
  };
}

/**
 * The most frequent routes of `requests` as one line for a scenario's notes, with their count per
 * agent (`n` agents; 1 gives plain counts) and, with `withMean`, their mean latency.
 */
export function routesLine(requests: RequestDiff, n: number, withMean = false): string {
  return (
    requests.routes
      .slice(0, 8)
      .map((r) => `${r.method} ${r.route} ${round(r.count / n)}${withMean && r.meanMs !== null ? ` (mean ${r.meanMs} ms)` : ""}`)
      .join(", ") || "none"
  );
}
