/**
 * What the control room needs from the rest of the service. Commands reach agents and rooms only
 * through this interface, so they can be tested against a recording stand-in and the real agent
 * manager and rooms reconciler stay free of chat concerns.
 */
import type { LogEntry } from "../logging";
import { text, type Rich } from "./render";

export type { LogEntry };

export type AgentState = "pending" | "registered" | "token_written" | "joined" | "failed" | "removed";

export const AGENT_STATES: readonly AgentState[] = ["pending", "registered", "token_written", "joined", "failed", "removed"];

export interface AgentView {
  name: string;
  userId: string;
  state: AgentState;
  /** Why the agent is `failed` (or anything else the operator should know), in plain words. */
  reason?: string;
  /** The agent's state dir (`<stateRoot>/<name>/state`), where its token file goes. */
  stateDir: string;
  /** "none": the state dir does not exist (yet), so there is nowhere to write a token. */
  tokenFile: "ok" | "missing" | "none";
  /**
   * Names of the hive rooms the agent has joined, e.g. ["hive", "hive-chat"]. In the answer to a
   * change (add, remove, rotate) they are read from the homeserver; in lists, from the last reconcile.
   */
  rooms: string[];
  /** Only in the answer to a change: what the rooms reconcile that followed could not do (empty: it went through). */
  roomProblems?: string[];
  source: "discovered" | "config" | "command";
  /** Milliseconds since the epoch. */
  updatedAt: number;
  /** When it last sent an event: "active 2 min ago", "silent since …", "never spoke". */
  activity: string;
}

export interface HiveStatus {
  homeserver: { url: string; reachable: boolean; version?: string };
  ping?: { ok: boolean; durationMs?: number; cause?: string };
  version: string;
  uptimeSeconds: number;
  /** Agent counts by state; states with no agent may be left out. */
  agents: Partial<Record<AgentState, number>>;
  rooms: { spaceId?: string; chatId?: string; controlRoomId?: string; spaceAlias?: string; chatAlias?: string };
  lastReconcile?: { at: number; changes: number; problems: string[] };
  /**
   * Since start: transactions handled (those with a reused ID among them), replays acknowledged but
   * not handled again, refused ones; events not handled by reason. Nothing is dropped unseen.
   */
  intake?: { handled: number; reusedIds: number; replays: number; refused: number; dropped: Record<string, number> };
}

export interface OperatorView {
  userId: string;
  /** "config": from the config file, not removable from chat; "command": added with `!hive operator add`. */
  source: "config" | "command";
  addedBy?: string;
  /** Milliseconds since the epoch. */
  addedAt?: number;
}

export interface HiveRoomInfo {
  roomId: string;
  name?: string;
  /** Joined members' user IDs. */
  members: string[];
  /** Milliseconds since the epoch of the last event seen there. */
  lastActivity?: number;
  listed: boolean;
  /** Why it is (or is not) listed, e.g. "hive members only (2 agents)". */
  why: string;
}

export interface SyncReport {
  /** One human-readable line per change made. */
  changes: string[];
  /** One human-readable line per problem that could not be repaired. */
  problems: string[];
}

/** Receives one human-readable line per step of long work (shown by editing one message). */
export type ProgressSink = (line: string) => void;

/**
 * Throw this (from the api or a command) when the operator did something that cannot be done and
 * the message says what to do instead: an unknown agent, a name that is taken. Its message is
 * shown in the room as is. Any other exception is an internal error: the operator is told to look
 * at the service log, where the details go.
 */
export class CommandError extends Error {
  /** What the room is shown; commands may pass formatted text, the api passes a plain sentence. */
  readonly display: Rich;

  constructor(message: string | Rich) {
    super(typeof message === "string" ? message : message.text);
    this.name = "CommandError";
    this.display = typeof message === "string" ? text(message) : message;
  }
}

export interface HiveApi {
  status(): Promise<HiveStatus>;
  agents(): AgentView[];
  agent(name: string): AgentView | undefined;
  /** Provisions a new agent (name already validated against the agent name rules). */
  addAgent(name: string, progress?: ProgressSink): Promise<AgentView>;
  /** Logs the agent out and makes it leave the hive rooms (as config.agents.onRemove says); the account is kept. */
  removeAgent(name: string): Promise<AgentView>;
  /** Logs the agent's sessions out, writes a new token file and restarts its daemon. */
  rotateAgent(name: string): Promise<AgentView>;
  /** Invites a user (already validated as a user ID outside the appservice namespace) into the Space and hive-chat. */
  invite(userId: string): Promise<string[]>;
  /** Reconciles now. */
  sync(progress?: ProgressSink): Promise<SyncReport>;
  /** The IDs of the Space and hive-chat as known now. */
  roomIds(): { spaceId?: string; chatId?: string };
  /** The last `n` warnings and errors (`level` "warn": warnings and worse; "error": errors and worse), oldest first. */
  recentLogs(level: "warn" | "error", n: number): LogEntry[];
  operators(): OperatorView[];
  /** The rooms agents are in besides the hive's own, listed in the Space or not. */
  hiveRooms(): HiveRoomInfo[];
  /**
   * Lists (`listed` true) or unlists a room an agent is in, by an operator's decision, and
   * reconciles. A CommandError when no agent of the hive is known to be in it.
   */
  setRoomListed(roomId: string, listed: boolean, by: string): Promise<HiveRoomInfo>;
  /**
   * Makes `userId` (already validated as a user ID outside the appservice namespace) an operator,
   * kept in the state dir, and invites them into the hive rooms; returns what was done, one line each.
   * A CommandError when they are one already.
   */
  addOperator(userId: string, addedBy: string): Promise<string[]>;
  /** Removes an operator added from chat. A CommandError for a config operator or a user who is none. */
  removeOperator(userId: string): Promise<void>;
  /** Forgets the Space and hive-chat and reconciles, which creates new ones. */
  recreateRooms(progress?: ProgressSink): Promise<SyncReport>;
}
