/** Prometheus metrics. One registry per service instance, so several instances in a test process do not collide. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

/** A counter's current values by one of its labels, e.g. `{ accepted: 3, duplicate: 1 }`. */
export async function countsBy<L extends string>(counter: Counter<L>, label: L): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const { labels, value } of (await counter.get()).values) {
    const key = String(labels[label] ?? "");
    counts[key] = (counts[key] ?? 0) + value;
  }
  return counts;
}

/**
 * Event types counted under their own label. Anyone in a room the bot shares can send events of
 * any type, and each label value is a series kept forever: every other type counts as "other".
 */
const EVENT_TYPE_LABELS: ReadonlySet<string> = new Set([
  "m.room.message",
  "m.room.encrypted",
  "m.room.member",
  "m.room.create",
  "m.room.power_levels",
  "m.room.join_rules",
  "m.room.name",
  "m.room.topic",
  "m.room.avatar",
  "m.room.guest_access",
  "m.room.history_visibility",
  "m.room.canonical_alias",
  "m.room.encryption",
  "m.room.redaction",
  "m.room.pinned_events",
  "m.room.server_acl",
  "m.room.tombstone",
  "m.space.child",
  "m.space.parent",
  "m.reaction",
  "m.sticker",
]);

export function eventTypeLabel(type: string): string {
  return EVENT_TYPE_LABELS.has(type) ? type : "other";
}

export class Metrics {
  readonly registry = new Registry();

  readonly homeserverRequests = new Counter({
    name: "hive_matrix_homeserver_requests_total",
    help: "Requests to the homeserver by method, route and outcome (status code, or 'network').",
    labelNames: ["method", "route", "outcome"] as const,
    registers: [this.registry],
  });

  readonly homeserverWrites = new Counter({
    name: "hive_matrix_homeserver_writes_total",
    help: "State-changing requests to the homeserver by kind.",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });

  readonly homeserverLatency = new Histogram({
    name: "hive_matrix_homeserver_request_seconds",
    help: "Latency of requests to the homeserver, retries included.",
    labelNames: ["method", "route"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  readonly homeserverRetries = new Counter({
    name: "hive_matrix_homeserver_retries_total",
    help: "Retried homeserver requests by reason (network, 5xx, 429).",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });

  readonly transactions = new Counter({
    name: "hive_matrix_transactions_total",
    help:
      "Transactions received from the homeserver by result: accepted, reused_id (a known ID with other events, handled as new), " +
      "duplicate (a replay, not handled again), rejected (malformed or too large, refused), unauthorized.",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });

  readonly events = new Counter({
    name: "hive_matrix_events_total",
    help: "Events received in transactions, by type (well-known types; every other type is 'other').",
    labelNames: ["type"] as const,
    registers: [this.registry],
  });

  readonly eventsDropped = new Counter({
    name: "hive_matrix_events_dropped_total",
    help: "Events not handled, by reason: handler_failed, control_room_not_ready (held for a control room that was not set up).",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });

  readonly eventQueue = new Gauge({
    name: "hive_matrix_event_queue_depth",
    help: "Accepted transactions whose events are not yet handled.",
    registers: [this.registry],
  });

  readonly agents = new Gauge({
    name: "hive_matrix_agents",
    help: "Agents by onboarding state (pending, registered, token_written, joined, failed, removed).",
    labelNames: ["state"] as const,
    registers: [this.registry],
  });

  readonly agentOperations = new Counter({
    name: "hive_matrix_agent_operations_total",
    help: "Agent converge runs by outcome (provisioned, unchanged, registered, removed, failed, skipped).",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });

  readonly ready = new Gauge({
    name: "hive_matrix_ready",
    help: "1 once startup has finished and the service is ready.",
    registers: [this.registry],
  });

  constructor(options: { defaultMetrics?: boolean } = {}) {
    // The event loop lag histogram samples on a timer of its own, which wakes the service however
    // idle it is: at prom-client's default of 10 ms about 2 ms of CPU per second on a 2-core VM, and
    // each wake-up of an idle core costs 40-190 µs here (npm run bench, fleet). Once a second still
    // shows a loop that lags for long; nodejs_eventloop_lag_seconds is measured at every scrape.
    if (options.defaultMetrics) collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 1000 });
  }
}
