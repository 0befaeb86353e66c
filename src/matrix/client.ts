/**
 * matrix-bot-sdk's MatrixClient with its HTTP replaced by our transport, so the SDK's typed
 * helpers (createRoom, sendStateEvent, ...) get our retries, metrics and error mapping.
 */
import { MatrixClient } from "matrix-bot-sdk";
import type { HomeserverTransport, QueryValue } from "./transport";

export class HiveMatrixClient extends MatrixClient {
  constructor(
    private readonly transport: HomeserverTransport,
    private readonly actAs: string | null,
    private readonly token: string | null = null,
  ) {
    super(transport.baseUrl, token ?? "unused-token-transport-authenticates");
    if (actAs) this.impersonateUserId(actAs);
  }

  // The SDK types these parameters loosely; we narrow what we pass on.
  override doRequest(
    method: string,
    endpoint: string,
    qs: Record<string, QueryValue> | null = null,
    body: unknown = null,
    timeout = 60_000,
  ): Promise<unknown> {
    const query = { ...(qs ?? {}) };
    delete query.user_id;
    return this.transport.request(method, endpoint.startsWith("/") ? endpoint : `/${endpoint}`, {
      query,
      body: body === null ? undefined : body,
      asUser: this.actAs ?? undefined,
      accessToken: this.token ?? undefined,
      timeoutMs: timeout,
    });
  }
}
