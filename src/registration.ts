/**
 * The appservice registration: what the homeserver needs to know about hive-matrix.
 * `buildRegistration` is pure so the NixOS module's pure Nix builder can be cross-checked against it.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import YAML from "yaml";
import { z } from "zod";
import type { Config } from "./config/schema";
import { writeFileAtomic } from "./store/atomic-file";

export interface Namespace {
  exclusive: boolean;
  regex: string;
}

export interface Registration {
  id: string;
  url: string;
  as_token: string;
  hs_token: string;
  sender_localpart: string;
  namespaces: { users: Namespace[]; aliases: Namespace[]; rooms: Namespace[] };
  rate_limited: boolean;
}

/** Marker used in the example `registration.yaml`; the service refuses tokens containing it. */
export const PLACEHOLDER_MARKER = "REPLACE_ME";

/** Escapes the regex metacharacters `\ . + * ? ( ) | [ ] { } ^ $` (the Nix builder escapes the same set). */
export function escapeRegex(text: string): string {
  return text.replace(/[\\.+*?()|[\]{}^$]/g, (c) => `\\${c}`);
}

/** A template like `agent-{name}` has a fixed prefix or suffix; `{name}` alone has neither. */
export function templateHasFixedPart(template: string): boolean {
  return template !== "{name}";
}

/**
 * User namespaces: the bot, then the agents. With a fixed prefix/suffix one regex covers every
 * agent; with the bare `{name}` template each known agent is listed, so that the exclusive
 * namespace never claims users outside the hive.
 */
export function userNamespaces(config: Config, agentNames: readonly string[] = []): Namespace[] {
  const domain = escapeRegex(config.homeserver.domain);
  return [
    { exclusive: true, regex: `^@${escapeRegex(config.appservice.botLocalpart)}:${domain}$` },
    ...agentNamespaces(config, agentNames),
  ];
}

/** The agents' part of the user namespace (see userNamespaces). */
export function agentNamespaces(config: Config, agentNames: readonly string[] = []): Namespace[] {
  const domain = escapeRegex(config.homeserver.domain);
  const template = config.agents.localpart;
  if (templateHasFixedPart(template)) {
    const [prefix, suffix] = template.split("{name}");
    return [{ exclusive: true, regex: `^@${escapeRegex(prefix)}[a-z0-9-]+${escapeRegex(suffix)}:${domain}$` }];
  }
  return [...new Set(agentNames)].sort().map((name) => ({ exclusive: true, regex: `^@${escapeRegex(name)}:${domain}$` }));
}

export function newToken(): string {
  return randomBytes(32).toString("hex");
}

export function buildRegistration(
  config: Config,
  tokens: { asToken: string; hsToken: string },
  agentNames: readonly string[] = [],
): Registration {
  return {
    id: config.appservice.id,
    url: config.appservice.url,
    as_token: tokens.asToken,
    hs_token: tokens.hsToken,
    sender_localpart: config.appservice.botLocalpart,
    namespaces: { users: userNamespaces(config, agentNames), aliases: [], rooms: [] },
    rate_limited: false,
  };
}

const namespaceSchema = z.object({ exclusive: z.boolean().default(false), regex: z.string().min(1) });
const registrationSchema = z.object({
  id: z.string().min(1),
  url: z.string().nullable(),
  as_token: z.string().min(1),
  hs_token: z.string().min(1),
  sender_localpart: z.string().min(1),
  namespaces: z
    .object({
      users: z.array(namespaceSchema).default([]),
      aliases: z.array(namespaceSchema).default([]),
      rooms: z.array(namespaceSchema).default([]),
    })
    .default({}),
  rate_limited: z.boolean().default(false),
});

export class RegistrationError extends Error {}

/** Reads and checks a registration file; refuses the example's placeholder tokens. */
export function loadRegistration(path: string): Registration {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new RegistrationError(`cannot read registration ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  let raw: unknown;
  try {
    raw = YAML.parse(text);
  } catch (err) {
    throw new RegistrationError(`registration ${path} is not valid YAML: ${(err as Error).message}`);
  }
  const parsed = registrationSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new RegistrationError(`registration ${path} is invalid: ${problems.join("; ")}`);
  }
  const reg = parsed.data as Registration;
  for (const key of ["as_token", "hs_token"] as const) {
    if (reg[key].includes(PLACEHOLDER_MARKER)) {
      throw new RegistrationError(
        `registration ${path} still has the example's placeholder ${key}; generate a real one with ` +
          "`hive-matrix registration --config FILE`",
      );
    }
    if (reg[key].length < 32) {
      throw new RegistrationError(`registration ${path}: ${key} is shorter than 32 characters`);
    }
  }
  if (reg.as_token === reg.hs_token) {
    throw new RegistrationError(`registration ${path}: as_token and hs_token must differ`);
  }
  return reg;
}

/**
 * Writes the registration for `config`, keeping the tokens of an existing file at `path` so the
 * homeserver's copy stays valid. Returns the registration and whether the tokens were new.
 */
export function writeRegistration(
  config: Config,
  path: string,
  agentNames: readonly string[] = [],
): { registration: Registration; freshTokens: boolean } {
  let tokens: { asToken: string; hsToken: string } | undefined;
  let existing: Registration | undefined;
  try {
    existing = loadRegistration(path);
  } catch (err) {
    const missing = (err as Error).message.includes("ENOENT");
    const placeholder = (err as Error).message.includes("placeholder");
    if (!missing && !placeholder) throw err;
  }
  if (existing) tokens = { asToken: existing.as_token, hsToken: existing.hs_token };
  const registration = buildRegistration(config, tokens ?? { asToken: newToken(), hsToken: newToken() }, agentNames);
  const header =
    "# Application service registration for hive-matrix, generated by `hive-matrix registration`.\n" +
    "# Contains secrets: keep it 0600. Re-running the command keeps the tokens.\n";
  writeFileAtomic(path, header + YAML.stringify(registration), { mode: 0o600 });
  return { registration, freshTokens: tokens === undefined };
}
