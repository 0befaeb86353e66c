/**
 * Metrics of the rooms reconciler, registered on the service's registry. Registration is shared:
 * a second reconciler on the same registry (a restart in tests) reuses the same series.
 */
import { Counter, Gauge, type Registry } from "prom-client";
import type { Metrics } from "../metrics";

export interface RoomsMetrics {
  runs: Counter<"outcome">;
  problems: Gauge;
}

function existing<T>(registry: Registry, name: string): T | undefined {
  return registry.getSingleMetric(name) as T | undefined;
}

export function roomsMetrics(metrics: Metrics): RoomsMetrics {
  const registry = metrics.registry;
  const runs =
    existing<Counter<"outcome">>(registry, "hive_matrix_rooms_reconciles_total") ??
    new Counter({
      name: "hive_matrix_rooms_reconciles_total",
      help: "Reconciles of the Space and hive-chat by outcome (clean, changed, problems, failed).",
      labelNames: ["outcome"] as const,
      registers: [registry],
    });
  const problems =
    existing<Gauge>(registry, "hive_matrix_rooms_problems") ??
    new Gauge({
      name: "hive_matrix_rooms_problems",
      help: "Problems the last reconcile of the rooms found and could not fix (0 when all is well).",
      registers: [registry],
    });
  return { runs, problems };
}
