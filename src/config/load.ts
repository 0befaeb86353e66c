/** Reads a YAML config file and validates it against the schema; every problem names its key path. */
import { readFileSync } from "node:fs";
import YAML from "yaml";
import type { ZodIssue } from "zod";
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
  config.agents.names.forEach((name, i) => {
    if (!AGENT_NAME_PATTERN.test(name) || name.length > config.agents.maxNameLength) {
      problems.push(
        `agents.names[${i}]: "${name}" is not a valid agent name (lower-case letters, digits and -, at most ${config.agents.maxNameLength} characters)`,
      );
    }
  });
  const botAsAgent = config.agents.localpart.replace("{name}", "");
  if (config.agents.localpart === config.appservice.botLocalpart || botAsAgent === config.appservice.botLocalpart) {
    problems.push("agents.localpart: must not produce the bot's localpart");
  }
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
