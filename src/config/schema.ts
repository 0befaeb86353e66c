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

/** The localpart of a room alias (`#<localpart>:<domain>`); empty means no alias. */
const aliasLocalpart = z.string().regex(/^[a-z0-9._=/-]*$/, "may only contain a-z, 0-9 and . _ = / - (or be empty for no alias)");

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
        metricsTokenFile: z
          .string()
          .default("")
          .describe(
            "File holding the bearer token that GET /metrics requires (and that shows the details of /health); " +
              "empty: /metrics is off. Every agent container reaches this port over loopback, so there is no open /metrics.",
          ),
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
        adopt: z
          .array(z.string())
          .default([])
          .describe(
            "Agents whose Matrix accounts already exist (e.g. from the older registration-token flow) and may be taken over: " +
              "a new token is written and the old sessions are logged out. Any other existing account is refused.",
          ),
        localpart: localpartTemplate.default("agent-{name}").describe("Localpart template of agent users; {name} is the agent name."),
        maxNameLength: z.number().int().min(1).max(64).default(9).describe("Longest agent name accepted."),
        restartCommand: z
          .array(z.string().min(1))
          .min(1)
          .default(["systemctl", "restart", "hive-matrix-daemon@{name}"])
          .describe("Command run after an agent's token file is (re)written: argv, no shell; {name} is replaced."),
        restartShell: z
          .string()
          .regex(/^\//, "must be an absolute path")
          .default("/bin/sh")
          .describe(
            "POSIX shell of the fork server that runs the restart commands (the commands themselves never go through a shell). " +
              "A small shell such as dash forks cheaply; bash costs about twice the CPU per restart. Spawned directly when it does not exist.",
          ),
        restartTimeoutSeconds: z
          .number()
          .int()
          .positive()
          .default(60)
          .describe("The restart command is killed (and a warning logged) when it runs longer than this."),
        displayName: z
          .string()
          .refine((t) => t.length > 0 && t.length <= 256, { message: "must be 1 to 256 characters" })
          .default("{name}")
          .describe("Display name template of agent users; {name} is the agent name."),
        concurrency: z.number().int().min(1).max(64).default(8).describe("How many agents are provisioned at the same time."),
        rescanIntervalSeconds: z
          .number()
          .int()
          .min(1)
          .default(30)
          .describe("Periodic rescan of stateRoot, the fallback when a file-system watch misses a change."),
        onRemove: z
          .object({
            logout: z.boolean().default(true).describe("Log out the agent's devices, so its token stops working."),
            leaveRooms: z.boolean().default(true).describe("Make the agent leave the Space and hive-chat."),
          })
          .strict()
          .default({})
          .describe("What happens when an agent's state dir disappears. The account itself is always kept, so the name is never reused."),
        activity: z
          .object({
            silentAfterSeconds: z
              .number()
              .int()
              .min(1)
              .default(3600)
              .describe("An agent whose last event is older than this shows as silent in `!hive agents`."),
            report: z
              .boolean()
              .default(false)
              .describe(
                "Report in the control room when an agent that spoke goes silent past silentAfterSeconds, and when it speaks again.",
              ),
          })
          .strict()
          .default({})
          .describe("Agent liveness: when each agent last sent an event (times and room IDs only, never content)."),
      })
      .strict()
      .default({})
      .describe("Agent discovery and provisioning."),
    rooms: z
      .object({
        space: z
          .object({
            name: z.string().min(1).default("hive").describe("Name of the hive Space."),
            topic: z.string().default("The agents of this hive and their operators").describe("Topic of the hive Space."),
            alias: aliasLocalpart
              .default("hive")
              .describe("Localpart of the Space's alias (#hive:<domain>), which clients join it by; empty for none."),
          })
          .strict()
          .default({})
          .describe("The private Space holding hive-chat."),
        chat: z
          .object({
            name: z.string().min(1).default("hive-chat").describe("Name of the chat room."),
            topic: z.string().default("Where the hive's agents and operators talk").describe("Topic of the chat room."),
            alias: aliasLocalpart
              .default("hive-chat")
              .describe("Localpart of the chat room's alias (#hive-chat:<domain>); empty for none."),
            encrypted: z
              .boolean()
              .default(false)
              .describe("Create hive-chat encrypted. hive-matrix runs without crypto and cannot read encrypted rooms."),
          })
          .strict()
          .default({})
          .describe("hive-chat: room version 10, join rule restricted to members of the Space."),
        listing: z
          .object({
            auto: z
              .boolean()
              .default(true)
              .describe(
                "List in the Space, on their own, the rooms an agent is in whose members are all agents and operators; off: only rooms added with `!hive rooms add`.",
              ),
            operatorDirectChats: z
              .boolean()
              .default(true)
              .describe("Also list rooms of exactly one operator and one agent (direct chats)."),
          })
          .strict()
          .default({})
          .describe("Which of the hive's other rooms the Space lists (rooms with outsiders only when an operator adds them)."),
        operatorPowerLevel: z.number().int().min(0).max(100).default(100).describe("Power level of the operators in both rooms."),
        reconcileIntervalSeconds: z
          .number()
          .int()
          .min(0)
          .default(600)
          .describe("Periodic reconcile of the rooms against the desired state; 0 turns the timer off."),
        eventDelayMs: z
          .number()
          .int()
          .min(0)
          .max(60_000)
          .default(500)
          .describe("A change to the rooms seen in an event waits this long for more before the rooms are reconciled."),
        minEventIntervalSeconds: z
          .number()
          .min(0)
          .max(3600)
          .default(5)
          .describe(
            "Reconciles caused by events start at least this long after the previous reconcile started (room members cannot flood the homeserver through hive-matrix).",
          ),
      })
      .strict()
      // One alias cannot point to both rooms: the reconcile would move it back and forth.
      .refine((rooms) => rooms.space.alias === "" || rooms.space.alias !== rooms.chat.alias, {
        message: "must differ from rooms.chat.alias",
        path: ["space", "alias"],
      })
      .default({})
      .describe("The hive Space and hive-chat, created once and kept correct."),
    control: z
      .object({
        room: z
          .string()
          .regex(/^$|^[!#][^:\s]+:[^\s]+$/, "must be a room ID (!id:server) or alias (#name:server), or empty")
          .default("")
          .describe("The control room's ID or alias; empty: the bot creates one and keeps its ID in control-room-id."),
        name: z.string().default("").describe("Name of a control room the bot creates; empty: 'hive control (<domain>)'."),
        notifyIntervalSeconds: z
          .number()
          .int()
          .min(0)
          .default(30)
          .describe("Reports the bot makes on its own are summarised into at most one message per interval."),
      })
      .strict()
      .default({})
      .describe("The room where operators command the hive with !hive."),
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
