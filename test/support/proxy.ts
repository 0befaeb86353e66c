/**
 * A TCP proxy in front of the homeserver that a test can take down and bring back, to play a
 * homeserver that is unreachable at startup or goes away mid-work, without touching the shared homeserver.
 */
import { createConnection, createServer, type Server, type Socket } from "node:net";

export class TcpProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private cut: RegExp | undefined;
  /** Requests passed on whose answer was withheld (`cutAnswerTo`). */
  cuts = 0;

  constructor(
    readonly port: number,
    private readonly target: { host: string; port: number },
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  up(): Promise<void> {
    const server = createServer((client) => {
      const upstream = createConnection(this.target);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => s.destroy());
      }
      let cutting = false;
      client.on("data", (chunk: Buffer) => {
        if (this.cut?.test(chunk.toString("latin1"))) {
          this.cut = undefined;
          cutting = true;
        }
        upstream.write(chunk);
      });
      upstream.on("data", (chunk: Buffer) => {
        if (!cutting) return void client.write(chunk);
        // The homeserver has handled the request and answers: the answer is lost with the connection.
        this.cuts++;
        client.destroy();
      });
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
  }

  /**
   * The next request whose bytes match `pattern` reaches the homeserver, which handles it, and then
   * the connection is cut before any byte of the answer: a homeserver that died just after
   * applying a request, as one restarting does.
   */
  cutAnswerTo(pattern: RegExp): void {
    this.cut = pattern;
  }

  /** Refuses new connections and cuts the open ones, like a homeserver that died. */
  down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }
}
