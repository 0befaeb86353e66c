/**
 * The control room's view of the hive (HiveApi), implemented on the agent manager and the rooms
 * reconciler. Chat concerns stay in src/control; hive logic stays in src/agents and src/rooms.
 */
import { existsSync } from "node:fs";
import { AgentError, type AgentManager } from "./agents/manager";
import { agentStateDir } from "./agents/discovery";
import type { AgentRecord } from "./agents/records";
import { tokenFileStatus } from "./agents/token-file";
import {
  CommandError,
  type AgentView,
  type HiveApi,
  type HiveStatus,
  type LogEntry,
  type HiveRoomInfo,
  type OperatorView,
  type ProgressSink,
  type SyncReport,
} from "./control/api";
import type { ReconcileLoop } from "./rooms/loop";
import type { RoomsReconciler } from "./rooms/reconciler";
import { LOG_LEVELS, logRingOf, parseLogLine } from "./logging";
import { NamespaceError } from "./matrix/users";
import { countsBy } from "./metrics";
import type { HiveMatrixService } from "./service";
import { VERSION } from "./version";

export interface HiveApiDeps {
  service: HiveMatrixService;
  agents: AgentManager;
  rooms: RoomsReconciler;
  loop: ReconcileLoop;
  controlRoomId: () => string | undefined;
}

function asCommandError(err: unknown): never {
  if (err instanceof AgentError || err instanceof NamespaceError) throw new CommandError(err.message);
  throw err;
}

export class ServiceHiveApi implements HiveApi {
  constructor(private readonly deps: HiveApiDeps) {}

  async status(): Promise<HiveStatus> {
    const { service, agents, rooms } = this.deps;
    const reachable = await service.probeHomeserver();
    const counts = agents.records.countsByState();
    const last = rooms.lastReport;
    return {
      homeserver: { url: service.config.homeserver.url, reachable: reachable.ok, version: reachable.version },
      ping: service.lastPing
        ? service.lastPing.ok
          ? { ok: true, durationMs: service.lastPing.durationMs }
          : { ok: false, cause: service.lastPing.cause }
        : undefined,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - service.startedAt) / 1000),
      agents: Object.fromEntries(Object.entries(counts).filter(([, n]) => n > 0)),
      rooms: {
        spaceId: rooms.spaceId,
        chatId: rooms.chatId,
        controlRoomId: this.deps.controlRoomId(),
        spaceAlias: rooms.aliases.space,
        chatAlias: rooms.aliases.chat,
      },
      lastReconcile: last ? { at: last.at, changes: last.changes.length, problems: last.problems } : undefined,
      intake: await this.intake(),
    };
  }

  /** Read from the metrics, which count every outcome where it happens. */
  private async intake(): Promise<NonNullable<HiveStatus["intake"]>> {
    const { metrics } = this.deps.service;
    const t = await countsBy(metrics.transactions, "result");
    const n = (result: string): number => t[result] ?? 0;
    return {
      handled: n("accepted") + n("reused_id"),
      reusedIds: n("reused_id"),
      replays: n("duplicate"),
      refused: n("rejected") + n("unauthorized"),
      dropped: await countsBy(metrics.eventsDropped, "reason"),
    };
  }

  agents(): AgentView[] {
    return this.deps.agents.records.entries().map(([name, record]) => this.view(name, record));
  }

  agent(name: string): AgentView | undefined {
    const record = this.deps.agents.records.get(name);
    return record ? this.view(name, record) : undefined;
  }

  async addAgent(name: string, progress?: ProgressSink): Promise<AgentView> {
    const hasDir = existsSync(agentStateDir(this.deps.service.config, name));
    progress?.(
      hasDir
        ? `provisioning ${name}: registering, writing its token, restarting its daemon…`
        : `registering ${name} (it has no state dir yet, so no token is written)…`,
    );
    const record = await this.deps.agents.add(name).catch(this.failed(name));
    progress?.(`${name}: ${record.state.replace("_", " ")}; joining the hive rooms…`);
    return this.afterChange(name, record, `agent ${name} added by command`);
  }

  async removeAgent(name: string): Promise<AgentView> {
    const record = await this.deps.agents.remove(name).catch(asCommandError);
    return this.afterChange(name, record, `agent ${name} removed by command`);
  }

  async rotateAgent(name: string): Promise<AgentView> {
    const record = await this.deps.agents.rotate(name).catch(this.failed(name));
    return this.afterChange(name, record, `agent ${name} rotated by command`);
  }

  /** A failure that the manager retries by itself is said to be in progress, not final. */
  private failed(name: string): (err: unknown) => never {
    return (err) => {
      if (!(err instanceof AgentError) || !this.deps.agents.isRetrying(name)) asCommandError(err);
      const hasDir = existsSync(agentStateDir(this.deps.service.config, name));
      throw new CommandError(
        `${err.message}. That is trouble on the homeserver's side: it is retried on its own, with backoff` +
          (hasDir ? "; this room is told when the agent is onboarded." : `; \`!hive agent info ${name}\` shows how it goes.`),
      );
    };
  }

  /**
   * Waits for the rooms reconcile that takes the change into account, then reads the agent's
   * memberships from the homeserver, so the answer shows where the agent is, not where it was.
   */
  private async afterChange(name: string, record: AgentRecord, reason: string): Promise<AgentView> {
    const report = await this.deps.loop.trigger(reason);
    const now = this.deps.agents.records.get(name) ?? record;
    const view = this.view(name, now);
    const { config } = this.deps.service;
    const names = { space: config.rooms.space.name, chat: config.rooms.chat.name };
    const problems = report ? [...report.problems] : ["the service is stopping; the rooms were not reconciled"];
    let rooms = view.rooms;
    try {
      rooms = (await this.deps.rooms.joinedRooms(now.userId)).map((key) => names[key]);
    } catch (err) {
      problems.push(
        `could not read the agent's memberships (${err instanceof Error ? err.message : String(err)}); rooms as of the last reconcile`,
      );
    }
    return { ...view, rooms, roomProblems: problems };
  }

  async invite(userId: string): Promise<string[]> {
    const result = await this.deps.rooms.invite(userId);
    const lines = [
      ...result.changes,
      ...result.unchanged.map((room) => `${userId} is already in ${room} (or invited)`),
      ...result.problems,
    ];
    return lines.length > 0 ? lines : [`nothing to do for ${userId}`];
  }

  async sync(progress?: ProgressSink): Promise<SyncReport> {
    progress?.("rescanning agents…");
    const reload = this.deps.service.reloadRegistration("!hive sync");
    if (reload.outcome === "changed") progress?.(`registration reloaded: ${reload.users} user namespace entries`);
    if (reload.outcome === "refused") progress?.(`registration not reloaded: ${reload.reason}`);
    this.deps.agents.rescan();
    const retried = this.deps.agents.retryFailed();
    if (retried.length > 0) progress?.(`retrying ${retried.length} failed agent(s): ${retried.join(", ")}`);
    await this.deps.agents.idle();
    progress?.("reconciling the Space and hive-chat…");
    const report = await this.deps.loop.trigger("sync command");
    if (!report) return { changes: [], problems: ["the service is stopping; nothing was reconciled"] };
    return { changes: report.changes, problems: report.problems };
  }

  recentLogs(level: "warn" | "error", n: number): LogEntry[] {
    const ring = logRingOf(this.deps.service.logger);
    if (!ring) return [];
    return ring.recent(LOG_LEVELS[level], n).flatMap((line) => parseLogLine(line) ?? []);
  }

  hiveRooms(): HiveRoomInfo[] {
    return this.deps.service.hiveRooms.list().map((r) => ({
      roomId: r.roomId,
      name: r.name,
      members: r.joined,
      lastActivity: r.lastActivity,
      listed: r.verdict.listed,
      why: r.verdict.why,
    }));
  }

  async setRoomListed(roomId: string, listed: boolean, by: string): Promise<HiveRoomInfo> {
    const { hiveRooms } = this.deps.service;
    const verdict = listed ? hiveRooms.pin(roomId, by) : hiveRooms.exclude(roomId, by);
    if (!verdict) {
      throw new CommandError(
        `No agent of the hive is known to be in ${roomId}. hive-matrix learns of a room from its agents' events there; the Space only lists such rooms.`,
      );
    }
    await this.deps.loop.trigger(`room ${roomId} ${listed ? "added" : "removed"} by ${by}`);
    const info = this.hiveRooms().find((r) => r.roomId === roomId);
    if (!info) throw new Error(`room ${roomId} vanished from the hive's rooms`);
    return info;
  }

  operators(): OperatorView[] {
    return this.deps.service.operators.list().map((o) => ({ userId: o.userId, source: o.source, addedBy: o.addedBy, addedAt: o.at }));
  }

  async addOperator(userId: string, addedBy: string): Promise<string[]> {
    const { service, loop } = this.deps;
    if (!service.operators.add(userId, addedBy)) {
      const where = service.operators.isConfigured(userId) ? "in the config file" : "added from chat";
      throw new CommandError(`${userId} is an operator already (${where}).`);
    }
    service.logger.info({ userId, addedBy }, "operator added from the control room");
    const lines = [`${userId} is an operator now (kept in ${service.state.path("operators.json")})`];
    // Invited even if they once left the hive rooms: being made an operator is asking to be in.
    lines.push(...(await this.invite(userId)));
    await service.control.refreshOperators();
    const report = await loop.trigger(`operator ${userId} added`);
    lines.push(...(report?.changes.filter((c) => c.includes(userId)) ?? []), ...(report?.problems ?? []));
    return lines;
  }

  async removeOperator(userId: string): Promise<void> {
    const { operators, logger } = this.deps.service;
    if (operators.isConfigured(userId)) {
      throw new CommandError(
        `${userId} is an operator from the config file (operators); remove them there and restart hive-matrix. Chat can only remove operators added from chat.`,
      );
    }
    if (!operators.remove(userId)) throw new CommandError(`${userId} is not an operator.`);
    logger.info({ userId }, "operator removed from the control room");
  }

  roomIds(): { spaceId?: string; chatId?: string } {
    return { spaceId: this.deps.rooms.spaceId, chatId: this.deps.rooms.chatId };
  }

  async recreateRooms(progress?: ProgressSink): Promise<SyncReport> {
    const previous = await this.deps.rooms.forgetRooms();
    progress?.(`forgot the Space ${previous.space ?? "(none)"} and hive-chat ${previous.chat ?? "(none)"}; creating new rooms…`);
    const report = await this.deps.loop.trigger("rooms recreate command");
    if (!report) return { changes: [], problems: ["the service is stopping; nothing was created"] };
    return { changes: report.changes, problems: report.problems };
  }

  private view(name: string, record: AgentRecord): AgentView {
    const { config } = this.deps.service;
    const stateDir = agentStateDir(config, name);
    const tokenFile = tokenFileStatus(config.agents.stateRoot, name);
    return {
      name,
      userId: record.userId,
      state: record.state,
      reason: record.reason,
      stateDir,
      tokenFile,
      rooms: record.state === "joined" ? [config.rooms.space.name, config.rooms.chat.name] : [],
      source: record.source,
      updatedAt: record.updatedAt,
      activity: this.deps.service.activity.describe(name),
    };
  }
}
