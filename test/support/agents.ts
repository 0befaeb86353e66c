/** Agent fixtures for e2e tests: fresh names, state dirs, and what a token says about itself. */
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { request } from "./operator";

/** A valid agent name (at most 9 characters) no other test uses. */
export function uniqueName(prefix: string): string {
  return `${prefix}${randomBytes(3).toString("hex")}`.slice(0, 9);
}

/** Creates `<stateRoot>/<name>/state` (the agent exists from then on) and returns its path. */
export function makeAgentDir(config: Config, name: string): string {
  const dir = join(config.agents.stateRoot, name, "state");
  mkdirSync(dir, { recursive: true });
  return dir;
}

export async function whoami(token: string): Promise<{ status: number; json: Record<string, unknown> }> {
  return request(token, "GET", "/_matrix/client/v3/account/whoami");
}
