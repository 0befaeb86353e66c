/**
 * The one definition of hive-matrix's configuration. Validation, defaults, the commented
 * `config.sample.yaml` and the docs table are all derived from this schema, so a key cannot be
 * documented one way and parsed another.
 */
import { z } from "zod";

/** Agent names: lower-case letters, digits and `-`, starting with a letter or digit. */
export const AGENT_NAME_PATTERN = /^[a-z0-9][a-z0-9-]*$/;

const localpartTemplate = z
  .string()
  .refine((t) => t.split("{name}").length === 2, { message: "must contain {name} exactly once" })
  .refine((t) => /^[a-z0-9._=/-]*$/.test(t.split("{name}").join("")), {
    message: "may only contain a-z, 0-9 and . _ = / - around {name}",
  });

const userId = z.string().regex(/^@[^:\s]+:[^\s]+$/, "must be a full Matrix user ID like @alice:hive.example");

const httpUrl = z.string().refine(
  (u) => {
    try {
      return ["http:", "https:"].includes(new URL(u).protocol);
    } catch {
      return false;
    }
  },
  { message: "must be an http(s) URL like http://127.0.0.1:8008" },
);

export const configSchema = z
  .object({
    homeserver: z
      .object({
        url: httpUrl.describe("Client-server API base URL of the homeserver, as hive-matrix reaches it."),
        domain: z
          .string()
          .regex(/^[A-Za-z0-9.-]+(:\d+)?$/, "must be a server name like hive.example")
          .describe("The homeserver's server name: the part after ':' in user IDs."),
        requestTimeoutMs: z
          .number()
          .int()
          .positive()
          .default(30_000)
          .describe("Timeout of one request to the homeserver, in milliseconds."),
        maxRetries: z
          .number()
          .int()
          .min(0)
          .default(5)
          .describe("Retries of a request that failed on the network, with 5xx or 429 (with backoff)."),
        startupWaitSeconds: z
          .number()
          .int()
          .min(0)
          .default(0)
          .describe("How long to wait for the homeserver at startup before giving up; 0 waits forever."),
      })
      .strict()
      .describe("The homeserver hive-matrix is registered on (tuwunel in production)."),
    appservice: z
      .object({
        id: z
          .string()
          .regex(/^[A-Za-z0-9._-]+$/, "may only contain letters, digits and . _ -")
          .default("hyperhive")
          .describe("The application service ID in the registration."),
        bind: z.string().min(1).default("127.0.0.1").describe("Address the appservice HTTP API listens on."),
        port: z.number().int().min(1).max(65535).default(9010).describe("Port the appservice HTTP API listens on."),
        url: httpUrl.default("http://127.0.0.1:9010").describe("How the homeserver reaches the appservice."),
        registration: z
          .string()
          .min(1)
          .default("/var/lib/hyperhive/matrix/registration.yaml")
          .describe("Registration file: read by `run`, written by `registration`."),
        botLocalpart: z
          .string()
          .regex(/^[a-z0-9._=/-]+$/, "may only contain a-z, 0-9 and . _ = / -")
          .default("hive")
          .describe("Localpart of the bot user (@hive:<domain>)."),
        botDisplayName: z.string().default("Hive").describe("Display name of the bot user."),
        maxBodyBytes: z
          .number()
          .int()
          .positive()
          .default(20_000_000)
          .describe("Largest transaction body accepted from the homeserver; larger ones get 413."),
      })
      .strict()
      .default({})
      .describe("The application service side: identity, HTTP listener, registration file."),
    stateDir: z
      .string()
      .min(1)
      .default("/var/lib/hyperhive/matrix")
      .describe("Directory for room IDs, transaction log and agent records (0700, files 0600)."),
    operators: z
      .array(userId)
      .default([])
      .describe("Matrix user IDs of the hive's operators: invited to the rooms, obeyed in the control room."),
    agents: z
      .object({
        stateRoot: z
          .string()
          .min(1)
          .default("/var/lib/hyperhive/agents")
          .describe("An agent exists when <stateRoot>/<name>/state/ exists."),
        names: z.array(z.string()).default([]).describe("Agents to provision besides the discovered ones."),
        localpart: localpartTemplate.default("agent-{name}").describe("Localpart template of agent users; {name} is the agent name."),
        maxNameLength: z.number().int().min(1).max(64).default(9).describe("Longest agent name accepted."),
        restartCommand: z
          .array(z.string().min(1))
          .min(1)
          .default(["systemctl", "restart", "hive-matrix-daemon@{name}"])
          .describe("Command run after an agent's token file is (re)written: argv, no shell; {name} is replaced."),
      })
      .strict()
      .default({})
      .describe("Agent discovery and provisioning."),
    logging: z
      .object({
        level: z.enum(["trace", "debug", "info", "warn", "error", "fatal"]).default("info").describe("Log level."),
        pretty: z.boolean().default(false).describe("Human-readable log lines instead of JSON."),
      })
      .strict()
      .default({})
      .describe("Logging (secrets are always redacted)."),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
