/**
 * Agent onboarding. The desired set of agents (discovered state dirs, configured names, agents
 * added by command, minus agents removed by command) is converged one agent at a time, at most
 * `agents.concurrency` at once and never two runs for one agent: provision what is desired,
 * deprovision what is not. Every step re-derives from the homeserver and the token file, so
 * running it again changes nothing.
 */
import { EventEmitter } from "node:events";
import type { Config } from "../config/schema";
import { errorFields, type Logger, type SecretScrubber } from "../logging";
import type { Metrics } from "../metrics";
import { HomeserverUnreachableError, backoff, isMatrixError, type HomeserverTransport } from "../matrix/transport";
import { MatrixError } from "matrix-bot-sdk";
import { ensureRegistered, NamespaceError } from "../matrix/users";
import { templateHasFixedPart } from "../registration";
import type { StateStore } from "../store/state-store";
import { AgentWatcher } from "./watcher";
import { agentStateDir, discoverAgents } from "./discovery";
import { agentIdentityProblem, agentLocalpart, agentRefusal, agentUserId, sameUser } from "./names";
import { AgentRecords, type AgentRecord, type AgentState } from "./records";
import { Restarter } from "./restart";
import { agentDeviceId, checkToken, freshSession, revokeAll } from "./sessions";
import { checkStateDir, readTokenFile, StateDirError, writeTokenFile } from "./token-file";

export interface AgentManagerDeps {
  config: Config;
  /** The registration's user namespaces as currently loaded (they change when the registration is reloaded). */
  userNamespaces: () => readonly RegExp[];
  transport: HomeserverTransport;
  state: StateStore;
  logger: Logger;
  metrics: Metrics;
  scrubber?: SecretScrubber;
}

export class AgentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AgentError";
  }
}

/** Records written before accounts were recorded that prove an account of ours under a fixed template. */
const TRUSTED_LEGACY_STATES: readonly AgentState[] = ["registered", "token_written", "joined", "removed"];

type Outcome = "provisioned" | "unchanged" | "registered" | "removed" | "failed" | "skipped";

/**
 * What a converge did, for the pass summary: an agent converged more than once in one pass keeps
 * its latest outcome of the highest weight, so a later "nothing to do" does not hide a change.
 */
const WEIGHT: Record<Outcome, number> = { skipped: 0, unchanged: 1, registered: 2, provisioned: 2, removed: 2, failed: 2 };

interface Job {
  force: boolean;
  waiters: { resolve: (record: AgentRecord | undefined) => void }[];
}

/**
 * The agent's state dir exists but hive-matrix may not write it yet (e.g. its ACL is granted a
 * moment after the dir appears): retried like homeserver trouble, before any homeserver call.
 */
export class StateDirPendingError extends AgentError {
  constructor(message: string) {
    super(message);
    this.name = "StateDirPendingError";
  }
}

/**
 * Errors worth retrying by themselves: the homeserver was away, overloaded or rate limiting, or the
 * state dir is not writable yet.
 */
export function isTransient(err: unknown): boolean {
  if (err instanceof HomeserverUnreachableError || err instanceof StateDirPendingError) return true;
  return err instanceof MatrixError && (err.statusCode >= 500 || err.statusCode === 429);
}

function notOurs(name: string, userId: string): AgentError {
  return new AgentError(
    `${userId} already exists and hive-matrix did not create it: refusing to take it over (nothing was logged in to, logged out or written). ` +
      `If it is this agent's own account (e.g. from the older registration-token flow), add "${name}" to agents.adopt`,
  );
}

export class AgentManager extends EventEmitter {
  readonly records: AgentRecords;
  private readonly log: Logger;
  private discovered = new Set<string>();
  private readonly refusedLogged = new Set<string>();
  private readonly queue = new Map<string, Job>();
  private readonly running = new Map<string, Job>();
  /** Consecutive transient failures per agent, and the timer of its next retry. */
  private readonly attempts = new Map<string, number>();
  private readonly retryTimers = new Map<string, NodeJS.Timeout>();
  private watcher: AgentWatcher | undefined;
  private stopped = false;
  private loaded = false;
  /** The onboarding pass under way: when it started and each agent's outcome (an agent may converge more than once in a pass). */
  private batch = { started: 0, outcomes: new Map<string, Outcome>() };
  private idleWaiters: (() => void)[] = [];
  /** Runs the daemon restarts through one fork server, ended by stop(). */
  readonly restarter: Restarter;

  constructor(private readonly deps: AgentManagerDeps) {
    super();
    this.restarter = new Restarter(deps.config.agents.restartShell);
    this.log = deps.logger.child({ module: "agents" });
    this.records = new AgentRecords(deps.state, (err) => this.log.error(errorFields(err), "could not save agent records"));
  }

  /** Reads `agents.json`; a corrupted file throws a StateError naming it. */
  load(): void {
    this.records.load();
    this.loaded = true;
  }

  /** Scans once and queues every agent (known or on disk); then watches for changes. */
  start(): void {
    if (!this.loaded) this.load();
    this.scan();
    // Once each: an agent already running when queued again would be converged twice.
    for (const name of new Set([...this.records.entries().map(([name]) => name), ...this.desiredNames()])) void this.enqueue(name);
    this.watcher = new AgentWatcher(
      this.deps.config.agents.stateRoot,
      this.deps.config.agents.rescanIntervalSeconds * 1000,
      () => this.rescan(),
      this.log,
    );
    this.watcher.start();
    this.scan();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.stop();
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.retryTimers.clear();
    for (const [, job] of this.queue) job.waiters.forEach((w) => w.resolve(undefined));
    this.queue.clear();
    await this.idle();
    await this.restarter.close();
    this.records.flush();
    this.records.close();
  }

  /** Resolves when nothing is queued or running (retries waiting on a timer do not count). */
  idle(): Promise<void> {
    if (this.queue.size === 0 && this.running.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Whether a retry of `name` is waiting on its timer (it failed on homeserver trouble). */
  isRetrying(name: string): boolean {
    return this.retryTimers.has(name);
  }

  userId(name: string): string {
    return agentUserId(this.deps.config, name);
  }

  /** True for agent users of this hive (known or not), by the localpart template and the registration. */
  isAgentUser(userId: string): boolean {
    if (this.desiredNames().some((n) => this.userId(n) === userId)) return true;
    return this.records.entries().some(([, r]) => r.userId === userId);
  }

  /**
   * The homeserver asks whether `userId` exists (Synapse's user query): a desired agent of this
   * hive gets its account now, through its own run, so the one-run-per-agent rule and the
   * account checks hold here too.
   */
  async ensureUser(userId: string): Promise<boolean> {
    const name = this.desiredNames().find((n) => sameUser(this.userId(n), userId));
    if (name === undefined) return false;
    const record = await this.enqueue(name);
    return record !== undefined && ["registered", "token_written", "joined"].includes(record.state);
  }

  /** Whether the agent should be provisioned: on disk, configured or added by command, and not removed by command. */
  isDesired(name: string): boolean {
    if (agentRefusal(this.deps.config, name)) return false;
    const record = this.records.get(name);
    if (record?.disabled) return false;
    if (this.discovered.has(name) || record?.source === "command") return true;
    return this.deps.config.agents.names.includes(name);
  }

  desiredNames(): string[] {
    const candidates = new Set<string>([
      ...this.discovered,
      ...this.deps.config.agents.names,
      ...this.records.entries().map(([name]) => name),
    ]);
    return [...candidates].filter((name) => this.isDesired(name)).sort();
  }

  /** Who must be in the hive rooms and who must leave them, for the rooms reconciler. */
  membership(): { agents: string[]; leaving: string[] } {
    const desired = new Set(this.desiredNames());
    const agents: string[] = [];
    const leaving: string[] = [];
    for (const [name, record] of this.records.entries()) {
      if (desired.has(name) && ["registered", "token_written", "joined"].includes(record.state)) agents.push(record.userId);
      if (!desired.has(name) && record.leaving) leaving.push(record.userId);
    }
    return { agents, leaving };
  }

  /** Called after a successful rooms reconcile with the membership it applied. */
  roomsReconciled(applied: { agents: string[]; leaving: string[] }): void {
    const joined = new Set(applied.agents);
    const left = new Set(applied.leaving);
    for (const [name, record] of this.records.entries()) {
      if (this.running.has(name)) continue;
      if (joined.has(record.userId) && (record.state === "token_written" || record.state === "registered")) {
        this.records.set(name, { userId: record.userId, state: "joined" });
        this.emit("joined", name);
      }
      if (left.has(record.userId) && record.leaving) this.records.set(name, { userId: record.userId, leaving: false });
    }
  }

  /** Re-reads stateRoot and queues agents that appeared or disappeared. */
  rescan(): void {
    if (this.stopped) return;
    const before = new Set(this.desiredNames());
    const onDisk = new Set(this.discovered);
    if (!this.scan()) return;
    const after = new Set(this.desiredNames());
    for (const name of after) if (!before.has(name)) this.enqueue(name);
    for (const name of before) if (!after.has(name)) this.enqueue(name);
    // An agent desired without a state dir (added by command, or configured) gets its token when the dir appears.
    for (const name of this.discovered) if (!onDisk.has(name) && before.has(name) && after.has(name)) this.enqueue(name);
  }

  /** Queues every desired agent that is `failed` again (e.g. after a registration refresh); returns their names. */
  retryFailed(): string[] {
    const desired = new Set(this.desiredNames());
    const failed = this.records
      .entries()
      .filter(([name, record]) => record.state === "failed" && desired.has(name))
      .map(([name]) => name);
    for (const name of failed) void this.enqueue(name);
    return failed;
  }

  /** Provisions an agent by operator command; it then persists even without a state dir. */
  async add(name: string): Promise<AgentRecord> {
    this.validateName(name);
    const known = this.discovered.has(name) || this.deps.config.agents.names.includes(name);
    this.records.set(
      name,
      { userId: this.userId(name), source: known ? this.sourceFor(name) : "command", disabled: false },
      { durable: true },
    );
    return this.required(await this.enqueue(name, { force: false }), name);
  }

  /** Deprovisions an agent by operator command; it stays removed until added back. */
  async remove(name: string): Promise<AgentRecord> {
    this.validateName(name);
    if (!this.records.get(name)) throw new AgentError(`there is no agent named ${name}`);
    this.records.set(name, { userId: this.userId(name), disabled: true }, { durable: true });
    return this.required(await this.enqueue(name), name);
  }

  /** New token on the same device; the old one stops working; the daemon is restarted. */
  async rotate(name: string): Promise<AgentRecord> {
    this.validateName(name);
    if (!this.isDesired(name)) throw new AgentError(`there is no active agent named ${name}`);
    return this.required(await this.enqueue(name, { force: true }), name);
  }

  /**
   * Queues a converge of `name`; resolves with its record once a run that started after this call
   * has ended. Requests for an agent that is queued or running coalesce into one follow-up run:
   * it converges to the desired state as it is then (the last add or remove wins; each is recorded
   * before it is queued) and rotates when any request asked for it and the agent is still desired.
   */
  enqueue(name: string, options: { force?: boolean } = {}): Promise<AgentRecord | undefined> {
    if (this.stopped) return Promise.resolve(this.records.get(name));
    clearTimeout(this.retryTimers.get(name));
    this.retryTimers.delete(name);
    return new Promise((resolve) => {
      const job = this.queue.get(name) ?? { force: false, waiters: [] };
      job.force ||= options.force ?? false;
      job.waiters.push({ resolve });
      if (this.queue.size === 0 && this.running.size === 0) this.batch = { started: Date.now(), outcomes: new Map() };
      this.queue.set(name, job);
      this.pump();
    });
  }

  private required(record: AgentRecord | undefined, name: string): AgentRecord {
    if (!record) throw new AgentError(`agent ${name} was not processed (the service is stopping)`);
    if (record.state === "failed") throw new AgentError(`agent ${name} failed: ${record.reason ?? "unknown reason"}`);
    return record;
  }

  private sourceFor(name: string): AgentRecord["source"] {
    if (this.records.get(name)?.source === "command") return "command";
    return this.discovered.has(name) ? "discovered" : "config";
  }

  private validateName(name: string): void {
    const problem = agentRefusal(this.deps.config, name);
    if (problem) throw new AgentError(`agent name ${JSON.stringify(name)} ${problem}`);
  }

  /** Returns false when stateRoot could not be read: a vanished mount must not look like every agent being removed. */
  private scan(): boolean {
    let found;
    try {
      found = discoverAgents(this.deps.config);
    } catch (err) {
      this.log.warn(
        { ...errorFields(err), stateRoot: this.deps.config.agents.stateRoot },
        "cannot read the agents' state root; keeping the agents known so far",
      );
      return false;
    }
    if (found.missingRoot) {
      this.log.warn(
        { stateRoot: this.deps.config.agents.stateRoot },
        "the agents' state root does not exist; keeping the agents known so far",
      );
      return false;
    }
    for (const { name, reason } of found.refused) {
      if (this.refusedLogged.has(name)) continue;
      this.refusedLogged.add(name);
      this.log.warn({ name: JSON.stringify(name) }, `refusing agent directory: the name ${reason}; nothing is written for it`);
    }
    this.discovered = new Set(found.discovered);
    this.watcher?.watchPending(found.pending);
    return true;
  }

  /**
   * Starts queued jobs up to the concurrency cap, never a second run for an agent that is running:
   * its queued job waits (collecting further requests) and runs once the current run has ended, so
   * it sees every wish recorded meanwhile.
   */
  private pump(): void {
    if (this.stopped) return;
    for (const [name, job] of this.queue) {
      if (this.running.size >= this.deps.config.agents.concurrency) break;
      if (this.running.has(name)) continue;
      this.queue.delete(name);
      this.running.set(name, job);
      // This run covers whatever a pending retry would have done.
      clearTimeout(this.retryTimers.get(name));
      this.retryTimers.delete(name);
      void this.run(name, job);
    }
  }

  private async run(name: string, job: Job): Promise<void> {
    let outcome: Outcome;
    const started = Date.now();
    this.log.debug({ agent: name, force: job.force }, "agent run started");
    try {
      outcome = await this.converge(name, job.force);
      this.attempts.delete(name);
    } catch (err) {
      outcome = "failed";
      this.fail(name, err);
    }
    this.deps.metrics.agentOperations.inc({ outcome });
    this.log.debug({ agent: name, outcome, ms: Date.now() - started }, "agent run finished");
    this.running.delete(name);
    const record = this.records.get(name);
    job.waiters.forEach((w) => w.resolve(record));
    const before = this.batch.outcomes.get(name);
    if (before === undefined || WEIGHT[outcome] >= WEIGHT[before]) this.batch.outcomes.set(name, outcome);
    if (outcome === "provisioned" || outcome === "registered" || outcome === "removed") this.emit("changed", name, outcome);
    this.updateGauge();
    this.pump();
    if (this.queue.size === 0 && this.running.size === 0) this.drained();
  }

  private drained(): void {
    const counts = { provisioned: 0, registered: 0, unchanged: 0, removed: 0, failed: 0 };
    for (const outcome of this.batch.outcomes.values()) if (outcome !== "skipped") counts[outcome]++;
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    if (total > 1)
      this.log.info(
        { ...counts, agents: total, ms: Date.now() - this.batch.started },
        `onboarding pass finished: ${total} agents: ${counts.provisioned} provisioned, ${counts.registered} registered without a state dir, ` +
          `${counts.unchanged} unchanged, ${counts.removed} removed, ${counts.failed} failed`,
      );
    this.batch = { started: Date.now(), outcomes: new Map() };
    this.emit("idle");
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    waiters.forEach((w) => w());
  }

  private fail(name: string, err: unknown): void {
    const transient = isTransient(err);
    const reason = err instanceof Error ? err.message : String(err);
    this.records.set(name, { userId: this.userId(name), state: "failed", reason });
    this.emit("failed", name, reason);
    if (!transient || this.stopped) {
      this.log.error({ agent: name, ...errorFields(err) }, `agent ${name} could not be provisioned: ${reason}`);
      return;
    }
    const attempt = (this.attempts.get(name) ?? 0) + 1;
    this.attempts.set(name, attempt);
    const delay = Math.min(60_000, backoff(attempt + 1));
    this.log.warn(
      { agent: name, attempt, retryInMs: delay, reason },
      `agent ${name}: ${err instanceof StateDirPendingError ? reason : "homeserver trouble"}, retrying`,
    );
    const timer = setTimeout(() => {
      this.retryTimers.delete(name);
      void this.enqueue(name);
    }, delay);
    timer.unref();
    this.retryTimers.set(name, timer);
  }

  private updateGauge(): void {
    const counts = this.records.countsByState();
    for (const [state, n] of Object.entries(counts)) this.deps.metrics.agents.set({ state }, n);
  }

  private async converge(name: string, force: boolean): Promise<Outcome> {
    const identity = agentIdentityProblem(this.deps.config, name);
    if (identity) {
      // Only an agents.json from an older version (or operators changed since) gets here: never
      // provisioned, never deprovisioned (that would log out or move the bot or a person).
      if (this.records.get(name)) this.records.set(name, { userId: this.userId(name), leaving: false });
      throw new AgentError(`the agent ${name} ${identity}; refusing it (nothing is done with that account)`);
    }
    if (this.isDesired(name)) return this.provision(name, force);
    const record = this.records.get(name);
    if (!record || (record.state === "removed" && !force)) return "skipped";
    return this.deprovision(name, record);
  }

  private async provision(name: string, force: boolean): Promise<Outcome> {
    const { config, transport } = this.deps;
    const userId = this.userId(name);
    const localpart = agentLocalpart(config, name);
    const deviceId = agentDeviceId(name);
    const previous = this.records.get(name);
    const source = this.sourceFor(name);

    if (!this.deps.userNamespaces().some((r) => r.test(userId))) {
      throw new AgentError(
        `${userId} is not in the registration's user namespace, so the homeserver will refuse it. ` +
          "With the {name} template every agent is listed in the registration by name: run `hive-matrix registration`, then make the homeserver load it " +
          "(Synapse and tuwunel read it at start: restart them). hive-matrix re-reads the file by itself and retries the agent: it needs no restart (registration refresh needed)",
      );
    }
    const stateDir = agentStateDir(config, name);
    const dir = checkStateDir(config.agents.stateRoot, name);
    if (!dir.ok && dir.denied) throw new StateDirPendingError(`${dir.reason}; waiting for its permissions`);
    if (!dir.ok && !dir.missing) throw new AgentError(dir.reason);

    const known = this.accountTrust(name, previous);
    let validToken: string | undefined;
    if (dir.ok) {
      const read = readTokenFile(config.agents.stateRoot, name);
      if (read.kind === "token") {
        this.deps.scrubber?.add(read.token);
        const check = await checkToken(transport, read.token, userId, deviceId);
        // A live token of an account not known to be ours (e.g. written by an older version under
        // the {name} template) is not blessed: the account must be adopted explicitly.
        if (check.valid && !known) throw notOurs(name, userId);
        if (check.valid && !force) {
          const state: AgentState = previous?.state === "joined" ? "joined" : "token_written";
          this.records.set(name, { userId, state, source, leaving: false });
          return "unchanged";
        }
        if (check.valid) validToken = read.token;
        else this.log.info({ agent: name }, `the token in ${stateDir}/matrix-token ${check.reason}; replacing it`);
      } else if (read.kind === "unsafe") {
        this.log.warn(
          { agent: name },
          `${stateDir}/matrix-token ${read.reason}; replacing it with a new token file (whatever it points to is left untouched)`,
        );
      }
    } else if (previous && ["registered", "joined"].includes(previous.state) && !force) {
      // No state dir (an agent from the config or a command): the account is all there is to check.
      this.records.set(name, { userId, source, leaving: false });
      return "unchanged";
    }

    const interrupted = previous?.registering === true;
    // Written before the request when the account is not known to be ours: if the reply is lost,
    // the next attempt knows that an M_USER_IN_USE may be our own earlier success.
    this.records.set(
      name,
      { userId, state: "pending", source, leaving: false, ...(known ? {} : { registering: true }) },
      { durable: !known },
    );
    const displayName = config.agents.displayName.split("{name}").join(name);
    let registered;
    try {
      registered = await ensureRegistered(
        transport,
        localpart,
        config.homeserver.domain,
        dir.ok ? { deviceId, displayName: "hive-matrix" } : undefined,
      );
    } catch (err) {
      // A refusal (4xx, not a lost reply or a server error) means nothing was created: the mark has served.
      if (!known && err instanceof MatrixError && err.statusCode < 500)
        this.records.set(name, { userId, registering: false }, { durable: true });
      if (err instanceof NamespaceError) {
        this.records.set(name, { userId, registering: false }, { durable: true });
        throw new AgentError(`${err.message} (registration refresh needed)`);
      }
      throw err;
    }
    const account = registered.created ? "created" : (known ?? (await this.claimExisting(name, userId, interrupted)));
    this.records.set(name, { userId, state: "registered", account, registering: false }, { durable: account !== previous?.account });
    await this.ensureDisplayName(userId, displayName, registered.created);

    if (!dir.ok) {
      this.log.info({ agent: name, userId }, `agent ${name} registered; it has no state dir (${stateDir}), so no token file is written`);
      return "registered";
    }
    const session =
      registered.accessToken !== undefined
        ? { accessToken: registered.accessToken, deviceId: registered.deviceId ?? deviceId }
        : await freshSession(transport, localpart, deviceId, "hive-matrix", validToken);
    this.deps.scrubber?.add(session.accessToken);
    try {
      // Anchored to the dir as it is now (token-file.ts): a swap since the read cannot redirect it.
      writeTokenFile(config.agents.stateRoot, name, session.accessToken);
    } catch (err) {
      if (err instanceof StateDirError && err.denied) throw new StateDirPendingError(`not writing the token: ${err.reason}`);
      if (err instanceof StateDirError) throw new AgentError(`not writing the token: ${err.reason}`);
      throw err;
    }
    this.records.set(name, { userId, state: "token_written", tokenWrittenAt: Date.now() });
    this.log.info(
      { agent: name, userId, deviceId: session.deviceId, created: registered.created, rotated: force },
      `agent ${name} provisioned: token written`,
    );

    const restart = await this.restarter.run(config.agents.restartCommand, name, config.agents.restartTimeoutSeconds * 1000);
    if (!restart.ok)
      this.log.warn(
        { agent: name },
        `agent ${name}: restarting its daemon failed (${restart.problem}); its path-watcher picks the token up anyway`,
      );
    this.emit("onboarded", name);
    return "provisioned";
  }

  private async ensureDisplayName(userId: string, displayName: string, created: boolean): Promise<void> {
    try {
      if (!created) {
        const profile = await this.deps.transport.request<{ displayname?: string }>(
          "GET",
          `/_matrix/client/v3/profile/${encodeURIComponent(userId)}`,
        );
        if (profile.displayname === displayName) return;
      }
    } catch (err) {
      if (!isMatrixError(err, "M_NOT_FOUND")) throw err;
    }
    await this.deps.transport.request("PUT", `/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`, {
      asUser: userId,
      body: { displayname: displayName },
      kind: "agent.displayname",
    });
  }

  /**
   * Whether hive-matrix may act on the existing account of `name` (log in, log out, write its token,
   * move it in rooms): it created it, or agents.adopt says to take it over. Undefined: not known to
   * be ours, so an existing account is someone else's.
   */
  private accountTrust(name: string, record: AgentRecord | undefined): AgentRecord["account"] {
    if (record?.account) return record.account;
    if (this.deps.config.agents.adopt.includes(name)) return "adopted";
    // agents.json from before accounts were recorded. Under a fixed prefix or suffix the exclusive
    // namespace let only hive-matrix create these users; under the bare {name} template the old
    // flow created them, and they must be listed in agents.adopt.
    if (templateHasFixedPart(this.deps.config.agents.localpart) && record && TRUSTED_LEGACY_STATES.includes(record.state)) return "created";
    return undefined;
  }

  /**
   * /register says the user exists and nothing on record makes it ours. Only when an earlier
   * /register of ours may have created it unseen (`interrupted`: a crash or a lost reply) is the
   * account looked at, as the appservice: no joined room and no device but the agent's means it is
   * that earlier attempt's. Anything else is someone else's account and is refused: nothing is
   * logged in to, logged out or written.
   */
  private async claimExisting(name: string, userId: string, interrupted: boolean): Promise<"created"> {
    if (interrupted && (await this.untouchedAccount(userId, agentDeviceId(name)))) {
      this.log.info({ agent: name, userId }, `agent ${name}: an interrupted registration had created ${userId}; continuing with it`);
      return "created";
    }
    this.records.set(name, { userId, registering: false }, { durable: true });
    throw notOurs(name, userId);
  }

  private async untouchedAccount(userId: string, deviceId: string): Promise<boolean> {
    const { transport } = this.deps;
    const rooms = await transport.request<{ joined_rooms?: string[] }>("GET", "/_matrix/client/v3/joined_rooms", { asUser: userId });
    if ((rooms.joined_rooms ?? []).length > 0) return false;
    const devices = await transport.request<{ devices?: { device_id: string }[] }>("GET", "/_matrix/client/v3/devices", { asUser: userId });
    return (devices.devices ?? []).every((d) => d.device_id === deviceId);
  }

  private async deprovision(name: string, record: AgentRecord): Promise<Outcome> {
    const { config, transport } = this.deps;
    const ours = this.accountTrust(name, record) !== undefined;
    if (!ours) {
      // E.g. a dir named like a person that was refused: their sessions and rooms are not ours to touch.
      this.records.set(name, { userId: record.userId, state: "removed", leaving: false }, { durable: true });
      this.log.info(
        { agent: name, userId: record.userId },
        `agent ${name} removed; ${record.userId} is not an account hive-matrix created or adopted, so it is left alone`,
      );
      return "removed";
    }
    if (config.agents.onRemove.logout && record.state !== "pending") {
      try {
        await revokeAll(transport, agentLocalpart(config, name), agentDeviceId(name));
      } catch (err) {
        // A user that never got registered has nothing to revoke.
        if (!isMatrixError(err, "M_FORBIDDEN") && !isMatrixError(err, "M_INVALID_USERNAME") && !isMatrixError(err, "M_USER_DEACTIVATED"))
          throw err;
      }
    }
    this.records.set(name, { userId: record.userId, state: "removed", leaving: config.agents.onRemove.leaveRooms }, { durable: true });
    this.log.info({ agent: name, userId: record.userId }, `agent ${name} removed: devices logged out, account kept`);
    this.emit("removed", name);
    return "removed";
  }
}
