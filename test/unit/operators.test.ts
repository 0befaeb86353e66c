/** Operators added from chat: kept in operators.json, obeyed, removable; config operators are not. */
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ControlRoom, type Outcome } from "../../src/control";
import { createLogger } from "../../src/logging";
import { Metrics } from "../../src/metrics";
import { OPERATORS_FILE, Operators } from "../../src/operators";
import { StateError, StateStore } from "../../src/store/state-store";
import { BOT, FakeBot, isHiveUser, message, OPERATOR, RecordingApi, ROOM, STRANGER, testConfig } from "../support/control";
import { tempDir } from "../support/tmp";

function store(dir = tempDir()): { dir: string; state: StateStore; operators: Operators } {
  const state = new StateStore(dir);
  state.init();
  const operators = new Operators(testConfig(dir), state);
  operators.load();
  return { dir, state, operators };
}

describe("Operators", () => {
  it("adds, lists, persists 0600 and removes operators added from chat", () => {
    const { dir, operators } = store();
    expect(operators.all()).toEqual([OPERATOR]);
    expect(operators.isOperator(STRANGER)).toBe(false);
    expect(operators.add(STRANGER, OPERATOR, 1000)).toBe(true);
    expect(operators.add(STRANGER, OPERATOR)).toBe(false);
    expect(operators.isOperator(STRANGER)).toBe(true);
    expect(statSync(join(dir, OPERATORS_FILE)).mode & 0o777).toBe(0o600);

    const reloaded = store(dir).operators;
    expect(reloaded.list()).toEqual([
      { userId: OPERATOR, source: "config" },
      { userId: STRANGER, source: "command", addedBy: OPERATOR, at: 1000 },
    ]);
    expect(reloaded.remove(STRANGER)).toBe(true);
    expect(reloaded.remove(STRANGER)).toBe(false);
    expect(store(dir).operators.isOperator(STRANGER)).toBe(false);
  });

  it("never removes a config operator", () => {
    const { operators } = store();
    expect(operators.add(OPERATOR, OPERATOR)).toBe(false);
    expect(operators.remove(OPERATOR)).toBe(false);
    expect(operators.isOperator(OPERATOR)).toBe(true);
  });

  it("stops on a corrupted file instead of forgetting everyone", () => {
    const dir = tempDir();
    writeFileSync(join(dir, OPERATORS_FILE), "{ nope", { mode: 0o600 });
    expect(() => store(dir)).toThrow(StateError);
  });
});

describe("operators added from chat in the control room", () => {
  async function setup() {
    const dir = tempDir();
    const config = testConfig(dir, { control: { room: ROOM } });
    const state = new StateStore(dir);
    state.init();
    const operators = new Operators(config, state);
    operators.load();
    const bot = new FakeBot();
    bot.setState(ROOM, "m.room.member", BOT, { membership: "join" });
    const api = new RecordingApi();
    const outcomes = new Map<string, Outcome>();
    const control = new ControlRoom({
      bot,
      botUserId: BOT,
      state,
      config,
      logger: createLogger({ level: "silent" }).logger,
      metrics: new Metrics(),
      api,
      operators,
      isAppserviceUser: isHiveUser,
      onOutcome: (id, o) => {
        if (id) outcomes.set(id, o);
      },
    });
    expect(await control.start()).toBe(true);
    const send = async (body: string, sender: string): Promise<Outcome | undefined> => {
      const event = message(body, { sender });
      await control.handleEvent(event);
      await control.idle();
      return outcomes.get(event.event_id!);
    };
    return { operators, api, bot, control, send };
  }

  it("obeys an operator once added and refuses them once removed", async () => {
    const s = await setup();
    expect(await s.send("!hive version", STRANGER)).toEqual({ kind: "refused" });
    s.operators.add(STRANGER, OPERATOR);
    expect(await s.send("!hive version", STRANGER)).toEqual({ kind: "done", command: "version" });
    s.operators.remove(STRANGER);
    expect(await s.send("!hive version", STRANGER)).toEqual({ kind: "refused" });
  });

  it("invites operators added later into the control room", async () => {
    const s = await setup();
    s.operators.add(STRANGER, OPERATOR);
    await s.control.refreshOperators();
    expect(s.bot.invites).toContainEqual({ userId: STRANGER, roomId: ROOM });
  });

  it("asks before removing, and refuses to remove a config operator from chat", async () => {
    const s = await setup();
    await s.api.addOperator(STRANGER, OPERATOR);
    s.api.calls.length = 0;
    expect(await s.send(`!hive operator remove ${STRANGER}`, OPERATOR)).toEqual({ kind: "confirm", command: "operator remove" });
    expect(s.api.mutations()).toEqual([]);
    const configured = await s.send(`!hive operator remove ${OPERATOR} --yes`, OPERATOR);
    expect(configured).toMatchObject({ kind: "failed", internal: false });
    expect(s.bot.sent.at(-1)?.content.body).toMatch(/config file/);
    expect(s.api.mutations()).toEqual([]);
    expect(await s.send(`!hive operator remove ${STRANGER} --yes`, OPERATOR)).toEqual({ kind: "done", command: "operator remove" });
    expect(s.api.mutations()).toEqual([{ method: "removeOperator", args: [STRANGER] }]);
  });
});
