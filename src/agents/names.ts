/** Agent names and the user IDs derived from them. */
import { AGENT_NAME_PATTERN, type Config } from "../config/schema";

/** Returns why `name` is not a valid agent name, or undefined when it is. */
export function agentNameProblem(name: string, maxLength: number): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > maxLength) return `is longer than ${maxLength} characters`;
  if (!AGENT_NAME_PATTERN.test(name)) return "may only contain lower-case letters, digits and '-' (not first)";
  return undefined;
}

export function agentLocalpart(config: Config, name: string): string {
  return config.agents.localpart.replace("{name}", name);
}

export function agentUserId(config: Config, name: string): string {
  return `@${agentLocalpart(config, name)}:${config.homeserver.domain}`;
}
