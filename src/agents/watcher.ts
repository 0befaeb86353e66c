/**
 * Notices agents coming and going while running: an fs.watch on stateRoot (and on agent dirs
 * whose `state/` does not exist yet), debounced, with a periodic rescan as the fallback for
 * file systems where inotify is missing or misses events (NFS, overlay mounts, a re-created root).
 */
import { watch, type FSWatcher } from "node:fs";
import { errorFields, type Logger } from "../logging";

export class AgentWatcher {
  private rootWatcher: FSWatcher | undefined;
  private readonly pendingWatchers = new Map<string, FSWatcher>();
  private interval: NodeJS.Timeout | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly stateRoot: string,
    private readonly rescanMs: number,
    private readonly onChange: () => void,
    private readonly log: Logger,
    private readonly debounceMs = 150,
  ) {}

  start(): void {
    this.watchRoot();
    this.interval = setInterval(() => {
      // Re-arm a watch lost when stateRoot was (re)created after startup.
      if (!this.rootWatcher) this.watchRoot();
      this.fire();
    }, this.rescanMs);
    this.interval.unref();
  }

  stop(): void {
    this.stopped = true;
    this.rootWatcher?.close();
    this.rootWatcher = undefined;
    this.watchPending([]);
    clearInterval(this.interval);
    clearTimeout(this.debounce);
  }

  private watchRoot(): void {
    try {
      // Not recursive: agents write into their own dirs all the time, and only the top level matters.
      this.rootWatcher = watch(this.stateRoot, { persistent: false }, () => this.schedule());
      this.rootWatcher.on("error", (err) => {
        this.log.debug(errorFields(err), "watch on the agents' state root ended; the periodic rescan continues");
        this.rootWatcher?.close();
        this.rootWatcher = undefined;
      });
    } catch (err) {
      this.rootWatcher = undefined;
      this.log.debug(errorFields(err), "cannot watch the agents' state root; relying on the periodic rescan");
    }
  }

  /** Watches agent dirs that exist without `state/` yet (an agent dir usually appears before its state dir). */
  watchPending(dirs: string[]): void {
    const wanted = new Set(this.stopped ? [] : dirs);
    for (const [dir, watcher] of this.pendingWatchers) {
      if (wanted.has(dir)) continue;
      watcher.close();
      this.pendingWatchers.delete(dir);
    }
    for (const dir of wanted) {
      if (this.pendingWatchers.has(dir)) continue;
      try {
        const watcher = watch(dir, { persistent: false }, () => this.schedule());
        watcher.on("error", () => {
          watcher.close();
          this.pendingWatchers.delete(dir);
        });
        this.pendingWatchers.set(dir, watcher);
      } catch {
        // Gone already, or not watchable: the periodic rescan covers it.
      }
    }
  }

  private schedule(): void {
    if (this.stopped || this.debounce) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.fire();
    }, this.debounceMs);
    this.debounce.unref();
  }

  private fire(): void {
    if (this.stopped) return;
    try {
      this.onChange();
    } catch (err) {
      this.log.error(errorFields(err), "agent rescan failed");
    }
  }
}
