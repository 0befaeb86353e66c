/**
 * A minimal homeserver stand-in for unit tests of pure logic. It behaves like Synapse or like
 * tuwunel where docs/architecture.md says they differ: tuwunel answers M_EXCLUSIVE instead of M_FORBIDDEN,
 * lower-cases usernames, and sends the hs_token both as a Bearer header and as a query parameter.
 * End-to-end behaviour is proven against a real Synapse in test/e2e.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type Flavour = "synapse" | "tuwunel";

export interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  authorization?: string;
  body: unknown;
}

export interface FakeHomeserverOptions {
  flavour: Flavour;
  asToken: string;
  /** The hs_token this homeserver sends when it calls the appservice. */
  hsToken: string;
  domain: string;
  /** Localpart regex of the appservice namespace. */
  namespace: RegExp;
  appserviceUrl?: string;
}

type Override = (req: RecordedRequest, res: ServerResponse) => boolean;

export class FakeHomeserver {
  readonly requests: RecordedRequest[] = [];
  readonly users = new Set<string>();
  private server: Server | undefined;
  private overrides: Override[] = [];
  url = "";

  constructor(readonly options: FakeHomeserverOptions) {}

  /** Lets a test answer some requests itself (return true when handled). */
  override(fn: Override): void {
    this.overrides.push(fn);
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server?.close(() => resolve());
      this.server?.closeAllConnections();
    });
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString("utf8");
    const url = new URL(req.url ?? "/", "http://x");
    const rec: RecordedRequest = {
      method: req.method ?? "GET",
      path: url.pathname,
      query: url.searchParams,
      authorization: req.headers.authorization,
      body: text ? (JSON.parse(text) as unknown) : undefined,
    };
    this.requests.push(rec);
    for (const o of this.overrides) if (o(rec, res)) return;
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { "Content-Type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (rec.path === "/_matrix/client/versions") return send(200, { versions: ["v1.11"] });
    if (rec.authorization !== `Bearer ${this.options.asToken}`) return send(401, { errcode: "M_UNKNOWN_TOKEN", error: "Unknown token" });
    if (rec.path === "/_matrix/client/v3/register" && rec.method === "POST") {
      const body = rec.body as { username: string };
      const localpart = this.options.flavour === "tuwunel" ? body.username.toLowerCase() : body.username;
      if (!this.options.namespace.test(localpart)) {
        return send(
          400,
          this.options.flavour === "tuwunel"
            ? { errcode: "M_EXCLUSIVE", error: "not in namespace" }
            : { errcode: "M_FORBIDDEN", error: "not in namespace" },
        );
      }
      const userId = `@${localpart}:${this.options.domain}`;
      if (this.users.has(userId)) return send(400, { errcode: "M_USER_IN_USE", error: "taken" });
      this.users.add(userId);
      return send(200, { user_id: userId });
    }
    const ping = /^\/_matrix\/client\/v1\/appservice\/([^/]+)\/ping$/.exec(rec.path);
    if (ping && rec.method === "POST") {
      const started = Date.now();
      const target = new URL(`${this.options.appserviceUrl}/_matrix/app/v1/ping`);
      if (this.options.flavour === "tuwunel") target.searchParams.set("access_token", this.options.hsToken);
      const r = await fetch(target, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.options.hsToken}`, "Content-Type": "application/json" },
        body: JSON.stringify({ transaction_id: (rec.body as { transaction_id?: string }).transaction_id }),
      }).catch(() => undefined);
      if (!r) return send(502, { errcode: "M_CONNECTION_FAILED", error: "failed" });
      if (!r.ok && this.options.flavour === "tuwunel") {
        // tuwunel 1.4 has no M_BAD_STATUS: its generic error names the status in the message.
        const error = `Appservice "${ping[1]}" returned unsuccessful HTTP response ${r.status} ${r.statusText} at ${this.options.appserviceUrl}`;
        return send(500, { errcode: "M_UNKNOWN", error });
      }
      if (!r.ok) return send(502, { errcode: "M_BAD_STATUS", error: "bad status", status: r.status, body: await r.text() });
      return send(200, { duration_ms: Date.now() - started });
    }
    if (/\/profile\//.test(rec.path)) return send(rec.method === "GET" ? 200 : 200, rec.method === "GET" ? {} : {});
    return send(404, { errcode: "M_UNRECOGNIZED", error: "fake homeserver: not implemented" });
  }

  /** Sends a transaction to the appservice the way this flavour authenticates. */
  async pushTransaction(txnId: string, body: unknown, hsToken = this.options.hsToken): Promise<{ status: number; body: unknown }> {
    const target = new URL(`${this.options.appserviceUrl}/_matrix/app/v1/transactions/${encodeURIComponent(txnId)}`);
    if (this.options.flavour === "tuwunel") target.searchParams.set("access_token", hsToken);
    const r = await fetch(target, {
      method: "PUT",
      headers: { Authorization: `Bearer ${hsToken}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: r.status, body: (await r.json()) as unknown };
  }
}
