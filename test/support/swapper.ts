/**
 * A hostile tenant in a thread of its own: renames a path back and forth between a real directory
 * and symlinks, as fast as it can, while the test's thread does its work (a separate thread, so the
 * swaps really interleave with synchronous file operations).
 */
import { Worker } from "node:worker_threads";

/** Cycles `place` through: the real dir, nothing, each link, nothing; stops after a whole cycle. */
const SWAPPER = `
const { workerData } = require("node:worker_threads");
const { renameSync } = require("node:fs");
const flags = new Int32Array(workerData.flags);
const { place, real, links, holdMs } = workerData;
const hold = () => holdMs > 0 && Atomics.wait(flags, 2, 0, holdMs);
let cycles = 0;
while (Atomics.load(flags, 0) === 0) {
  for (const parked of links) {
    renameSync(real, place);
    hold();
    renameSync(place, real);
    renameSync(parked, place);
    hold();
    renameSync(place, parked);
  }
  cycles++;
}
Atomics.store(flags, 1, cycles);
`;

export interface Swapper {
  /** Stops after the current cycle (the real dir and the links back at rest); resolves with the cycles done. */
  stop(): Promise<number>;
}

/**
 * Starts swapping `place`: the real dir rests at `real`, each link at its own path in `links`.
 * `holdMs` keeps each of them in place that long (0: swap as fast as possible), so that slower
 * work (a run with homeserver requests) also sees the dir change under it.
 * Always call stop(), also when the test failed: a running swapper keeps jest alive.
 */
export function startSwapper(place: string, real: string, links: string[], holdMs = 0): Swapper {
  const flags = new SharedArrayBuffer(12);
  const view = new Int32Array(flags);
  const worker = new Worker(SWAPPER, { eval: true, workerData: { flags, place, real, links, holdMs } });
  const exited = new Promise<void>((resolve, reject) => {
    worker.on("error", reject);
    worker.on("exit", () => resolve());
  });
  return {
    async stop() {
      Atomics.store(view, 0, 1);
      await exited;
      return Atomics.load(view, 1);
    },
  };
}
