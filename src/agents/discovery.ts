/** Agents on disk: an agent exists when `<stateRoot>/<name>/state/` is a directory. */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/schema";
import { agentNameProblem } from "./names";

export interface Discovery {
  names: string[];
  /** Directories that look like agents but whose names are refused, with the reason. */
  refused: { name: string; reason: string }[];
}

export function agentStateDir(config: Config, name: string): string {
  return join(config.agents.stateRoot, name, "state");
}

export function discoverAgents(config: Config): Discovery {
  const names = new Set<string>();
  const refused: { name: string; reason: string }[] = [];
  let entries: string[] = [];
  try {
    entries = readdirSync(config.agents.stateRoot);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  for (const entry of entries) {
    let isAgent = false;
    try {
      isAgent = statSync(join(config.agents.stateRoot, entry, "state")).isDirectory();
    } catch {
      isAgent = false;
    }
    if (!isAgent) continue;
    const problem = agentNameProblem(entry, config.agents.maxNameLength);
    if (problem) refused.push({ name: entry, reason: problem });
    else names.add(entry);
  }
  for (const name of config.agents.names) names.add(name);
  return { names: [...names].sort(), refused };
}
