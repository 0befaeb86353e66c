/** Agents on disk: an agent exists when `<stateRoot>/<name>/state/` is a directory. */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/schema";
import { agentRefusal } from "./names";

export interface Discovery {
  /** Valid agent names found on disk, sorted. */
  discovered: string[];
  /** Discovered plus the configured and adoptable names: every agent the registration must cover. */
  names: string[];
  /** Directories that look like agents but whose names are refused (malformed, or the bot's or an operator's user), with the reason. */
  refused: { name: string; reason: string }[];
  /** Directories under stateRoot without a `state/` yet: agents being created, worth watching. */
  pending: string[];
  /** stateRoot itself does not exist (not the same as "no agents": it may be an unmounted volume). */
  missingRoot: boolean;
}

export function agentStateDir(config: Config, name: string): string {
  return join(config.agents.stateRoot, name, "state");
}

export function discoverAgents(config: Config): Discovery {
  const discovered = new Set<string>();
  const refused: { name: string; reason: string }[] = [];
  const pending: string[] = [];
  let entries: string[] = [];
  let missingRoot = false;
  try {
    entries = readdirSync(config.agents.stateRoot);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    missingRoot = true;
  }
  for (const entry of entries) {
    let isAgent = false;
    try {
      isAgent = statSync(join(config.agents.stateRoot, entry, "state")).isDirectory();
    } catch {
      isAgent = false;
    }
    if (!isAgent) {
      try {
        if (statSync(join(config.agents.stateRoot, entry)).isDirectory()) pending.push(join(config.agents.stateRoot, entry));
      } catch {
        /* vanished meanwhile */
      }
      continue;
    }
    const problem = agentRefusal(config, entry);
    if (problem) refused.push({ name: entry, reason: problem });
    else discovered.add(entry);
  }
  const names = new Set(discovered);
  for (const name of [...config.agents.names, ...config.agents.adopt]) names.add(name);
  return { discovered: [...discovered].sort(), names: [...names].sort(), refused, pending, missingRoot };
}
