/**
 * The control room end to end without a homeserver: events in, replies and api calls out.
 * Who may command, what is ignored, once-only execution across restarts, confirmation,
 * progress edits, error replies.
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../../src/config/schema";
import { CommandError } from "../../src/control/api";
import { ControlRoom, type Outcome } from "../../src/control";
import { para, PLAIN_WIDTH } from "../../src/control/render";
import { COMMANDS } from "../../src/control/commands";
import { leaves, type CommandDef } from "../../src/control/table";
import { createLogger } from "../../src/logging";
import { HomeserverUnreachableError } from "../../src/matrix/transport";
import { Metrics } from "../../src/metrics";
import { StateStore } from "../../src/store/state-store";
import type { MatrixEvent } from "../../src/store/transactions";
import {
  agentView,
  BOT,
  FakeBot,
  foreignTags,
  isHiveUser,
  message,
  OPERATOR,
  RecordingApi,
  ROOM,
  STRANGER,
  testConfig,
} from "../support/control";
import { captureLogs } from "../support/logs";
import { tempDir } from "../support/tmp";

interface Setup {
  control: ControlRoom;
  bot: FakeBot;
  api: RecordingApi;
  config: Config;
  state: StateStore;
  outcomes: Map<string, Outcome>;
  logs: string[];
  metrics: Metrics;
  /** Hands the event to the control room and waits until its command (if any) has run. */
  send(event: MatrixEvent): Promise<Outcome | undefined>;
}

async function setup(
  opts: { stateDir?: string; config?: Config; table?: readonly CommandDef[]; api?: RecordingApi; bot?: FakeBot } = {},
): Promise<Setup> {
  const stateDir = opts.stateDir ?? tempDir("hm-control-");
  const config = opts.config ?? testConfig(stateDir, { control: { room: ROOM } });
  const bot = opts.bot ?? new FakeBot();
  if (!bot.state.has(ROOM)) bot.setState(ROOM, "m.room.member", BOT, { membership: "join" });
  const api = opts.api ?? new RecordingApi();
  const state = new StateStore(stateDir);
  state.init();
  const { lines, destination } = captureLogs();
  const logger = createLogger({ level: "debug", destination }).logger;
  const outcomes = new Map<string, Outcome>();
  const metrics = new Metrics();
  const control = new ControlRoom({
    bot,
    botUserId: BOT,
    state,
    config,
    logger,
    metrics,
    api,
    isAppserviceUser: isHiveUser,
    table: opts.table,
    editIntervalMs: 50,
    onOutcome: (id, o) => {
      if (id) outcomes.set(id, o);
    },
  });
  expect(await control.start()).toBe(true);
  const send = async (event: MatrixEvent): Promise<Outcome | undefined> => {
    await control.handleEvent(event);
    await control.idle();
    return event.event_id ? outcomes.get(event.event_id) : undefined;
  };
  return { control, bot, api, config, state, outcomes, logs: lines, metrics, send };
}

/** A plain body with every run of white space as one space: bodies are wrapped at 80 columns. */
function flat(body: unknown): string {
  return String(body).replace(/\s+/g, " ");
}

function only<T>(items: T[]): T {
  expect(items).toHaveLength(1);
  return items[0];
}

describe("who is obeyed", () => {
  it("answers an operator's !hive help with a notice reply listing every command", async () => {
    const s = await setup();
    const e = message("!hive help");
    expect(await s.send(e)).toEqual({ kind: "done", command: "help" });
    const reply = only(s.bot.repliesTo(e.event_id!));
    expect(reply.roomId).toBe(ROOM);
    expect(reply.content).toMatchObject({ msgtype: "m.notice", format: "org.matrix.custom.html" });
    for (const c of ["help", "status", "agents", "agent info", "agent add", "agent remove", "agent rotate", "invite", "sync", "version"]) {
      expect(reply.content.body).toContain(`!hive ${c}`);
      expect(reply.content.formatted_body).toContain(`!hive ${c}`);
    }
  });

  it("treats !hive alone as help", async () => {
    const s = await setup();
    const e = message("!hive");
    expect(await s.send(e)).toEqual({ kind: "done", command: "help" });
    expect(String(only(s.bot.repliesTo(e.event_id!)).content.body)).toContain("!hive agent remove <name> [--yes]");
  });

  it.each(["!hive agent remove x --yes", "!hive help", "!hive nonsense 'unbalanced", "!hive"])(
    "refuses %j from a non-operator briefly, and calls nothing",
    async (body) => {
      const s = await setup();
      const e = message(body, { sender: STRANGER });
      expect(await s.send(e)).toEqual({ kind: "refused" });
      expect(only(s.bot.repliesTo(e.event_id!)).content.body).toBe("Sorry, only the hive's operators can give commands here.");
      expect(s.api.calls).toEqual([]);
    },
  );

  it("compares operator IDs exactly", async () => {
    const s = await setup();
    expect(await s.send(message("!hive status", { sender: OPERATOR.toUpperCase() }))).toEqual({ kind: "refused" });
    expect(await s.send(message("!hive status", { sender: `${OPERATOR} ` }))).toEqual({ kind: "refused" });
    // The same localpart on another server is someone else.
    expect(await s.send(message("!hive status", { sender: OPERATOR.replace(/:.*$/, ":evil.example") }))).toEqual({ kind: "refused" });
    expect(s.api.calls).toEqual([]);
  });

  it.each([BOT, "@agent-x:hive.test"])("never obeys nor answers the appservice's own user %s", async (sender) => {
    const s = await setup();
    const e = message("!hive agent remove x --yes", { sender });
    await s.send(e);
    expect(s.outcomes.get(e.event_id!)).toEqual({ kind: "ignored", reason: "appservice-user" });
    expect(s.bot.sent).toEqual([]);
    expect(s.api.calls).toEqual([]);
  });

  it("checks each command's own permission from the table", async () => {
    const table: CommandDef[] = [
      { name: "ping", summary: "anyone", permission: "member", run: async () => para("pong") },
      { name: "secret", summary: "operators", permission: "operator", run: async () => para("s") },
    ];
    const s = await setup({ table });
    expect(await s.send(message("!hive ping", { sender: STRANGER }))).toEqual({ kind: "done", command: "ping" });
    expect(await s.send(message("!hive secret", { sender: STRANGER }))).toEqual({ kind: "refused" });
    expect(await s.send(message("!hive secret"))).toEqual({ kind: "done", command: "secret" });
  });
});

describe("what is ignored", () => {
  it.each<[string, MatrixEvent, Outcome | undefined]>([
    [
      "an edit (m.new_content)",
      message("!hive agent remove x --yes", { content: { "m.new_content": { msgtype: "m.text", body: "!hive agent remove x --yes" } } }),
      { kind: "ignored", reason: "edit" },
    ],
    [
      "an edit (m.replace)",
      message("* !hive agent remove x --yes", {
        content: { body: "!hive agent remove x --yes", "m.relates_to": { rel_type: "m.replace", event_id: "$old" } },
      }),
      { kind: "ignored", reason: "edit" },
    ],
    ["a notice", message("!hive help", { content: { msgtype: "m.notice" } }), { kind: "ignored", reason: "not-a-command" }],
    ["an emote", message("!hive help", { content: { msgtype: "m.emote" } }), { kind: "ignored", reason: "not-a-command" }],
    // Events from other rooms do not even reach the processor.
    ["another room", message("!hive help", { roomId: "!chat:hive.test" }), undefined],
    ["text that is not a command", message("hello !hive help"), { kind: "ignored", reason: "not-a-command" }],
    ["a prefix without a space", message("!hivehelp"), { kind: "ignored", reason: "not-a-command" }],
    ["a body that is not a string", message("x", { content: { body: 42 } }), { kind: "ignored", reason: "not-a-command" }],
    ["a redacted message", { ...message("x"), content: {} }, { kind: "ignored", reason: "not-a-command" }],
    ["a state event", { ...message("!hive help"), state_key: "" }, { kind: "ignored", reason: "not-a-message" }],
  ])("%s", async (_what, event, expected) => {
    const s = await setup();
    await s.send(event);
    expect(s.outcomes.get(event.event_id!)).toEqual(expected);
    expect(s.bot.sent).toEqual([]);
    expect(s.api.calls).toEqual([]);
    // A later command is answered: the silence above is the filter, not a processor that never ran.
    const later = message("!hive version");
    expect(await s.send(later)).toEqual({ kind: "done", command: "version" });
    expect(s.bot.repliesTo(later.event_id!)).toHaveLength(1);
  });
});

describe("commands from people who may not give them", () => {
  afterEach(() => jest.restoreAllMocks());

  it("records nothing, and answers a sender at most once a minute however much they send", async () => {
    const s = await setup();
    const seenFile = join(s.state.dir, "commands-seen.json");
    const spam = Array.from({ length: 30 }, (_, i) =>
      message(i % 2 ? `!hive agent remove x --yes` : `!hive nonsense ${i}`, { sender: STRANGER }),
    );
    for (const e of spam) await s.send(e);
    expect(spam.map((e) => s.outcomes.get(e.event_id!)?.kind)).toEqual(["refused", ...Array(29).fill("ignored")]);
    expect(s.outcomes.get(spam[1].event_id!)).toEqual({ kind: "ignored", reason: "refusal-throttled" });
    expect(s.bot.sent).toHaveLength(1);
    expect(only(s.bot.repliesTo(spam[0].event_id!)).content.body).toBe("Sorry, only the hive's operators can give commands here.");
    expect(s.api.calls).toEqual([]);
    expect(existsSync(seenFile)).toBe(false);

    // Another sender has their own allowance; the first one gets one again a minute later.
    const other = message("!hive help", { sender: `@other:hive.test` });
    expect(await s.send(other)).toEqual({ kind: "refused" });
    const now = Date.now();
    jest.spyOn(Date, "now").mockReturnValue(now + 59_000);
    expect(await s.send(message("!hive help", { sender: STRANGER }))).toEqual({ kind: "ignored", reason: "refusal-throttled" });
    jest.spyOn(Date, "now").mockReturnValue(now + 61_000);
    expect(await s.send(message("!hive help", { sender: STRANGER }))).toEqual({ kind: "refused" });
    expect(s.bot.sent).toHaveLength(3);
    expect(existsSync(seenFile)).toBe(false);

    // The operator's command is recorded as usual.
    const op = message("!hive version");
    expect(await s.send(op)).toEqual({ kind: "done", command: "version" });
    expect(readFileSync(seenFile, "utf8")).toContain(op.event_id!);
    expect(readFileSync(seenFile, "utf8")).not.toContain(spam[0].event_id!);
  });

  it("does not refuse a redelivered event twice", async () => {
    const s = await setup();
    const e = message("!hive agent remove x --yes", { sender: STRANGER });
    expect(await s.send(e)).toEqual({ kind: "refused" });
    jest.spyOn(Date, "now").mockReturnValue(Date.now() + 120_000);
    expect(await s.send({ ...e })).toEqual({ kind: "ignored", reason: "duplicate" });
    expect(s.bot.sent).toHaveLength(1);
  });

  it("records and runs a command open to every member", async () => {
    const table: CommandDef[] = [{ name: "ping", summary: "anyone", permission: "member", run: async () => para("pong") }];
    const s = await setup({ table });
    const e = message("!hive ping", { sender: STRANGER });
    expect(await s.send(e)).toEqual({ kind: "done", command: "ping" });
    expect(readFileSync(join(s.state.dir, "commands-seen.json"), "utf8")).toContain(e.event_id!);
    expect(await s.send({ ...e })).toEqual({ kind: "ignored", reason: "duplicate" });
  });
});

describe("each command runs once", () => {
  it("runs an event delivered twice once", async () => {
    const s = await setup();
    const e = message("!hive agent rotate x --yes");
    expect(await s.send(e)).toEqual({ kind: "done", command: "agent rotate" });
    expect(await s.send({ ...e })).toEqual({ kind: "ignored", reason: "duplicate" });
    expect(s.api.mutations()).toEqual([{ method: "rotateAgent", args: ["x"] }]);
    expect(s.bot.repliesTo(e.event_id!)).toHaveLength(1);
  });

  it("remembers handled events across a restart on the same state dir", async () => {
    const dir = tempDir("hm-control-");
    const first = await setup({ stateDir: dir });
    const e = message("!hive agent remove x --yes");
    await first.send(e);
    await first.control.stop();
    expect(first.api.mutations()).toHaveLength(1);

    const second = await setup({ stateDir: dir });
    expect(await second.send(e)).toEqual({ kind: "ignored", reason: "duplicate" });
    expect(second.api.calls).toEqual([]);
    expect(second.bot.sent).toEqual([]);
    const other = message("!hive version");
    expect(await second.send(other)).toEqual({ kind: "done", command: "version" });
  });

  it("does not run a command it could not record (at most once)", async () => {
    const s = await setup();
    // A directory where the file should be: the atomic rename fails.
    mkdirSync(join(s.state.dir, "commands-seen.json"));
    const e = message("!hive agent remove x --yes");
    expect(await s.send(e)).toEqual({ kind: "failed", internal: true });
    expect(s.api.calls).toEqual([]);
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toMatch(/could not record this command.*did not run it/);
  });

  it("ignores events after stop", async () => {
    const s = await setup();
    await s.control.stop();
    const e = message("!hive status");
    await s.control.handleEvent(e);
    expect(s.outcomes.size).toBe(0);
    expect(s.bot.sent).toEqual([]);
  });
});

describe("confirmation of destructive commands", () => {
  it("agent remove without --yes says what it would do and what to send; nothing changes", async () => {
    const s = await setup();
    const e = message("!hive agent remove x");
    expect(await s.send(e)).toEqual({ kind: "confirm", command: "agent remove" });
    expect(s.api.mutations()).toEqual([]);
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toBe(
      // Wrapped at 80 columns for text clients.
      "This logs out `@agent-x:hive.test` (its token stops working) and makes it leave\nthe hive rooms. Its account is kept.\n\n" +
        "Send `!hive agent remove x --yes` to confirm.",
    );
  });

  it("with --yes it runs", async () => {
    const s = await setup();
    const e = message("!hive agent remove x --yes");
    expect(await s.send(e)).toEqual({ kind: "done", command: "agent remove" });
    expect(s.api.mutations()).toEqual([{ method: "removeAgent", args: ["x"] }]);
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toMatch(/^Removed agent `x` \(`@agent-x:hive.test`\)\./);
  });

  it("agent rotate asks too, naming the token file", async () => {
    const s = await setup();
    const e = message("!hive agent rotate bee");
    expect(await s.send(e)).toEqual({ kind: "confirm", command: "agent rotate" });
    expect(s.api.mutations()).toEqual([]);
    expect(flat(only(s.bot.repliesTo(e.event_id!)).content.body)).toMatch(
      /logs out `@agent-bee:hive.test`.*writes a new token to `\/srv\/agents\/bee\/state\/matrix-token`[\s\S]*Send `!hive agent rotate bee --yes` to confirm\./,
    );
  });

  it("says what agents.onRemove makes removal do", async () => {
    const dir = tempDir("hm-control-");
    const s = await setup({ stateDir: dir, config: testConfig(dir, { control: { room: ROOM }, agents: { onRemove: { logout: false } } }) });
    const e = message("!hive agent remove x");
    await s.send(e);
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toMatch(
      /^This makes `@agent-x:hive.test` leave the hive rooms\. Its account is kept\./,
    );
  });

  it("an unknown agent is an error before any confirmation", async () => {
    const s = await setup();
    const e = message("!hive agent remove nobody");
    expect(await s.send(e)).toEqual({ kind: "failed", command: "agent remove", internal: false });
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toBe("There is no agent `nobody`. `!hive agents` lists them.");
    expect(s.api.mutations()).toEqual([]);
  });
});

describe("replies", () => {
  it("turns an unexpected exception into an internal-error reply and a log line, without details in the room", async () => {
    const s = await setup();
    s.api.failWith = new Error("database exploded at /secret/path");
    const e = message("!hive status");
    expect(await s.send(e)).toEqual({ kind: "failed", command: "status", internal: true });
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toBe("Internal error while running `!hive status`; see the service log.");
    const logged = s.logs.find((l) => l.includes("control-room command failed"));
    expect(logged).toMatch(/"command":"status".*"err":"database exploded at \/secret\/path"/);
  });

  it("shows a CommandError's message as is", async () => {
    const s = await setup();
    s.api.failWith = new CommandError("agent y exists already (joined)");
    const e = message("!hive agent add y");
    expect(await s.send(e)).toEqual({ kind: "failed", command: "agent add", internal: false });
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toBe("agent y exists already (joined)");
  });

  it("says when the homeserver is unreachable", async () => {
    const s = await setup();
    s.api.failWith = new HomeserverUnreachableError("http://hs", "ECONNREFUSED");
    const e = message("!hive sync");
    await s.send(e);
    expect(flat(only(s.bot.repliesTo(e.event_id!)).content.body)).toMatch(
      /the homeserver is unreachable \(ECONNREFUSED\)\. Try again when it is back\./,
    );
  });

  it("survives a reply that cannot be sent", async () => {
    const s = await setup();
    s.bot.sendError = new Error("send failed");
    await expect(s.send(message("!hive version"))).resolves.toEqual({ kind: "failed", command: "version", internal: true });
    expect(s.logs.join("")).toMatch(/could not send the error reply/);
  });

  it("escapes what agents and users said, in tables too", async () => {
    const s = await setup();
    const e = message("!hive agents");
    await s.send(e);
    const reply = only(s.bot.repliesTo(e.event_id!));
    // Too wide for 80 columns as a table: one block per agent.
    expect(reply.content.body).toMatch(/\nbee\n {2}User: `@agent-bee:hive.test`\n {2}State: failed \(token file not writable <b>\)\n/);
    expect(reply.content.formatted_body).toContain("failed (token file not writable &lt;b&gt;)");
    expect(foreignTags(String(reply.content.formatted_body))).toEqual([]);
  });

  it("explains usage errors with the usage line", async () => {
    const s = await setup();
    const e = message("!hive agent info");
    expect(await s.send(e)).toEqual({ kind: "rejected", command: "agent info" });
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toBe("`agent info` needs `<name>`.\n\nUsage: `!hive agent info <name>`");
  });

  it("replies inside the thread a command was sent in", async () => {
    const s = await setup();
    const e = message("!hive version", { content: { "m.relates_to": { rel_type: "m.thread", event_id: "$root" } } });
    await s.send(e);
    expect(only(s.bot.repliesTo(e.event_id!)).content["m.relates_to"]).toMatchObject({ rel_type: "m.thread", event_id: "$root" });
  });

  it("shows long work in one message edited in place, throttled", async () => {
    const s = await setup();
    s.api.progressLines = Array.from({ length: 40 }, (_, i) => `step ${i}`);
    const e = message("!hive sync");
    expect(await s.send(e)).toEqual({ kind: "done", command: "sync" });
    const first = only(s.bot.repliesTo(e.event_id!));
    expect(first.content.body).toBe("Running `!hive sync`…\n\n- step 0");
    const edits = s.bot.sent.filter((m) => m !== first);
    // 40 lines at once: no intermediate edit inside the interval, only the final result.
    expect(edits).toHaveLength(1);
    expect(edits[0].content).toMatchObject({
      "m.relates_to": { rel_type: "m.replace", event_id: first.eventId },
      "m.new_content": { msgtype: "m.notice", body: expect.stringMatching(/^Sync done: 1 change, 0 problems\./) },
    });
  });

  it("edits progress at most once per interval while work goes on", async () => {
    const slow = new RecordingApi();
    slow.sync = async (progress) => {
      for (let i = 0; i < 10; i++) {
        progress?.(`step ${i}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return { changes: [], problems: [] };
    };
    const t = await setup({ api: slow });
    const e = message("!hive sync");
    await t.send(e);
    const first = only(t.bot.repliesTo(e.event_id!));
    const edits = t.bot.sent.filter((m) => m !== first);
    // ~200 ms of work with a 50 ms interval: a few edits, far fewer than 10, and the last is the result.
    expect(edits.length).toBeGreaterThanOrEqual(2);
    expect(edits.length).toBeLessThan(8);
    expect(edits[edits.length - 1].content["m.new_content"]).toMatchObject({ body: "Sync done: everything was as it should be." });
    for (const edit of edits) expect(edit.content["m.relates_to"]).toEqual({ rel_type: "m.replace", event_id: first.eventId });
  });

  it("counts commands by outcome", async () => {
    const s = await setup();
    await s.send(message("!hive version"));
    await s.send(message("!hive agent remove x"));
    const text = await s.metrics.registry.metrics();
    expect(text).toMatch(/hive_matrix_commands_total\{command="version",outcome="done"\} 1/);
    expect(text).toMatch(/hive_matrix_commands_total\{command="agent remove",outcome="confirm"\} 1/);
  });

  it("runs commands in the order they came, each after the previous finished", async () => {
    const s = await setup();
    const events = ["!hive agent add n1", "!hive agent info n1", "!hive agent remove n1 --yes"].map((b) => message(b));
    for (const e of events) await s.control.handleEvent(e);
    await s.control.idle();
    expect(events.map((e) => s.outcomes.get(e.event_id!)?.kind)).toEqual(["done", "done", "done"]);
    expect(s.api.mutations().map((c) => c.method)).toEqual(["addAgent", "removeAgent"]);
  });
});

describe("commands render what the api says", () => {
  it("status", async () => {
    const s = await setup();
    const e = message("!hive status");
    await s.send(e);
    const body = String(only(s.bot.repliesTo(e.event_id!)).content.body);
    expect(body).toMatch(/Homeserver\s+`http:\/\/127.0.0.1:8008` reachable \(Synapse 1.x\)/);
    expect(body).toMatch(/Homeserver ping\s+ok, 12 ms/);
    // The alias first (what a client joins by), then the ID, wrapped under it to stay in 80 columns.
    expect(body).toMatch(/\nSpace\s+`#hive:hive.test`\n\s+`!Rm9v\w+`\n/);
    expect(body).toMatch(/\nhive-chat\s+`#hive-chat:hive.test` `!chat:hive.test`\n/);
    expect(body).toMatch(/hive-matrix\s+0.1.0, up 1 h 2 min/);
    expect(body).toMatch(/Agents\s+2: 1 joined, 1 failed/);
    expect(body).toMatch(/Control room\s+`!control:hive.test`/);
    expect(body).toMatch(/Last reconcile\s+2 min ago, 2 changes, 1 problem/);
    expect(body).toMatch(/- hive-chat: <power> levels/);
    // A long value wraps onto indented lines to stay in 80 columns: compare with the wrap undone.
    expect(body.replace(/\s+/g, " ")).toMatch(
      /Transactions since start 120 handled \(5 with a reused ID, likely after a homeserver restart\), 3 replays skipped, 1 refused/,
    );
    expect(body).toMatch(/Events dropped since start\s+2 handler failed\n/);
  });

  it("agents --state filters", async () => {
    const s = await setup();
    const e = message("!hive agents --state=failed");
    await s.send(e);
    const body = String(only(s.bot.repliesTo(e.event_id!)).content.body);
    expect(body).toMatch(/^1 agent failed \(of 2\):/);
    expect(body).not.toMatch(/agent-x/);
  });

  it("invite validates the user ID before the api sees it", async () => {
    const s = await setup();
    await s.send(message("!hive invite not-a-user"));
    await s.send(message("!hive invite @agent-q:hive.test"));
    expect(s.api.mutations()).toEqual([]);
    const e = message("!hive invite @bob:hive.test");
    await s.send(e);
    expect(s.api.mutations()).toEqual([{ method: "invite", args: ["@bob:hive.test"] }]);
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toMatch(
      /^Inviting `@bob:hive.test` into the Space and hive-chat:\n\n- invited/,
    );
  });

  it("agent add shows the result with the new agent", async () => {
    const s = await setup();
    const e = message("!hive agent add newbie");
    await s.send(e);
    expect(s.api.mutations()).toEqual([{ method: "addAgent", args: ["newbie"] }]);
    expect(only(s.bot.repliesTo(e.event_id!)).content.body).toMatch(
      /^Added agent `newbie` \(`@agent-newbie:hive.test`\): its token is written[\s\S]*State\s+joined/,
    );
  });
});

describe("plain bodies", () => {
  /** Every command as an operator would send it, its help, its confirmation and its result. */
  function everyCommand(table: readonly CommandDef[]): string[] {
    const sample: Record<string, string> = { name: "longname9", "user-id": "@someone.else:hive.test" };
    return leaves(table).flatMap(({ path, command }) => {
      const args = (command.args ?? []).filter((a) => !a.optional).map((a) => sample[a.name] ?? "x");
      const line = ["!hive", ...path, ...args].join(" ");
      const flags = (command.flags ?? []).map((f) => (f.choices ? `--${f.name}=${f.choices[0]}` : `--${f.name}`));
      return [
        line,
        `${line} ${flags.join(" ")}`.trim(),
        ...(command.confirm ? [`${line} --yes`] : []),
        `!hive help ${path.join(" ")}`,
        `!hive help ${path[0]}`,
      ];
    });
  }

  it(`every command's plain reply fits ${PLAIN_WIDTH} columns; the HTML keeps its tables`, async () => {
    // The longest names the defaults allow, an agent without a state dir, one that failed with a long reason.
    const api = new RecordingApi([
      agentView("longname9"),
      agentView("nodir0001", "registered", { tokenFile: "none", rooms: [], source: "command" }),
      agentView("failed001", "failed", {
        reason: "@agent-failed001:hive.test is not in the registration's user namespace, so the homeserver will refuse it",
      }),
    ]);
    const s = await setup({ api });
    const lines = [
      "!hive",
      "!hive help",
      "!hive nonsense",
      "!hive agent info nobody",
      "!hive agent add BAD NAME",
      ...everyCommand(COMMANDS),
    ];
    for (const line of lines) {
      api.reset();
      api.progressLines = ["provisioning longname9: registering, writing its token, restarting its daemon and more words"];
      const e = message(line);
      await s.send(e);
      const replies = s.bot.repliesTo(e.event_id!);
      expect(replies.length).toBeGreaterThan(0);
      for (const reply of replies) {
        const shown = (reply.content["m.new_content"] as Record<string, unknown> | undefined) ?? reply.content;
        const body = String(shown.body);
        const wide = body.split("\n").filter((l) => Array.from(l).length > PLAIN_WIDTH);
        expect({ line, wide }).toEqual({ line, wide: [] });
      }
    }
    const help = message("!hive help");
    await s.send(help);
    expect(String(only(s.bot.repliesTo(help.event_id!)).content.formatted_body)).toMatch(/^<p>.*<\/p><table><thead><tr><th>Command<\/th>/);
  });
});
