/**
 * The registration as the running service uses it, re-read when its file changes (a watch on its
 * directory, debounced) or when asked (SIGHUP, `!hive sync`). With the bare `{name}` template
 * every new agent needs a registration that lists it; without this, the service would keep the
 * namespaces it read at start until someone restarted it, and nobody would be told.
 *
 * Only the user namespaces may change while running. A file that does not load, whose regexes do
 * not compile, or that changes the ID, the bot or a token is refused with one log line naming the
 * problem, and the registration in use stays as it was: tokens are shared with the homeserver, so
 * they change only with a restart of both.
 */
import { EventEmitter } from "node:events";
import { watch, type FSWatcher } from "node:fs";
import { basename, dirname } from "node:path";
import { errorFields, type Logger } from "./logging";
import { loadRegistration, type Registration } from "./registration";

export type ReloadResult = { outcome: "changed"; users: number } | { outcome: "unchanged" } | { outcome: "refused"; reason: string };

const DEBOUNCE_MS = 300;

function compile(registration: Registration): RegExp[] {
  return registration.namespaces.users.map((ns) => new RegExp(ns.regex));
}

/** Emits "changed" (registration) after a reload that changed the user namespaces. */
export class LiveRegistration extends EventEmitter {
  private registration: Registration;
  private patterns: RegExp[];
  private watcher: FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  constructor(
    private readonly path: string,
    initial: Registration,
    logger: Logger,
  ) {
    super();
    this.registration = initial;
    this.patterns = compile(initial);
    this.log = logger.child({ module: "registration" });
  }

  get current(): Registration {
    return this.registration;
  }

  /** The user namespaces in use, compiled. */
  userPatterns(): readonly RegExp[] {
    return this.patterns;
  }

  /** Re-reads the file; see the module comment for what is refused. Never throws. */
  reload(trigger: string): ReloadResult {
    let next: Registration;
    let patterns: RegExp[];
    try {
      next = loadRegistration(this.path);
      patterns = compile(next);
    } catch (err) {
      return this.refuse(trigger, err instanceof Error ? err.message : String(err));
    }
    const old = this.registration;
    const changed = (["id", "sender_localpart", "as_token", "hs_token"] as const).filter((k) => next[k] !== old[k]);
    if (changed.length > 0) {
      // Names only, never the values: two of them are secrets.
      return this.refuse(
        trigger,
        `it changes ${changed.join(", ")}, which needs a restart of hive-matrix (and the homeserver must load the same file)`,
      );
    }
    if (JSON.stringify(next.namespaces.users) === JSON.stringify(old.namespaces.users)) {
      this.log.debug({ trigger }, "registration re-read: user namespaces unchanged");
      return { outcome: "unchanged" };
    }
    this.registration = { ...old, namespaces: next.namespaces };
    this.patterns = patterns;
    const users = next.namespaces.users.length;
    this.log.info({ trigger, users }, `registration reloaded: ${users} user namespace entr${users === 1 ? "y" : "ies"} in use`);
    this.emit("changed", this.registration);
    return { outcome: "changed", users };
  }

  /**
   * Watches the file's directory: the registration command replaces the file by a rename, which a
   * watch on the file itself would not follow. Without a usable watch, SIGHUP and `!hive sync` still reload.
   */
  watch(): void {
    if (this.watcher) return;
    const file = basename(this.path);
    try {
      this.watcher = watch(dirname(this.path), { persistent: false }, (_event, name) => {
        if (name !== null && name !== file) return;
        clearTimeout(this.debounce);
        this.debounce = setTimeout(() => this.reload("file changed"), DEBOUNCE_MS);
        this.debounce.unref();
      });
      this.watcher.on("error", (err) => {
        this.log.warn(errorFields(err), "watching the registration file failed; reload it with SIGHUP or `!hive sync`");
        this.stop();
      });
    } catch (err) {
      // A registration handed over in memory (an embedder, a test) may have no directory at all.
      const level = (err as NodeJS.ErrnoException).code === "ENOENT" ? "debug" : "warn";
      this.log[level](errorFields(err), "cannot watch the registration file; reload it with SIGHUP or `!hive sync`");
    }
  }

  stop(): void {
    clearTimeout(this.debounce);
    this.debounce = undefined;
    this.watcher?.close();
    this.watcher = undefined;
  }

  private refuse(trigger: string, reason: string): ReloadResult {
    this.log.error({ trigger, path: this.path }, `registration ${this.path} not reloaded: ${reason}; still using the one loaded before`);
    return { outcome: "refused", reason };
  }
}
