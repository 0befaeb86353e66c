/**
 * The room operations the reconciler needs, as calls on the homeserver transport with a clear
 * `kind` label for the writes metric. Every write made here is also counted per instance, so a
 * reconcile can report (and a test can assert) how many state-changing requests it made.
 */
import type { HomeserverTransport } from "../matrix/transport";
import { isMatrixError } from "../matrix/transport";
import type { Logger } from "../logging";
import { errorFields } from "../logging";
import type { Content } from "./types";

const CS = "/_matrix/client/v3";
const enc = encodeURIComponent;

/** A fixed device ID, so that a session lost in a crash leaves at most one stale device behind. */
const ALIAS_DEVICE_ID = "HIVE_MATRIX_ALIASES";

export class RoomApi {
  /** State-changing requests made so far (failed ones included). */
  writes = 0;

  constructor(
    private readonly transport: HomeserverTransport,
    private readonly botUserId: string,
    private readonly logger: Logger,
  ) {}

  /** Every state event of the room, as the bot sees it. */
  async readState(roomId: string): Promise<unknown[]> {
    const events = await this.transport.request<unknown>("GET", `${CS}/rooms/${enc(roomId)}/state`, { asUser: this.botUserId });
    return Array.isArray(events) ? events : [];
  }

  /** The room an alias points to, or null when the alias does not exist. */
  async resolveAlias(alias: string): Promise<string | null> {
    try {
      const res = await this.transport.request<{ room_id?: string }>("GET", `${CS}/directory/room/${enc(alias)}`, {
        asUser: this.botUserId,
      });
      return typeof res.room_id === "string" ? res.room_id : null;
    } catch (err) {
      if (isMatrixError(err, "M_NOT_FOUND")) return null;
      throw err;
    }
  }

  /** A user's m.room.member content in the room, or undefined when they have none. */
  async membership(roomId: string, userId: string): Promise<string | undefined> {
    try {
      const content = await this.transport.request<Content>("GET", `${CS}/rooms/${enc(roomId)}/state/m.room.member/${enc(userId)}`, {
        asUser: this.botUserId,
      });
      return typeof content.membership === "string" ? content.membership : undefined;
    } catch (err) {
      if (isMatrixError(err, "M_NOT_FOUND")) return undefined;
      throw err;
    }
  }

  async createRoom(body: Record<string, unknown>): Promise<string> {
    const res = await this.write<{ room_id: string }>("POST", `${CS}/createRoom`, "room.create", { body });
    return res.room_id;
  }

  async putState(roomId: string, type: string, stateKey: string, content: Content, kind: string): Promise<void> {
    await this.write("PUT", `${CS}/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`, kind, { body: content });
  }

  /** `reason` is shown to the invited user by most clients. */
  async invite(roomId: string, userId: string, reason?: string): Promise<void> {
    // Repeated, an invite with the same content is the same invite.
    await this.write("POST", `${CS}/rooms/${enc(roomId)}/invite`, "invite", {
      body: { user_id: userId, ...(reason ? { reason } : {}) },
      idempotent: true,
    });
  }

  async unban(roomId: string, userId: string): Promise<void> {
    await this.write("POST", `${CS}/rooms/${enc(roomId)}/unban`, "unban", { body: { user_id: userId } });
  }

  /** Joins as `userId` (an appservice user: the transport impersonates it). */
  async join(roomId: string, userId: string): Promise<void> {
    await this.write("POST", `${CS}/rooms/${enc(roomId)}/join`, "join", { body: {}, asUser: userId, idempotent: true });
  }

  async leave(roomId: string, userId: string): Promise<void> {
    await this.write("POST", `${CS}/rooms/${enc(roomId)}/leave`, "leave", { body: {}, asUser: userId });
  }

  /**
   * Points `alias` at `roomId`, deleting its old mapping first when it has one. Homeservers refuse
   * alias changes made with the as_token outside the registration's alias namespace (Synapse and
   * tuwunel both answer M_EXCLUSIVE), so this runs in a short-lived login session of the bot,
   * whose requests count as the bot's own: the creator of an alias (or an admin of its room) may
   * delete it.
   */
  async setAlias(alias: string, roomId: string, from: string | null): Promise<void> {
    await this.asBotSession(async (accessToken) => {
      if (from) {
        try {
          await this.write("DELETE", `${CS}/directory/room/${enc(alias)}`, "alias.delete", { accessToken });
        } catch (err) {
          // Someone else removed it meanwhile: fine, the PUT below decides.
          if (!isMatrixError(err, "M_NOT_FOUND")) throw err;
        }
      }
      await this.write("PUT", `${CS}/directory/room/${enc(alias)}`, "alias", { body: { room_id: roomId }, accessToken });
    });
  }

  private async asBotSession(fn: (accessToken: string) => Promise<void>): Promise<void> {
    const login = await this.write<{ access_token: string }>("POST", `${CS}/login`, "login", {
      body: {
        type: "m.login.application_service",
        identifier: { type: "m.id.user", user: this.botUserId },
        device_id: ALIAS_DEVICE_ID,
        initial_device_display_name: "hive-matrix (alias changes)",
      },
    });
    try {
      await fn(login.access_token);
    } finally {
      try {
        await this.write("POST", `${CS}/logout`, "logout", { body: {}, accessToken: login.access_token });
      } catch (err) {
        this.logger.warn(errorFields(err), "could not log out the bot's alias session");
      }
    }
  }

  private write<T = unknown>(
    method: string,
    path: string,
    kind: string,
    opts: { body?: unknown; asUser?: string; accessToken?: string; idempotent?: boolean },
  ): Promise<T> {
    this.writes++;
    return this.transport.request<T>(method, path, {
      body: opts.body,
      kind,
      idempotent: opts.idempotent,
      asUser: opts.accessToken ? undefined : (opts.asUser ?? this.botUserId),
      accessToken: opts.accessToken,
    });
  }
}
