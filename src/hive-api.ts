/**
 * The control room's view of the hive (HiveApi), implemented on the agent manager and the rooms
 * reconciler. Chat concerns stay in src/control; hive logic stays in src/agents and src/rooms.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { AgentError, type AgentManager } from "./agents/manager";
import { agentStateDir } from "./agents/discovery";
import type { AgentRecord } from "./agents/records";
import { CommandError, type AgentView, type HiveApi, type HiveStatus, type ProgressSink, type SyncReport } from "./control/api";
import type { ReconcileLoop } from "./rooms/loop";
import type { RoomsReconciler } from "./rooms/reconciler";
import { NamespaceError } from "./matrix/users";
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
      rooms: { spaceId: rooms.spaceId, chatId: rooms.chatId, controlRoomId: this.deps.controlRoomId() },
      lastReconcile: last ? { at: last.at, changes: last.changes.length, problems: last.problems } : undefined,
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
    progress?.(`provisioning ${name}: registering, writing its token, restarting its daemon…`);
    const record = await this.deps.agents.add(name).catch(asCommandError);
    progress?.(`${name}: ${record.state.replace("_", " ")}; joining the hive rooms…`);
    await this.deps.loop.trigger(`agent ${name} added by command`);
    return this.view(name, this.deps.agents.records.get(name) ?? record);
  }

  async removeAgent(name: string): Promise<AgentView> {
    const record = await this.deps.agents.remove(name).catch(asCommandError);
    await this.deps.loop.trigger(`agent ${name} removed by command`);
    return this.view(name, this.deps.agents.records.get(name) ?? record);
  }

  async rotateAgent(name: string): Promise<AgentView> {
    const record = await this.deps.agents.rotate(name).catch(asCommandError);
    return this.view(name, record);
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
    this.deps.agents.rescan();
    const retried = this.deps.agents.retryFailed();
    if (retried.length > 0) progress?.(`retrying ${retried.length} failed agent(s): ${retried.join(", ")}`);
    await this.deps.agents.idle();
    progress?.("reconciling the Space and hive-chat…");
    const report = await this.deps.loop.trigger("sync command");
    if (!report) return { changes: [], problems: ["the service is stopping; nothing was reconciled"] };
    return { changes: report.changes, problems: report.problems };
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
    const tokenFile = !existsSync(stateDir) ? "none" : existsSync(join(stateDir, "matrix-token")) ? "ok" : "missing";
    return {
      name,
      userId: record.userId,
      state: record.state,
      reason: record.reason,
      tokenFile,
      rooms: record.state === "joined" ? [config.rooms.space.name, config.rooms.chat.name] : [],
      source: record.source,
      updatedAt: record.updatedAt,
    };
  }
}
