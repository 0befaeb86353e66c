/**
 * The IPC protocol between the bench and a child running hive-matrix (bench/child/service-host.ts).
 * Each request carries an id; the child answers it once, with a value or an error message.
 */

export type AgentGoal = "token_written" | "joined";

export type HostRequest =
  | { op: "rescan" }
  | { op: "waitAgents"; names: string[]; until: AgentGoal; timeoutMs: number }
  | { op: "requests" }
  | { op: "memory" }
  | { op: "reconcile"; reason: string }
  | { op: "controlRoom"; timeoutMs: number }
  /**
   * Agents open `count` rooms with each other (agent i creates one and invites agent i+1, who
   * joins); resolves once the Space lists them all.
   */
  | { op: "hiveRooms"; agents: string[]; count: number; timeoutMs: number }
  /** One line about what the child has done (e.g. how many transactions shared a flush). */
  | { op: "describe" }
  /** Waits until every acknowledged transaction has been handled by the event queue. */
  | { op: "drain" }
  /**
   * Waits until the service has been quiet for `quietMs`: no agent converging, no reconcile running,
   * no event queued, and no request to the homeserver.
   */
  | { op: "quiet"; quietMs: number; timeoutMs: number }
  | { op: "stop" };

export type HostOp = HostRequest["op"];

export interface AgentWait {
  /** Agents of `names` by state when the wait ended. */
  states: Record<string, number>;
  done: number;
  failed: number;
  /** A few failure reasons, for the report. */
  reasons: string[];
  timedOut: boolean;
}

export interface CounterSample {
  labels: Record<string, string>;
  value: number;
}

/** The homeserver request metrics of the service at one moment. */
export interface RequestSnapshot {
  requests: CounterSample[];
  writes: CounterSample[];
  /** Sums and counts of the latency histogram, by method and route. */
  latencySum: CounterSample[];
  latencyCount: CounterSample[];
  /** Runs of the rooms reconcile loop so far. */
  reconcileRuns: number;
}

export interface MemorySample {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  arrayBuffers: number;
  gcExposed: boolean;
  /** From /proc/self/status (bytes): anonymous memory vs. mapped files (the node binary, shared libraries). */
  rssAnon: number | null;
  rssFile: number | null;
  /** V8 heap spaces after the GC (bytes): where heapTotal goes. */
  spaces: { name: string; size: number; used: number; physical: number }[];
}

export interface ReconcileOutcome {
  changes: string[];
  problems: string[];
  /** State-changing requests, as the reconciler counted them. */
  writes: number;
  durationMs: number;
  /**
   * Writes a blind re-apply of the same desired state would make (every owned state event of both
   * rooms PUT again, every agent invited and joined to both, every operator invited): computed from
   * the desired state, not executed.
   */
  blindWrites: number;
}

export interface HostReplies {
  rescan: { ok: true };
  waitAgents: AgentWait;
  requests: RequestSnapshot;
  memory: MemorySample;
  reconcile: ReconcileOutcome;
  controlRoom: { roomId: string };
  hiveRooms: { listed: number; ms: number };
  describe: { text: string };
  /** Transactions still queued when asked, and how long handling them took. */
  drain: {
    queued: number;
    ms: number;
    journal: { flushes: number; flushMs: number; syncFlushes: number };
    /** Milliseconds the event loop has been busy since the process started. */
    eventLoopActiveMs: number;
  };
  /** `quietForMs`: how long before the answer the service was last seen busy; `timedOut`: never quiet for long enough. */
  quiet: { quietForMs: number; timedOut: boolean };
  stop: { ok: true };
}

export interface HostEnvelope {
  id: number;
  request: HostRequest;
}

export type HostMessage =
  | { kind: "ready"; startupMs: number; memory: MemorySample }
  | { kind: "fatal"; error: string }
  | { kind: "answer"; id: number; ok: true; value: unknown }
  | { kind: "answer"; id: number; ok: false; error: string };

/** Written by the bench, read by the child: what to run. */
export interface HostInit {
  configPath: string;
  logFile: string;
}
