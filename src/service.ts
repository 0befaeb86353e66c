/**
 * The running service: wires the state store, the transaction intake, the homeserver transport,
 * the appservice HTTP API and startup. Capabilities (agents, rooms, commands) attach to it.
 */
import { EventEmitter } from "node:events";
import type { Server } from "node:http";
import type { Config } from "./config/schema";
import { AgentActivity, agentNameFromUserId } from "./agents/activity";
import { AgentManager } from "./agents/manager";
import { ControlRoom, appserviceUserPredicate } from "./control";
import { ServiceHiveApi } from "./hive-api";
import { Operators } from "./operators";
import { ReconcileLoop } from "./rooms/loop";
import { RoomsReconciler } from "./rooms/reconciler";
import { HiveRooms } from "./rooms/space-children";
import type { DesiredMembers, ReconcileReport } from "./rooms/types";
import { RefusalLog, loadMetricsToken } from "./appservice/auth";
import { createAppserviceApp } from "./appservice/http";
import { TransactionIntake } from "./appservice/intake";
import { EventQueue } from "./events";
import { createLogger, errorFields, type Logger, type SecretScrubber } from "./logging";
import { Metrics } from "./metrics";
import { HiveMatrixClient } from "./matrix/client";
import { HomeserverTransport } from "./matrix/transport";
import { ensureRegistered } from "./matrix/users";
import { LiveRegistration } from "./live-registration";
import type { Registration } from "./registration";
import { pingFromHomeserver, waitForHomeserver, type PingResult, type Versions } from "./startup";
import { StateStore } from "./store/state-store";
import { TransactionStore, type MatrixEvent } from "./store/transactions";
import { VERSION } from "./version";

export { VERSION };

/** After a registration reload, agents still waiting for it are retried after these delays. */
const REFRESH_RETRY_SECONDS = [5, 15, 30, 60, 120, 300];

export interface ServiceOptions {
  config: Config;
  /** As loaded from `config.appservice.registration`, which is watched and re-read while running. */
  registration: Registration;
  logger?: Logger;
  scrubber?: SecretScrubber;
  /** Run the built-in control room (default true); an embedder or a test with its own turns it off. */
  controlRoom?: boolean;
}

/** The bot's state event at each start, which makes the homeserver send what it queued (see nudgeHomeserver). */
export const STARTED_EVENT_TYPE = "org.hyperhive.hive_matrix.started";

export class HiveMatrixService extends EventEmitter {
  readonly config: Config;
  readonly liveRegistration: LiveRegistration;
  readonly logger: Logger;
  readonly scrubber: SecretScrubber | undefined;
  readonly metrics = new Metrics({ defaultMetrics: true });
  readonly transport: HomeserverTransport;
  readonly bot: HiveMatrixClient;
  readonly botUserId: string;
  readonly state: StateStore;
  readonly operators: Operators;
  readonly transactions: TransactionStore;
  readonly events: EventQueue;
  private readonly intake: TransactionIntake;
  readonly agents: AgentManager;
  readonly activity: AgentActivity;
  readonly rooms: RoomsReconciler;
  readonly hiveRooms: HiveRooms;
  readonly roomsLoop: ReconcileLoop;
  readonly control: ControlRoom;
  /** Problems of the last reconcile, so that the control room hears of each one once. */
  private reportedProblems = new Set<string>();
  private homeserverReachable = true;
  private readonly controlEnabled: boolean;
  readonly startedAt = Date.now();
  homeserverVersions: Versions | undefined;
  lastPing: (PingResult & { at: number }) | undefined;
  lastPingReceived: { at: number; transactionId?: string } | undefined;
  private server: Server | undefined;
  private refusals: RefusalLog | undefined;
  private refreshRetry: { timer?: NodeJS.Timeout; attempt: number } = { attempt: 0 };
  private ready = false;
  private stopping = false;
  private readonly abort = new AbortController();

  constructor(options: ServiceOptions) {
    super();
    this.config = options.config;
    const { logger, scrubber } = options.logger
      ? { logger: options.logger, scrubber: options.scrubber }
      : createLogger({ level: this.config.logging.level, pretty: this.config.logging.pretty });
    scrubber?.add(options.registration.as_token);
    scrubber?.add(options.registration.hs_token);
    this.liveRegistration = new LiveRegistration(this.config.appservice.registration, options.registration, logger);
    this.logger = logger;
    this.scrubber = scrubber;
    this.botUserId = `@${this.config.appservice.botLocalpart}:${this.config.homeserver.domain}`;
    this.transport = new HomeserverTransport({
      baseUrl: this.config.homeserver.url,
      asToken: this.registration.as_token,
      timeoutMs: this.config.homeserver.requestTimeoutMs,
      maxRetries: this.config.homeserver.maxRetries,
      // Onboarding and the rooms' memberships each run agents.concurrency requests at once; the rest
      // (events, the control room, Space reads) need a few more.
      maxSockets: 2 * this.config.agents.concurrency + 8,
      logger: this.logger.child({ module: "homeserver" }),
      metrics: this.metrics,
      userNamespaces: () => this.liveRegistration.userPatterns(),
      onReachability: (reachable) => this.reachability(reachable),
    });
    this.bot = new HiveMatrixClient(this.transport, this.botUserId);
    this.state = new StateStore(this.config.stateDir);
    this.operators = new Operators(this.config, this.state);
    this.transactions = new TransactionStore(this.config.stateDir);
    this.events = new EventQueue(this.transactions, this.logger.child({ module: "events" }), this.metrics);
    // Memberships of the Space and hive-chat only: the reconcile is all they can cause, and every
    // start runs one that reads both rooms anew, so a crash before they were handled loses nothing.
    // Each agent onboarded brings three such transactions; they need not wait for a disk flush.
    this.intake = new TransactionIntake(this.transactions, this.events, this.logger, (events) =>
      events.every((e) => e.type === "m.room.member" && this.rooms.isHiveRoom(e.room_id)),
    );
    this.agents = new AgentManager({
      config: this.config,
      userNamespaces: () => this.liveRegistration.userPatterns(),
      transport: this.transport,
      state: this.state,
      logger: this.logger,
      metrics: this.metrics,
      scrubber: this.scrubber,
    });
    this.activity = new AgentActivity({
      config: this.config,
      state: this.state,
      logger: this.logger,
      metrics: this.metrics,
      agentName: (userId) => agentNameFromUserId(this.config, userId, (name) => this.agents.records.get(name)),
      isCurrent: (name) => this.agents.isDesired(name),
      report: (kind, text) => this.control.report(kind, text),
    });
    const isAgent = (userId: string): boolean => {
      const name = agentNameFromUserId(this.config, userId, (n) => this.agents.records.get(n));
      return name !== undefined && this.agents.isDesired(name);
    };
    this.hiveRooms = new HiveRooms({
      config: this.config,
      state: this.state,
      transport: this.transport,
      logger: this.logger,
      who: { isAgent, isOperator: (userId) => this.operators.isOperator(userId), botUserId: this.botUserId },
      isOwnRoom: (roomId) => this.rooms.isHiveRoom(roomId) || roomId === this.control.roomId,
      changed: (reason) => void this.roomsLoop.trigger(reason),
    });
    this.rooms = new RoomsReconciler(this);
    // Wrapped so that the agents learn which memberships a successful run applied.
    const reconciling = {
      isRelevant: (event: MatrixEvent) => this.rooms.isRelevant(event),
      reconcile: async (members: DesiredMembers, reason?: string) => {
        const report = await this.rooms.reconcile(members, reason);
        this.afterReconcile(members, report);
        return report;
      },
    };
    this.roomsLoop = new ReconcileLoop(reconciling, {
      members: () => this.agents.membership(),
      intervalSeconds: this.config.rooms.reconcileIntervalSeconds,
      eventDelayMs: this.config.rooms.eventDelayMs,
      minEventIntervalMs: this.config.rooms.minEventIntervalSeconds * 1000,
      logger: this.logger,
    });
    this.control = new ControlRoom({
      bot: this.bot,
      botUserId: this.botUserId,
      state: this.state,
      config: this.config,
      logger: this.logger,
      metrics: this.metrics,
      operators: this.operators,
      api: new ServiceHiveApi({
        service: this,
        agents: this.agents,
        rooms: this.rooms,
        loop: this.roomsLoop,
        controlRoomId: () => this.control.roomId,
      }),
      isAppserviceUser: (userId: string) =>
        appserviceUserPredicate(this.registration, this.config.homeserver.domain)(userId) ||
        // With the bare {name} template an agent the registration does not list yet is still ours.
        this.agents.isAgentUser(userId),
    });
    this.events.on((event) => this.activity.observe(event));
    this.events.on((event) => this.hiveRooms.observe(event));
    this.events.on((event) => this.roomsLoop.onEvent(event));
    this.controlEnabled = options.controlRoom ?? true;
    if (this.controlEnabled) this.events.on((event) => this.control.handleEvent(event));
    this.agents.on("changed", (name: string, outcome: string) => void this.roomsLoop.trigger(`agent ${name} ${outcome}`));
    this.agents.on("onboarded", (name: string) => this.control.report("agent-onboarded", name));
    this.agents.on("removed", (name: string) => this.control.report("agent-removed", name));
    this.agents.on("failed", (name: string, reason: string) => {
      if (/registration refresh needed/.test(reason)) this.control.report("registration-refresh", `${name}: ${reason}`);
      else this.control.report("agent-failed", `${name}: ${reason}`);
    });
  }

  /** The registration in use (its user namespaces change when the file is reloaded). */
  get registration(): Registration {
    return this.liveRegistration.current;
  }

  /**
   * Re-reads the registration file (SIGHUP, `!hive sync`; a watch does it when the file changes).
   * New namespaces are used at once, and agents waiting for a registration refresh are retried.
   */
  reloadRegistration(trigger: string): ReturnType<LiveRegistration["reload"]> {
    return this.liveRegistration.reload(trigger);
  }

  isReady(): boolean {
    return this.ready;
  }

  /** Registers an event handler; handlers run after startup, in transaction order. */
  onEvent(handler: (event: MatrixEvent) => Promise<void> | void): void {
    this.events.on(handler);
  }

  /** Starts everything; on failure, whatever was started is stopped again before the error is thrown. */
  async start(): Promise<void> {
    try {
      await this.startUp();
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw err;
    }
  }

  private async startUp(): Promise<void> {
    const log = this.logger;
    this.state.init();
    this.state.lock();
    // Read before anything listens or writes, so a corrupted file stops the start with its name.
    this.agents.load();
    this.operators.load();
    this.activity.load();
    this.hiveRooms.load();
    const pending = this.transactions.open();
    if (pending.length > 0) log.info({ transactions: pending.length }, "replaying transactions accepted before the last stop");
    pending.forEach((entry) => this.events.push(entry));
    await this.listen();
    log.info({ bind: this.config.appservice.bind, port: this.config.appservice.port }, "appservice API listening");

    this.homeserverVersions = await waitForHomeserver(this.transport, log, {
      maxWaitSeconds: this.config.homeserver.startupWaitSeconds,
      signal: this.abort.signal,
    });
    const bot = await ensureRegistered(this.transport, this.config.appservice.botLocalpart, this.config.homeserver.domain);
    log.info({ userId: bot.userId, created: bot.created }, bot.created ? "bot user registered" : "bot user exists");
    await this.ensureBotProfile();

    const ping = await pingFromHomeserver(this.transport, this.config.appservice.id, this.config.appservice.url);
    this.lastPing = { ...ping, at: Date.now() };
    if (ping.ok) log.info({ durationMs: ping.durationMs }, "homeserver reached the appservice (ping ok)");
    else if (ping.unsupported) log.info(ping.cause);
    else log.warn({ errcode: ping.errcode }, `homeserver could not ping the appservice: ${ping.cause}`);

    this.liveRegistration.on("changed", () => this.registrationChanged());
    this.liveRegistration.watch();
    this.agents.start();
    this.activity.start();
    if (this.controlEnabled) await this.control.start();
    // After the control room's first set-up: commands replayed from the journal then go straight
    // to the processor, which records them durably, instead of being held in memory while their
    // transaction is marked done (a stop in that window would lose them).
    this.events.start();
    void this.roomsLoop.start();
    this.ready = true;
    this.metrics.ready.set(1);
    log.info({ version: VERSION, botUserId: this.botUserId }, "hive-matrix is ready");
    this.emit("ready");
    void this.nudgeHomeserver();
  }

  /**
   * Makes the homeserver deliver what it queued for us while we were away. Neither server does so
   * on its own at once: tuwunel 1.4 resends a failed appservice's queue only with the next event for
   * it, and Synapse starts its sender (and the retries of its queue) at the first new event after
   * its own start; until then an operator's command sent during the restart would wait unanswered.
   * The bot's own state event in the control room (or hive-chat) is such an event, and clients do
   * not show it.
   */
  private async nudgeHomeserver(): Promise<void> {
    const roomId = this.control.roomId ?? this.rooms.chatId;
    if (roomId === undefined) return;
    try {
      await this.bot.sendStateEvent(roomId, STARTED_EVENT_TYPE, "", { version: VERSION, started_at: Date.now() });
    } catch (err) {
      this.logger.warn(
        { roomId, ...errorFields(err) },
        "could not send the start marker; events the homeserver queued while hive-matrix was down may wait for the next event",
      );
    }
  }

  /** Stops accepting requests, lets queued events finish, and closes the state files. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.ready = false;
    this.abort.abort();
    this.liveRegistration.stop();
    clearTimeout(this.refreshRetry.timer);
    // Events first: what is not handled yet stays in the journal for the next start rather than
    // reach a control room that is stopping (a command would be marked handled and never run).
    await this.events.stop();
    this.activity.stop();
    // Then agents: no new onboarding starts, the agents in flight finish; then the rooms, then
    // the control room, which sends the reports queued until then.
    await this.agents.stop();
    await this.hiveRooms.stop();
    await this.roomsLoop.stop();
    if (this.controlEnabled) await this.control.stop();
    const server = this.server;
    if (server) {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
    }
    this.refusals?.flush();
    await this.transactions.flushAndClose();
    this.transport.close();
    this.state.unlock();
    this.logger.info("hive-matrix stopped");
    this.logger.flush();
  }

  /** A live check for `!hive status`: one /versions request, no retries, and the server's name and version when it says. */
  async probeHomeserver(): Promise<{ ok: boolean; version?: string }> {
    try {
      await this.transport.request("GET", "/_matrix/client/versions", { accessToken: null, retry: "never", timeoutMs: 5000 });
    } catch {
      return { ok: false };
    }
    try {
      const res = await this.transport.request<{ server?: { name?: string; version?: string } }>("GET", "/_matrix/federation/v1/version", {
        accessToken: null,
        retry: "never",
        timeoutMs: 5000,
      });
      return { ok: true, version: res.server ? `${res.server.name ?? "?"} ${res.server.version ?? ""}`.trim() : undefined };
    } catch {
      return { ok: true };
    }
  }

  private afterReconcile(members: DesiredMembers, report: ReconcileReport): void {
    if (report.problems.length === 0) this.agents.roomsReconciled(members);
    // "restored" marks a state event that had been changed by someone (diff.ts); first-time setup says "set".
    for (const change of report.changes.filter((c) => / restored\b/.test(c))) this.control.report("drift-repaired", change);
    const fresh = report.problems.filter((p) => !this.reportedProblems.has(p));
    for (const problem of fresh) this.control.report("rooms-unusable", problem);
    this.reportedProblems = new Set(report.problems);
  }

  /** The homeserver asks whether a user of our namespace exists: agents of this hive are provisioned on the spot. */
  private async onUserQuery(userId: string): Promise<boolean> {
    if (userId === this.botUserId) return true;
    return this.agents.ensureUser(userId);
  }

  private refreshNeeded(): string[] {
    return this.agents.records
      .entries()
      .filter(([, r]) => r.state === "failed" && /registration refresh needed/.test(r.reason ?? ""))
      .map(([name]) => name);
  }

  /**
   * The file often changes before the homeserver has loaded it (the homeserver reads it at its
   * start), so agents that still fail are tried again a few times, then left to `!hive sync`.
   */
  private registrationChanged(): void {
    this.refreshRetry.attempt = 0;
    this.retryRefreshNeeded();
  }

  private retryRefreshNeeded(): void {
    clearTimeout(this.refreshRetry.timer);
    this.refreshRetry.timer = undefined;
    if (this.stopping || this.refreshNeeded().length === 0) return;
    const retried = this.agents.retryFailed();
    this.logger.info({ agents: retried }, "retrying agents that waited for a registration refresh");
    const delay = REFRESH_RETRY_SECONDS[this.refreshRetry.attempt++];
    if (delay === undefined) return;
    this.refreshRetry.timer = setTimeout(() => this.retryRefreshNeeded(), delay * 1000);
    this.refreshRetry.timer.unref();
  }

  private reachability(reachable: boolean): void {
    if (reachable === this.homeserverReachable) return;
    this.homeserverReachable = reachable;
    if (!this.ready) return;
    if (reachable) {
      this.logger.info("the homeserver is reachable again");
      // It may have been restarted to load a new registration.
      if (this.refreshNeeded().length > 0) this.agents.retryFailed();
      this.control.report("homeserver-back", this.config.homeserver.url);
    } else {
      this.logger.warn("the homeserver is unreachable");
      this.control.report("homeserver-down", this.config.homeserver.url);
    }
  }

  /** Anyone on the host can ask; the details only with the metrics token (see appservice/http.ts). */
  health(detailed = true): { ready: boolean } & Record<string, unknown> {
    if (!detailed) return { ready: this.ready, live: true };
    return {
      ready: this.ready,
      live: true,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      botUserId: this.botUserId,
      homeserver: { url: this.config.homeserver.url, reachable: this.homeserverVersions !== undefined },
      ping: this.lastPing
        ? this.lastPing.ok
          ? { ok: true, durationMs: this.lastPing.durationMs }
          : { ok: false, errcode: this.lastPing.errcode, cause: this.lastPing.cause }
        : null,
    };
  }

  private async ensureBotProfile(): Promise<void> {
    const wanted = this.config.appservice.botDisplayName;
    try {
      const profile = (await this.bot.getUserProfile(this.botUserId)) as { displayname?: string };
      if (profile.displayname !== wanted) await this.bot.setDisplayName(wanted);
    } catch (err) {
      this.logger.warn(errorFields(err), "could not set the bot's display name");
    }
  }

  private listen(): Promise<void> {
    const tokenFile = this.config.appservice.metricsTokenFile;
    const metricsToken = tokenFile ? loadMetricsToken(tokenFile) : undefined;
    this.scrubber?.add(metricsToken);
    this.refusals = new RefusalLog(this.logger.child({ module: "appservice-http" }));
    const app = createAppserviceApp(
      {
        onTransaction: async (txnId, events, raw) => {
          const result = await this.intake.receive(txnId, events, raw);
          if (result !== "duplicate") this.emit("transaction", txnId, events.length);
          return result;
        },
        onUserQuery: (userId) => this.onUserQuery(userId),
        onPing: (transactionId) => {
          this.lastPingReceived = { at: Date.now(), transactionId };
        },
        health: (detailed) => this.health(detailed),
        metrics: async () => ({ contentType: this.metrics.registry.contentType, body: await this.metrics.registry.metrics() }),
      },
      {
        hsToken: this.registration.hs_token,
        maxBodyBytes: this.config.appservice.maxBodyBytes,
        logger: this.logger,
        metrics: this.metrics,
        metricsToken,
        refusals: this.refusals,
      },
    );
    return new Promise((resolve, reject) => {
      const server = app.listen(this.config.appservice.port, this.config.appservice.bind);
      server.once("listening", () => {
        this.server = server;
        resolve();
      });
      server.once("error", (err: NodeJS.ErrnoException) => {
        reject(new Error(`cannot listen on ${this.config.appservice.bind}:${this.config.appservice.port} (${err.code ?? err.message})`));
      });
    });
  }
}
