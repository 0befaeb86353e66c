/** Help in the room and docs/commands.md, both generated from the command table. */
import { blocks, code, concat, para, r, table as tableOf, text, type Rich } from "./render";
import { flagsOf, isGroup, leaves, PREFIX, type CommandDef, type FlagDef, type LeafCommand } from "./table";

function flagUsage(flag: FlagDef): string {
  return flag.value ? `[--${flag.name}=<${flag.value}>]` : `[--${flag.name}]`;
}

/** `!hive agent remove <name> [--yes]` */
export function usage(path: readonly string[], command: LeafCommand): string {
  const args = (command.args ?? []).map((a) => {
    const name = a.rest ? `${a.name}...` : a.name;
    return a.optional ? `[${name}]` : `<${name}>`;
  });
  return [PREFIX, ...path, ...args, ...flagsOf(command).map(flagUsage)].join(" ");
}

/** The overview: every command with its usage and summary. */
export function overview(table: readonly CommandDef[]): Rich {
  return blocks(
    para(r`Commands (send ${code(`${PREFIX} help <command>`)} for details):`),
    tableOf(
      ["Command", "What it does"],
      leaves(table).map(({ path, command }) => [code(usage(path, command)), command.summary]),
    ),
  );
}

function leafHelp(path: readonly string[], command: LeafCommand): Rich {
  const args = command.args ?? [];
  const flags = flagsOf(command);
  return blocks(
    para(code(usage(path, command))),
    para(command.summary),
    command.details ? para(command.details) : undefined,
    args.length > 0
      ? tableOf(
          ["Argument", "Meaning"],
          args.map((a) => [code(a.name), concat(a.help, a.optional ? " (optional)" : "")]),
        )
      : undefined,
    flags.length > 0
      ? tableOf(
          ["Option", "Meaning"],
          flags.map((f) => [
            code(f.value ? `--${f.name}=<${f.value}>` : `--${f.name}`),
            concat(f.help, f.choices ? ` One of: ${f.choices.join(", ")}.` : ""),
          ]),
        )
      : undefined,
    command.confirm ? para(r`Asks for confirmation first: nothing happens unless ${code("--yes")} is given.`) : undefined,
  );
}

/** Help for `words` (e.g. ["agent"] or ["agent", "remove"]), or undefined when they name no command. */
export function commandHelp(table: readonly CommandDef[], words: readonly string[]): Rich | undefined {
  const [first, second, ...more] = words.map((w) => w.toLowerCase());
  const def = table.find((d) => d.name === first);
  if (!def || more.length > 0) return undefined;
  if (!isGroup(def)) return second === undefined ? leafHelp([def.name], def) : undefined;
  if (second === undefined) {
    return blocks(
      para(text(def.summary)),
      def.details ? para(def.details) : undefined,
      tableOf(
        ["Command", "What it does"],
        def.subcommands.map((sub) => [code(usage([def.name, sub.name], sub)), sub.summary]),
      ),
    );
  }
  const sub = def.subcommands.find((s) => s.name === second);
  return sub ? leafHelp([def.name, sub.name], sub) : undefined;
}

/** docs/commands.md. */
export function commandReference(table: readonly CommandDef[]): string {
  const out: string[] = [
    "# Control-room commands",
    "",
    "<!-- Generated from the command table (src/control/commands/index.ts) by commandReference() in",
    "     src/control/help.ts; test/unit/control-help.test.ts fails when this file is out of date. -->",
    "",
    "Operators command the hive in its control room by sending a text message that starts with",
    `\`${PREFIX}\`. \`${PREFIX}\` alone shows the list of commands, \`${PREFIX} help <command>\` the details of one.`,
    "",
    "- **Where:** only in the control room (its ID is in `control-room-id` in the state dir, or set",
    "  `control.room`). Commands elsewhere are ignored.",
    "- **Who:** only the operators, by exact user ID: those listed in `operators` in the config and",
    "  those added with `!hive operator add` (kept in `operators.json` in the state dir). Anyone else",
    "  gets a short refusal, at most one a minute (the rest is ignored, and nothing of it is",
    "  recorded); the bot and the agents (the appservice's users) are never obeyed nor answered.",
    "- **Once:** each command message runs at most once, even when the homeserver delivers it again",
    "  or the service restarts. Editing a command does not run it again; send a new message.",
    "- **Confirmation:** destructive commands only say what they would do, and exactly what to send",
    "  to do it, unless `--yes` is given.",
    "- **Quoting:** `\"a b\"` and `'a b'` are one argument, `\\` takes the next character literally,",
    '  `--` ends the options. Options are written `--yes` or `--key=value`; a quoted `"--yes"` is an argument.',
    "- **Replies:** notices sent as replies to the command. Long work (`agent add`, `sync`) shows its",
    "  progress in one message that is edited as it goes. Each reply has an HTML body (tables, code)",
    "  and a plain body for text clients that is at most 80 columns wide: long lines are wrapped, and a",
    "  table too wide for 80 columns wraps its last column or shows each row as a block of lines.",
    "- **Encryption:** the bot cannot read encrypted messages. If encryption is switched on in the",
    "  control room, the bot says so there; delete `control-room-id` and restart to get a new room.",
    "",
    "## Overview",
    "",
    "| Command | What it does |",
    "| --- | --- |",
    ...leaves(table).map(({ path, command }) => `| \`${usage(path, command)}\` | ${mdCell(command.summary)} |`),
  ];
  for (const { path, command } of leaves(table)) {
    out.push("", `## ${path.join(" ")}`, "", "```", usage(path, command), "```", "", command.summary);
    if (command.details) out.push("", command.details);
    const args = command.args ?? [];
    if (args.length > 0) {
      out.push("", "| Argument | Meaning |", "| --- | --- |");
      for (const a of args) out.push(`| \`${a.name}\` | ${mdCell(a.help)}${a.optional ? " (optional)" : ""} |`);
    }
    const flags = flagsOf(command);
    if (flags.length > 0) {
      out.push("", "| Option | Meaning |", "| --- | --- |");
      for (const f of flags) {
        const name = f.value ? `--${f.name}=<${f.value}>` : `--${f.name}`;
        out.push(`| \`${name}\` | ${mdCell(f.help)}${f.choices ? ` One of: ${f.choices.join(", ")}.` : ""} |`);
      }
    }
    if (command.confirm) out.push("", "Asks for confirmation first: nothing happens unless `--yes` is given.");
    out.push("", `Permission: ${command.permission === "operator" ? "operators only" : "anyone in the control room"}.`);
  }
  return out.join("\n") + "\n";
}

function mdCell(s: string): string {
  return s.replace(/\|/g, "\\|").replace(/\n/g, " ");
}
