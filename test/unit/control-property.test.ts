/**
 * Random and hostile input through the whole control room (parser, binding, processor, replies):
 * every command gets exactly one reply or a clean refusal, nothing escapes the handler, the api
 * is never called for invalid input, a destructive command never runs without a real --yes, and
 * no reply carries markup from the input.
 */
import fc from "fast-check";
import { ControlRoom, type Outcome } from "../../src/control";
import { bind } from "../../src/control/bind";
import { COMMANDS } from "../../src/control/commands";
import { commandText, parseLine } from "../../src/control/parser";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { StateStore } from "../../src/store/state-store";
import { BOT, FakeBot, foreignTags, isHiveUser, message, OPERATOR, RecordingApi, ROOM, STRANGER, testConfig } from "../support/control";
import { captureLogs } from "../support/logs";
import { tempDir } from "../support/tmp";

const FRAGMENTS = [
  "agent",
  "remove",
  "rotate",
  "add",
  "info",
  "x",
  "bee",
  "nobody",
  "help",
  "status",
  "agents",
  "invite",
  "sync",
  "version",
  "--yes",
  "--YES",
  "--yes=1",
  "--state=failed",
  "--state=",
  "--state=<img src=x>",
  "--",
  "-y",
  "---",
  '"',
  "'",
  "\\",
  '"--yes"',
  "'--yes'",
  "\\--yes",
  "<script>alert(1)</script>",
  "<b>",
  "</table>",
  "&amp;",
  "\u0000",
  "\u0007",
  "\u202e",
  "\u200f",
  "\ufeff",
  "\n",
  "\t",
  " ",
  "  ",
  "\u00a0",
  "🐝",
  "\ud800",
  "@bob:hive.test",
  "@agent-x:hive.test",
  "@<b>:x",
  "Ünïcödé",
  "!hive",
  "`",
];

const piece = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...FRAGMENTS) },
  { weight: 1, arbitrary: fc.fullUnicodeString({ maxLength: 6 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 6 }) },
);
const separator = fc.constantFrom(" ", " ", " ", "", "\n", "\t");
const rest = fc.array(fc.tuple(piece, separator), { maxLength: 14 }).map((ps) => ps.map(([p, s]) => p + s).join(""));
/** Near-valid commands: a real command path, then hostile arguments and flags. */
const ARITY: Record<string, number> = {
  help: 0,
  status: 0,
  agents: 0,
  "agent info": 1,
  "agent add": 1,
  "agent remove": 1,
  "agent rotate": 1,
  invite: 1,
  sync: 0,
  version: 0,
  agent: 0,
};
const ARGS = ["x", "bee", "nobody", "new-1", "@bob:hive.test", "@agent-x:hive.test", "Bad", "a b", "agent remove", "", "<b>x</b>"];
const FLAGS = ["--yes", "--yes", "--yes", '"--yes"', "\\--yes", "--yes=no", "--state=failed", "--state=joined", "--state=<b>", "--", "-y"];
const quoted = (s: string): fc.Arbitrary<string> => fc.constantFrom(s, s, `"${s}"`, `'${s}'`);
const argument = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...ARGS).chain(quoted) }, { weight: 1, arbitrary: piece });
const structured = fc
  .constantFrom(...Object.keys(ARITY))
  .chain((path) =>
    fc.tuple(
      fc.constant(path),
      fc
        .oneof({ weight: 3, arbitrary: fc.constant(ARITY[path]) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 3 }) })
        .chain((n) => fc.array(argument, { minLength: n, maxLength: n })),
      fc.array(fc.constantFrom(...FLAGS), { maxLength: 2 }),
    ),
  )
  .chain(([path, args, flags]) =>
    fc.shuffledSubarray([...args, ...flags], { minLength: args.length + flags.length }).map((xs) => `!hive ${path} ${xs.join(" ")}`),
  );

const body = fc.oneof(
  { weight: 12, arbitrary: structured },
  { weight: 8, arbitrary: fc.tuple(fc.constantFrom("!hive ", "!hive", "!HIVE\t", "!hive\n", "!hive  "), rest).map(([a, b]) => a + b) },
  { weight: 1, arbitrary: rest },
  { weight: 1, arbitrary: fc.fullUnicodeString({ maxLength: 60 }).map((s) => `!hive ${s}`) },
  { weight: 1, arbitrary: fc.string({ minLength: 990, maxLength: 1500 }).map((s) => `!hive ${s}`) },
);
const sender = fc.constantFrom(OPERATOR, OPERATOR, OPERATOR, OPERATOR, OPERATOR, STRANGER, BOT, "@agent-x:hive.test");

describe("hostile input through the control room", () => {
  const dir = tempDir("hm-control-prop-");
  const config = testConfig(dir, { control: { room: ROOM } });
  const env = { config, isAppserviceUser: isHiveUser };
  const bot = new FakeBot();
  bot.setState(ROOM, "m.room.member", BOT, { membership: "join" });
  const { lines: logs, destination } = captureLogs();
  const outcomes = new Map<string, Outcome>();
  const kinds = new Map<string, number>();
  const api = new RecordingApi();
  const state = new StateStore(dir);
  state.init();
  const control = new ControlRoom({
    bot,
    botUserId: BOT,
    state,
    config,
    logger: createLogger({ level: "debug", destination }).logger,
    metrics: new Metrics(),
    api,
    isAppserviceUser: isHiveUser,
    editIntervalMs: 10,
    onOutcome: (id, o) => {
      if (id) outcomes.set(id, o);
    },
  });

  beforeAll(async () => {
    expect(await control.start()).toBe(true);
  });

  it("answers or refuses every command cleanly and never calls the api for invalid input", async () => {
    await fc.assert(
      fc.asyncProperty(body, sender, async (text, from) => {
        api.reset();
        const sentBefore = bot.sent.length;
        const errorsBefore = logs.filter((l) => l.includes('"level":50')).length;
        const e = message(text, { sender: from });
        await expect(control.handleEvent(e)).resolves.toBeUndefined();
        await control.idle();
        const outcome = outcomes.get(e.event_id!);
        const kind = outcome ? outcome.kind + ("command" in outcome && outcome.command ? `:${outcome.command}` : "") : "none";
        kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
        const sent = bot.sent.slice(sentBefore);
        const replies = sent.filter(
          (m) => (m.content["m.relates_to"] as Record<string, unknown> | undefined)?.["m.in_reply_to"] !== undefined,
        );

        const line = commandText(text);
        if (line === undefined || isHiveUser(from)) {
          expect(outcome?.kind).toBe("ignored");
          expect(sent).toEqual([]);
          expect(api.calls).toEqual([]);
          return;
        }
        if (from === STRANGER && outcome?.kind !== "refused") {
          // Refused within the last minute already: no reply at all, nothing called.
          expect(outcome).toEqual({ kind: "ignored", reason: "refusal-throttled" });
          expect(sent).toEqual([]);
          expect(api.calls).toEqual([]);
          return;
        }
        // Exactly one reply to the command (progress edits aside).
        expect(replies).toHaveLength(1);
        expect(outcome).toBeDefined();
        // Nothing in the input is a bug: no internal error, no error logged.
        expect(outcome).not.toMatchObject({ kind: "failed", internal: true });
        expect(logs.filter((l) => l.includes('"level":50')).length).toBe(errorsBefore);
        for (const m of sent) {
          expect(foreignTags(String(m.content.formatted_body ?? ""))).toEqual([]);
          expect(m.content.msgtype).toBe("m.notice");
        }

        if (from === STRANGER) {
          expect(outcome).toEqual({ kind: "refused" });
          expect(api.calls).toEqual([]);
          return;
        }
        const parsed = parseLine(line);
        const bound = parsed.ok ? bind(parsed.value, COMMANDS, env) : undefined;
        if (!parsed.ok || !bound?.ok) {
          expect(outcome?.kind).toBe("rejected");
          expect(api.calls).toEqual([]);
          return;
        }
        if (outcome?.kind === "confirm") expect(api.mutations()).toEqual([]);
        for (const call of api.mutations()) {
          if (call.method === "removeAgent" || call.method === "rotateAgent") expect(bound.invocation.flags.yes).toBe(true);
        }
      }),
      {
        numRuns: 1000,
        examples: [
          ["!hive agent remove x --yes", OPERATOR],
          ["!hive agent rotate bee --yes", OPERATOR],
          ['!hive agent remove x "--yes"', OPERATOR],
          ["!hive agent remove x \\--yes", OPERATOR],
          ["!hive agent remove x", OPERATOR],
          ["!hive agent remove x --yes", STRANGER],
          ["!hive agent remove x --yes", "@agent-x:hive.test"],
          ["!hive <img src=x onerror=alert(1)>", OPERATOR],
        ],
      },
    );
    // The run went through every path (the examples guarantee each kind at least once).
    for (const kind of [
      "done:agent remove",
      "done:agent rotate",
      "confirm:agent remove",
      "rejected:agent remove",
      "rejected",
      "refused",
      "ignored",
    ]) {
      expect(kinds.get(kind)).toBeGreaterThan(0);
    }
  });

  it("handles a 100 000-character command and a body of control characters", async () => {
    for (const text of [
      `!hive ${"a".repeat(100_000)}`,
      `!hive ${"\u0000\u0001\u001b[31m".repeat(50)}`,
      `!hive agent remove ${'"'.repeat(999)}`,
    ]) {
      api.reset();
      const e = message(text);
      await control.handleEvent(e);
      await control.idle();
      expect(outcomes.get(e.event_id!)?.kind).toBe("rejected");
      expect(bot.repliesTo(e.event_id!)).toHaveLength(1);
      expect(api.calls).toEqual([]);
    }
  });
});
