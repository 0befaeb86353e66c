/**
 * An agent's Matrix session: the access token of its one stable device. Every path ends with
 * exactly one live device: a fresh user gets its token from /register; an existing user (adopted,
 * a lost token file, a rotation, an interrupted earlier attempt) gets a login, then /logout/all
 * with that token (which also kills any device an interrupted attempt may have left), then the
 * final login. /logout/all is the one revocation that needs no user-interactive auth.
 */
import { isMatrixError, type HomeserverTransport } from "../matrix/transport";

export interface Session {
  accessToken: string;
  deviceId: string;
}

export function agentDeviceId(name: string): string {
  return `HIVEMATRIX_${name.toUpperCase()}`;
}

export type TokenCheck = { valid: true } | { valid: false; reason: string };

/**
 * Whether `token` is a live session of `userId` on our device. A token of another device (from the
 * older flow, or typed in by hand) is not ours to keep: it is replaced so that rotation and removal
 * can revoke everything.
 */
export async function checkToken(transport: HomeserverTransport, token: string, userId: string, deviceId: string): Promise<TokenCheck> {
  try {
    const who = await transport.request<{ user_id?: string; device_id?: string }>("GET", "/_matrix/client/v3/account/whoami", {
      accessToken: token,
    });
    if (who.user_id?.toLowerCase() !== userId.toLowerCase()) return { valid: false, reason: `belongs to ${who.user_id ?? "nobody"}` };
    if (who.device_id !== undefined && who.device_id !== deviceId) return { valid: false, reason: `is for device ${who.device_id}` };
    return { valid: true };
  } catch (err) {
    if (isMatrixError(err, "M_UNKNOWN_TOKEN") || isMatrixError(err, "M_MISSING_TOKEN")) return { valid: false, reason: "was revoked" };
    if (isMatrixError(err, "M_FORBIDDEN") || isMatrixError(err, "M_USER_DEACTIVATED")) {
      return { valid: false, reason: `is refused (${err.errcode})` };
    }
    throw err;
  }
}

export async function login(transport: HomeserverTransport, localpart: string, deviceId: string, displayName: string): Promise<Session> {
  const res = await transport.request<{ access_token: string; device_id: string }>("POST", "/_matrix/client/v3/login", {
    body: {
      type: "m.login.application_service",
      identifier: { type: "m.id.user", user: localpart },
      device_id: deviceId,
      initial_device_display_name: displayName,
    },
    kind: "agent.login",
  });
  return { accessToken: res.access_token, deviceId: res.device_id ?? deviceId };
}

/** Invalidates every token and device of the token's user. */
export async function logoutAll(transport: HomeserverTransport, token: string): Promise<void> {
  try {
    await transport.request("POST", "/_matrix/client/v3/logout/all", { accessToken: token, body: {}, kind: "agent.logout_all" });
  } catch (err) {
    // Already revoked: the goal (no live token) holds.
    if (!isMatrixError(err, "M_UNKNOWN_TOKEN")) throw err;
  }
}

/** A new session on the stable device, after revoking every earlier one. */
export async function freshSession(
  transport: HomeserverTransport,
  localpart: string,
  deviceId: string,
  displayName: string,
  knownToken?: string,
): Promise<Session> {
  const revoker = knownToken ?? (await login(transport, localpart, deviceId, displayName)).accessToken;
  await logoutAll(transport, revoker);
  return login(transport, localpart, deviceId, displayName);
}

/** Revokes every session of the user without keeping one (agent removal). */
export async function revokeAll(transport: HomeserverTransport, localpart: string, deviceId: string, knownToken?: string): Promise<void> {
  const token = knownToken ?? (await login(transport, localpart, deviceId, "hive-matrix revocation")).accessToken;
  await logoutAll(transport, token);
}
