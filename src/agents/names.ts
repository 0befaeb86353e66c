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

export function botUserId(config: Config): string {
  return `@${config.appservice.botLocalpart}:${config.homeserver.domain}`;
}

/** User IDs compare without case: tuwunel lower-cases localparts, and old accounts may not be. */
export function sameUser(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/**
 * Why the agent `name` must not exist even though its name is well formed: its user would be the
 * bot or an operator. With the bare `{name}` template any directory name is a user ID, so this is
 * what stops `<stateRoot>/hive/state` from making hive-matrix hand the bot's account to a tenant.
 */
export function agentIdentityProblem(config: Config, name: string): string | undefined {
  const userId = agentUserId(config, name);
  if (sameUser(userId, botUserId(config))) return `would be the bot's own user ${userId}`;
  if (config.operators.some((op) => sameUser(op, userId))) return `would be the operator ${userId}`;
  return undefined;
}

/** Every reason to refuse `name` as an agent: malformed, or mapping to the bot or an operator. */
export function agentRefusal(config: Config, name: string): string | undefined {
  return agentNameProblem(name, config.agents.maxNameLength) ?? agentIdentityProblem(config, name);
}
