/**
 * Creating users in the appservice namespace. "Ensure registered" is a /register call that takes
 * M_USER_IN_USE as success: it works on Synapse and on tuwunel, whose whoami never fails for an
 * appservice and so cannot tell whether a user exists.
 */
import type { HomeserverTransport } from "./transport";
import { isMatrixError } from "./transport";

export class NamespaceError extends Error {
  constructor(
    readonly userId: string,
    detail: string,
  ) {
    super(
      `the homeserver refused ${userId} as outside the appservice's namespace (${detail}); ` +
        "make sure the homeserver loaded the current registration (`hive-matrix registration` writes it; Synapse and tuwunel read it at start, so restart them); " +
        "hive-matrix retries by itself after the file changes and when the homeserver is back",
    );
    this.name = "NamespaceError";
  }
}

export class AsTokenError extends Error {
  constructor(detail: string) {
    super(
      `the homeserver does not accept our as_token (${detail}): it has not loaded this registration, or an older one. ` +
        "Synapse: list the file in app_service_config_files and restart; tuwunel: `!admin appservices register` with its contents, or put it in appservice_dir",
    );
    this.name = "AsTokenError";
  }
}

export interface RegisterResult {
  userId: string;
  created: boolean;
  accessToken?: string;
  deviceId?: string;
}

export async function ensureRegistered(
  transport: HomeserverTransport,
  localpart: string,
  domain: string,
  login?: { deviceId: string; displayName?: string },
): Promise<RegisterResult> {
  const userId = `@${localpart}:${domain}`;
  try {
    const res = await transport.request<{ user_id: string; access_token?: string; device_id?: string }>(
      "POST",
      "/_matrix/client/v3/register",
      {
        body: {
          type: "m.login.application_service",
          username: localpart,
          inhibit_login: !login,
          ...(login ? { device_id: login.deviceId, initial_device_display_name: login.displayName } : {}),
        },
        kind: "register",
      },
    );
    // tuwunel lower-cases usernames; our localparts are lower-case already, so compare case-insensitively.
    return {
      userId: res.user_id && res.user_id.toLowerCase() === userId.toLowerCase() ? res.user_id : userId,
      created: true,
      accessToken: res.access_token,
      deviceId: res.device_id,
    };
  } catch (err) {
    if (isMatrixError(err, "M_USER_IN_USE")) return { userId, created: false };
    // Synapse answers M_FORBIDDEN (or M_EXCLUSIVE for non-AS callers), tuwunel M_EXCLUSIVE.
    if (isMatrixError(err, "M_EXCLUSIVE") || isMatrixError(err, "M_FORBIDDEN") || isMatrixError(err, "M_INVALID_USERNAME")) {
      throw new NamespaceError(userId, `${err.errcode}: ${err.error}`);
    }
    if (isMatrixError(err, "M_UNKNOWN_TOKEN") || isMatrixError(err, "M_MISSING_TOKEN")) {
      throw new AsTokenError(err.errcode);
    }
    throw err;
  }
}
