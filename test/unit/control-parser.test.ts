/** The command line: prefix, quoting, escapes, flags, and binding against the command table. */
import fc from "fast-check";
import { bind } from "../../src/control/bind";
import { COMMANDS } from "../../src/control/commands";
import { commandText, MAX_COMMAND_LENGTH, parseLine, quoteWord, splitFlags, tokenize, type ParsedLine } from "../../src/control/parser";
import { isHiveUser, testConfig } from "../support/control";

function words(input: string): string[] {
  const t = tokenize(input);
  if (!t.ok) throw new Error(t.error);
  return t.value.map((x) => x.value);
}

function line(input: string): ParsedLine {
  const p = parseLine(input);
  if (!p.ok) throw new Error(p.error);
  return p.value;
}

function error(input: string): string {
  const p = parseLine(input);
  if (p.ok) throw new Error(`expected an error for ${JSON.stringify(input)}`);
  return p.error;
}

describe("command prefix", () => {
  it.each([
    ["!hive", ""],
    ["!hive help", " help"],
    ["!hive\thelp", "\thelp"],
    ["!hive\nagent info x", "\nagent info x"],
    ["!HIVE status", " status"],
  ])("%j is a command", (body, rest) => {
    expect(commandText(body)).toBe(rest);
  });

  it.each(["!hivex", "!hive-help", " !hive help", "hive help", "!hiv", "", "please !hive help", "> <@op:x> !hive help"])(
    "%j is not",
    (body) => {
      expect(commandText(body)).toBeUndefined();
    },
  );
});

describe("tokenize", () => {
  it("splits on any whitespace", () => {
    expect(words("  agent \t info\n x  ")).toEqual(["agent", "info", "x"]);
    expect(words("a\u00a0b\u2003c")).toEqual(["a", "b", "c"]);
  });

  it("keeps double- and single-quoted words whole", () => {
    expect(words(`say "a b" 'c d'`)).toEqual(["say", "a b", "c d"]);
    expect(words(`"it's" 'say "hi"'`)).toEqual(["it's", 'say "hi"']);
  });

  it("joins adjacent pieces like a shell", () => {
    expect(words(`a"b c"d'e f'`)).toEqual(["ab cde f"]);
  });

  it("keeps empty quoted words", () => {
    expect(words(`x "" ''`)).toEqual(["x", "", ""]);
  });

  it("takes the character after a backslash literally, inside quotes too", () => {
    expect(words(String.raw`a\ b \"q\" "x\"y" 'it\'s' back\\slash`)).toEqual(["a b", '"q"', 'x"y', "it's", "back\\slash"]);
  });

  it("keeps astral characters whole, escaped or not", () => {
    expect(words("🐝 \\🐝x")).toEqual(["🐝", "🐝x"]);
  });

  it("reports unbalanced quotes and a lone backslash with what to do", () => {
    expect(error(`agent info "x`)).toMatch(/double quote at character 12 is never closed/);
    expect(error(`agent info 'x`)).toMatch(/single quote at character 12 is never closed.*\\'/);
    expect(error(`agent info x\\`)).toMatch(/lone backslash/);
  });

  it("refuses overlong input before reading it", () => {
    expect(error("a".repeat(MAX_COMMAND_LENGTH + 1))).toMatch(/at most 1000/);
    expect(parseLine("a".repeat(MAX_COMMAND_LENGTH)).ok).toBe(true);
  });
});

describe("flags", () => {
  it("reads --flag and --key=value anywhere", () => {
    expect(line("--yes agent remove x --state=failed")).toEqual({
      words: ["agent", "remove", "x"],
      flags: [
        { name: "yes", raw: "--yes" },
        { name: "state", value: "failed", raw: "--state=failed" },
      ],
    });
  });

  it("allows a quoted value and an empty one", () => {
    expect(line(`--state="a b" --x=`).flags).toEqual([
      { name: "state", value: "a b", raw: "--state=a b" },
      { name: "x", value: "", raw: "--x=" },
    ]);
  });

  it("never reads a quoted or escaped word as a flag", () => {
    expect(line(`agent remove x "--yes" '--yes' \\--yes`)).toEqual({
      words: ["agent", "remove", "x", "--yes", "--yes", "--yes"],
      flags: [],
    });
  });

  it("ends flags at --", () => {
    expect(line("help -- --yes -x")).toEqual({ words: ["help", "--yes", "-x"], flags: [] });
  });

  it("keeps a lone dash as a word", () => {
    expect(line("a - b").words).toEqual(["a", "-", "b"]);
  });

  it.each([
    ["-y", /two dashes/],
    ["---yes", /not a valid option/],
    ["--=x", /not a valid option/],
    ["--<b>", /not a valid option/],
  ])("refuses %j", (input, why) => {
    expect(error(input)).toMatch(why);
  });
});

describe("quoteWord", () => {
  it("reads back as the same single, non-flag word for any string", () => {
    fc.assert(
      fc.property(fc.fullUnicodeString({ maxLength: 40 }), (w) => {
        const t = tokenize(quoteWord(w));
        expect(t.ok && t.value.length === 1 && t.value[0].value === w).toBe(true);
        const s = t.ok ? splitFlags(t.value) : undefined;
        expect(s?.ok && s.value.flags.length === 0).toBe(true);
      }),
    );
  });
});

describe("bind against the command table", () => {
  const env = { config: testConfig("/tmp/unused"), isAppserviceUser: isHiveUser };
  const bound = (input: string) => bind(line(input), COMMANDS, env);
  const failure = (input: string): string => {
    const b = bound(input);
    if (b.ok) throw new Error(`expected ${input} to be refused`);
    return b.message.text;
  };

  it("binds a command with its arguments and flags", () => {
    const b = bound("agent remove x --yes");
    expect(b.ok && { path: b.invocation.path, args: b.invocation.args, flags: b.invocation.flags }).toEqual({
      path: ["agent", "remove"],
      args: { name: "x" },
      flags: { yes: true },
    });
  });

  it("matches command words case-insensitively, arguments as written", () => {
    const b = bound("AGENT Info x");
    expect(b.ok && b.invocation.path).toEqual(["agent", "info"]);
  });

  it("treats no words as help", () => {
    const b = bound("");
    expect(b.ok && b.invocation.path).toEqual(["help"]);
  });

  it("joins a rest argument", () => {
    const b = bound("help agent   remove");
    expect(b.ok && b.invocation.args).toEqual({ command: "agent remove" });
  });

  it("suggests the closest command", () => {
    expect(failure("stauts")).toMatch(/`stauts` is not a command\. Did you mean `status`\?/);
    expect(failure("agnets")).toMatch(/Did you mean `agents`\?/);
    expect(failure("florp")).not.toMatch(/Did you mean/);
  });

  it("says which sub-commands a group has", () => {
    expect(failure("agent")).toMatch(/`agent` needs one of: `info`, `add`, `remove`, `rotate`/);
    expect(failure("agent remvoe x")).toMatch(/`agent` has no sub-command `remvoe`\. Did you mean `remove`\?/);
  });

  it("runs a group's default sub-command when none is given (`rooms` lists)", () => {
    const b = bound("rooms --all");
    expect(b.ok && { path: b.invocation.path, flags: b.invocation.flags }).toEqual({ path: ["rooms", "list"], flags: { all: true } });
    expect(failure("rooms lsit")).toMatch(/`rooms` has no sub-command `lsit`\. Did you mean `list`\?/);
    expect(failure("rooms add nope")).toMatch(/`nope` is not a room ID/);
    expect(failure("log 0")).toMatch(/must be a number from 1 to 50/);
    expect(failure("log --level=info")).toMatch(/cannot be `info`/);
  });

  it("counts arguments", () => {
    expect(failure("agent info")).toMatch(/`agent info` needs `<name>`\.[\s\S]*Usage: `!hive agent info <name>`/);
    expect(failure("agent info a b")).toMatch(/takes at most 1 argument, but got more: `b`/);
    expect(failure("status now")).toMatch(/`status` takes no arguments/);
  });

  it("checks flags: unknown, twice, values, choices", () => {
    expect(failure("agent remove x --yse")).toMatch(/has no option `--yse`\. Did you mean `--yes`\?/);
    expect(failure("status --yes")).toMatch(/`status` has no option `--yes`\. It takes no options\./);
    expect(failure("agent remove x --yes --yes")).toMatch(/`--yes` is given twice/);
    expect(failure("agent remove x --yes=no")).toMatch(/`--yes` takes no value/);
    expect(failure("agents --state")).toMatch(/`--state` needs a value: `--state=<state>`/);
    expect(failure("agents --state=faild")).toMatch(/cannot be `faild`; it is one of `pending`.*Did you mean `failed`\?/);
  });

  it("runs each argument's own check", () => {
    expect(failure("agent add Bad_Name")).toMatch(/`<name>` `Bad_Name` may only contain lower-case letters/);
    expect(failure("agent add abcdefghij")).toMatch(/longer than 9 characters/);
    expect(failure(`agent add ""`)).toMatch(/is empty/);
    expect(failure("invite bob")).toMatch(/is not a Matrix user ID/);
    expect(failure("invite @agent-x:hive.test")).toMatch(/belongs to the hive itself/);
    expect(bound("invite @bob:hive.test").ok).toBe(true);
    expect(bound("invite @bob:[::1]:8448").ok).toBe(true);
  });

  it("only confirms with an unquoted --yes", () => {
    const b = bound(`agent remove x "--yes"`);
    expect(b.ok).toBe(false);
  });
});
