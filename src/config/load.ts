/** Reads a YAML config file and validates it against the schema; every problem names its key path. */
import { readFileSync } from "node:fs";
import YAML from "yaml";
import type { ZodIssue } from "zod";
import { botUserId, sameUser } from "../agents/names";
import { agentNamespaces, templateHasFixedPart } from "../registration";
import { AGENT_NAME_PATTERN, configSchema, type Config } from "./schema";

export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`${source}: ${problems.length} problem(s):\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
  }
}

function keyPath(path: readonly (string | number)[]): string {
  return path.length === 0
    ? "(top level)"
    : path
        .map((p) => (typeof p === "number" ? `[${p}]` : p))
        .join(".")
        .replace(/\.\[/g, "[");
}

export function describeIssue(issue: ZodIssue): string[] {
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((k) => `${keyPath([...issue.path, k])}: unknown key`);
  }
  if (issue.code === "invalid_type" && issue.received === "undefined") {
    return [`${keyPath(issue.path)}: required`];
  }
  if (issue.code === "invalid_type") {
    return [`${keyPath(issue.path)}: expected ${issue.expected}, got ${issue.received}`];
  }
  return [`${keyPath(issue.path)}: ${issue.message}`];
}

/** Cross-field checks that a per-key schema cannot express. */
function semanticProblems(config: Config): string[] {
  const problems: string[] = [];
  const max = config.agents.maxNameLength;
  for (const key of ["names", "adopt"] as const) {
    config.agents[key].forEach((name, i) => {
      if (!AGENT_NAME_PATTERN.test(name) || name.length > max) {
        problems.push(
          `agents.${key}[${i}]: "${name}" is not a valid agent name (lower-case letters, digits and -, at most ${max} characters)`,
        );
      }
    });
  }
  problems.push(...namespaceCollisions(config));
  return problems;
}

/**
 * The agents' user namespace must hold agents only: not the bot (an agent dir of that name would
 * get the bot's token) and no operator (the service would take the operator for one of its own
 * users and ignore their commands). Checked against the same namespace the registration declares.
 */
function namespaceCollisions(config: Config): string[] {
  const problems: string[] = [];
  const listed = [...config.agents.names, ...config.agents.adopt];
  const agentSpace = agentNamespaces(config, listed).map((ns) => new RegExp(ns.regex, "i"));
  const inAgentSpace = (userId: string): boolean => agentSpace.some((r) => r.test(userId));
  const template = `agents.localpart "${config.agents.localpart}"${templateHasFixedPart(config.agents.localpart) ? "" : " with agents.names and agents.adopt"}`;
  const bot = botUserId(config);
  if (inAgentSpace(bot)) {
    problems.push(
      `appservice.botLocalpart: the bot ${bot} is inside the agents' user namespace (${template}), so an agent could be given the bot's account; ` +
        "choose a bot localpart that no agent name can produce",
    );
  }
  config.operators.forEach((op, i) => {
    if (sameUser(op, bot)) problems.push(`operators[${i}]: ${op} is the bot itself; operators are people`);
    else if (inAgentSpace(op))
      problems.push(
        `operators[${i}]: ${op} is inside the agents' user namespace (${template}): ` +
          "the service would treat it as one of its own agents and ignore its commands; change the operator or agents.localpart",
      );
  });
  return problems;
}

export function parseConfig(raw: unknown, source = "config"): Config {
  const input = raw === null || raw === undefined ? {} : raw;
  const result = configSchema.safeParse(input);
  if (!result.success) {
    throw new ConfigError(source, result.error.issues.flatMap(describeIssue));
  }
  const problems = semanticProblems(result.data);
  if (problems.length > 0) throw new ConfigError(source, problems);
  return result.data;
}

export function loadConfigFile(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ConfigError(path, [code === "ENOENT" ? "file does not exist" : `cannot read file (${code ?? String(err)})`]);
  }
  const doc = YAML.parseDocument(text);
  if (doc.errors.length > 0) {
    throw new ConfigError(
      path,
      doc.errors.map((e) => `not valid YAML: ${e.message.split("\n")[0]}`),
    );
  }
  return parseConfig(doc.toJS(), path);
}
