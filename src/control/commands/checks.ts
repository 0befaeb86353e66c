/** Argument checks shared by commands: they run before any handler, so bad input never reaches the api. */
import { agentNameProblem } from "../../agents/names";
import type { ArgDef, CheckEnv } from "../table";

/**
 * A full user ID: `@localpart:server`, the localpart printable ASCII without ':' (the historical
 * grammar, which existing accounts may use), the server a host name or bracketed IP literal with
 * an optional port.
 */
const USER_ID = /^@[\x21-\x39\x3b-\x7e]+:(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;

export function userIdProblem(value: string, env: CheckEnv): string | undefined {
  if (value.length > 255 || !USER_ID.test(value)) return "is not a Matrix user ID; write it in full, like @alice:hive.example";
  if (env.isAppserviceUser(value)) return "belongs to the hive itself (the bot or an agent), which joins the rooms on its own";
  return undefined;
}

export const agentNameArg: ArgDef = {
  name: "name",
  help: "The agent's name: lower-case letters, digits and '-', at most agents.maxNameLength characters.",
  check: (value, env) => agentNameProblem(value, env.config.agents.maxNameLength),
};
