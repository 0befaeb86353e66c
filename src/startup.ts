/**
 * Startup against the homeserver, in the order that makes failures explicable: wait until it
 * answers /versions, make sure the bot exists (which proves the as_token), then ask the
 * homeserver to ping us back (which proves the URL and the hs_token in the other direction).
 */
import { randomBytes } from "node:crypto";
import type { Logger } from "./logging";
import { errorFields } from "./logging";
import { isMatrixError, type HomeserverTransport } from "./matrix/transport";

export interface Versions {
  versions: string[];
  unstable_features?: Record<string, boolean>;
}

export async function waitForHomeserver(
  transport: HomeserverTransport,
  logger: Logger,
  opts: { maxWaitSeconds: number; signal?: AbortSignal; sleep?: (ms: number) => Promise<void> },
): Promise<Versions> {
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    try {
      const versions = await transport.request<Versions>("GET", "/_matrix/client/versions", {
        accessToken: null,
        retry: "never",
        timeoutMs: 10_000,
      });
      if (attempt > 1) logger.info({ attempt, waitedMs: Date.now() - started }, "homeserver is reachable");
      return versions;
    } catch (err) {
      const waited = (Date.now() - started) / 1000;
      if (opts.maxWaitSeconds > 0 && waited >= opts.maxWaitSeconds) {
        throw new Error(
          `homeserver ${transport.baseUrl} did not answer /versions within ${opts.maxWaitSeconds}s (${errorFields(err).err})`,
        );
      }
      if (opts.signal?.aborted) throw new Error("startup aborted");
      const delay = Math.min(30_000, 1000 * 2 ** Math.min(attempt - 1, 5));
      logger.warn({ attempt, retryInMs: delay, url: transport.baseUrl, ...errorFields(err) }, "waiting for the homeserver");
      await sleep(delay);
    }
  }
}

export type PingResult = { ok: true; durationMs: number } | { ok: false; unsupported?: boolean; errcode: string; cause: string };

/** POST /_matrix/client/v1/appservice/{id}/ping: the homeserver calls our /ping and reports. */
export async function pingFromHomeserver(transport: HomeserverTransport, appserviceId: string, appserviceUrl: string): Promise<PingResult> {
  const transactionId = `hive-matrix-${randomBytes(8).toString("hex")}`;
  try {
    const res = await transport.request<{ duration_ms: number }>(
      "POST",
      `/_matrix/client/v1/appservice/${encodeURIComponent(appserviceId)}/ping`,
      { body: { transaction_id: transactionId }, retry: "never", timeoutMs: 30_000 },
    );
    return { ok: true, durationMs: res.duration_ms };
  } catch (err) {
    if (isMatrixError(err)) {
      const body = err.body as { status?: number; body?: string };
      switch (err.errcode) {
        case "M_UNRECOGNIZED":
          return {
            ok: false,
            unsupported: true,
            errcode: err.errcode,
            cause: "the homeserver does not support the appservice ping endpoint",
          };
        case "M_CONNECTION_FAILED":
          return {
            ok: false,
            errcode: err.errcode,
            cause: `the homeserver cannot connect to appservice.url ${appserviceUrl}: check the URL, bind address, port and firewall as seen from the homeserver`,
          };
        case "M_CONNECTION_TIMEOUT":
          return { ok: false, errcode: err.errcode, cause: `the homeserver timed out reaching appservice.url ${appserviceUrl}` };
        case "M_BAD_STATUS":
          return badStatus(err.errcode, body.status);
        case "M_FORBIDDEN":
          return {
            ok: false,
            errcode: err.errcode,
            cause: `the homeserver does not know appservice id "${appserviceId}": appservice.id must equal the id in the loaded registration`,
          };
        default: {
          // tuwunel has no M_BAD_STATUS: it answers M_UNKNOWN, naming the appservice's status in the message.
          const status = TUWUNEL_BAD_STATUS.exec(err.error ?? "")?.[1];
          if (status !== undefined) return badStatus(err.errcode, Number(status));
          return { ok: false, errcode: err.errcode, cause: err.error ?? err.message };
        }
      }
    }
    return { ok: false, errcode: "NETWORK", cause: errorFields(err).err };
  }
}

const TUWUNEL_BAD_STATUS = /returned unsuccessful HTTP response (\d{3})\b/;

/** The appservice answered the homeserver's ping with a non-2xx status. */
function badStatus(errcode: string, status: number | undefined): PingResult {
  if (status === 401 || status === 403) {
    return {
      ok: false,
      errcode,
      cause: `the appservice refused the homeserver's hs_token (HTTP ${status}): the homeserver's copy of the registration has a different hs_token; reload the registration on the homeserver`,
    };
  }
  return { ok: false, errcode, cause: `the appservice answered the homeserver's ping with HTTP ${status ?? "?"}` };
}
