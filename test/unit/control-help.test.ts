/** Help and docs/commands.md come from the one command table. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { COMMANDS } from "../../src/control/commands";
import { commandHelp, commandReference, overview, usage } from "../../src/control/help";
import { leaves } from "../../src/control/table";

describe("help generated from the table", () => {
  const all = leaves(COMMANDS);

  it("has the commands the issue asks for", () => {
    expect(all.map((l) => l.path.join(" "))).toEqual([
      "help",
      "status",
      "agents",
      "agent info",
      "agent add",
      "agent remove",
      "agent rotate",
      "operator list",
      "operator add",
      "operator remove",
      "invite",
      "sync",
      "rooms list",
      "rooms add",
      "rooms remove",
      "rooms recreate",
      "log",
      "version",
    ]);
  });

  it("the overview lists every command with its usage, in both bodies", () => {
    const o = overview(COMMANDS);
    for (const { path, command } of all) {
      const u = usage(path, command);
      expect(o.text).toContain(u);
      expect(o.html).toContain(u.replace(/</g, "&lt;").replace(/>/g, "&gt;"));
      // The plain table wraps summaries at 80 columns.
      expect(o.text.replace(/\s+/g, " ")).toContain(command.summary);
    }
    expect(o.html).toMatch(/^<p>.*<\/p><table>/);
  });

  it("writes usage with <required>, [optional], [rest...] and flags", () => {
    const u = Object.fromEntries(all.map(({ path, command }) => [path.join(" "), usage(path, command)]));
    expect(u["agent remove"]).toBe("!hive agent remove <name> [--yes]");
    expect(u["help"]).toBe("!hive help [command...]");
    expect(u["agents"]).toBe("!hive agents [--state=<state>]");
  });

  it("explains each command, group and destructive command", () => {
    for (const { path } of all) expect(commandHelp(COMMANDS, path)?.text).toContain(`!hive ${path.join(" ")}`);
    expect(commandHelp(COMMANDS, ["agent"])?.text).toMatch(/agent info[\s\S]*agent add[\s\S]*agent remove[\s\S]*agent rotate/);
    expect(commandHelp(COMMANDS, ["agent", "remove"])?.text).toMatch(/nothing happens unless `--yes` is given/);
    expect(commandHelp(COMMANDS, ["nope"])).toBeUndefined();
    expect(commandHelp(COMMANDS, ["status", "extra"])).toBeUndefined();
  });

  it("docs/commands.md is what the table generates", () => {
    const doc = readFileSync(join(__dirname, "..", "..", "docs", "commands.md"), "utf8");
    // To regenerate: npx ts-node --transpile-only -e 'process.stdout.write(require("./src/control/help").commandReference(require("./src/control/commands").COMMANDS))' > docs/commands.md
    expect(doc).toBe(commandReference(COMMANDS));
  });
});

describe("the help command", () => {
  it("suggests a command for a typo", async () => {
    const { help } = await import("../../src/control/commands/help");
    const ctx = { table: COMMANDS, optionalArg: () => "agent remvoe" } as unknown as Parameters<typeof help.run>[0];
    await expect(help.run(ctx)).rejects.toMatchObject({
      display: { text: "There is no command `agent remvoe`. Did you mean `agent remove`? Send `!hive` for the list." },
    });
  });
});
