/**
 * The shape of a command definition. Each command is declared once, as a value; that value drives
 * parsing and validation (bind.ts), the permission check and confirmation (processor.ts), and the
 * help and docs/commands.md (help.ts).
 */
import type { Config } from "../config/schema";
import type { HiveApi } from "./api";
import type { Rich } from "./render";

export const PREFIX = "!hive";

/**
 * Who may run a command. Every built-in command is `operator` (config.operators and the operators
 * added with `!hive operator add`, by exact user ID); a `member` command may be run by anyone who
 * can post in the control room.
 */
export type Permission = "operator" | "member";

/** What argument and option checks may consult. */
export interface CheckEnv {
  config: Config;
  isAppserviceUser(userId: string): boolean;
}

export interface ArgDef {
  name: string;
  help: string;
  optional?: boolean;
  /** Takes every remaining word, joined by single spaces (last argument only). */
  rest?: boolean;
  /** Why `value` is not acceptable (a sentence fragment), or undefined. Runs before any handler. */
  check?: (value: string, env: CheckEnv) => string | undefined;
}

export interface FlagDef {
  name: string;
  help: string;
  /** Present when the flag takes a value (`--name=value`): the placeholder shown in help. */
  value?: string;
  choices?: readonly string[];
}

/** The `--yes` flag every destructive command gets from its `confirm`. */
export const YES_FLAG: FlagDef = { name: "yes", help: "Do it without asking for confirmation." };

export interface Invocation {
  /** The command's words, e.g. ["agent", "remove"]. */
  path: string[];
  command: LeafCommand;
  /** Arguments by name; optional ones that were not given are absent. */
  args: Record<string, string>;
  /** Flags by name: `true` for a boolean flag, the value for `--key=value`. */
  flags: Record<string, string | true>;
}

export interface CommandContext {
  readonly api: HiveApi;
  readonly config: Config;
  readonly sender: string;
  readonly invocation: Invocation;
  readonly table: readonly CommandDef[];
  /** A required argument's value. */
  arg(name: string): string;
  optionalArg(name: string): string | undefined;
  flag(name: string): boolean;
  option(name: string): string | undefined;
  /** For commands declared `progress: true`: one line of progress, shown by editing one message. */
  progress(line: string): void;
  isAppserviceUser(userId: string): boolean;
}

interface CommandBase {
  name: string;
  /** One line, shown in the overview. */
  summary: string;
  /** More detail, shown by `help <command>` and in the docs. */
  details?: string;
}

export interface LeafCommand extends CommandBase {
  permission: Permission;
  args?: readonly ArgDef[];
  flags?: readonly FlagDef[];
  /**
   * Makes the command destructive: without `--yes` nothing runs, and the reply says what would
   * happen (this text) and exactly what to send to confirm. May throw CommandError (e.g. no such agent).
   */
  confirm?: (ctx: CommandContext) => Rich | Promise<Rich>;
  /** Long work: progress is reported in one message edited in place, which the result replaces. */
  progress?: boolean;
  run(ctx: CommandContext): Promise<Rich>;
  subcommands?: never;
}

export interface GroupCommand extends CommandBase {
  subcommands: readonly LeafCommand[];
  /** The sub-command the group's name alone runs (e.g. `!hive rooms` lists); without one it shows usage. */
  default?: string;
}

export type CommandDef = LeafCommand | GroupCommand;

export function isGroup(def: CommandDef): def is GroupCommand {
  return def.subcommands !== undefined;
}

/** Every flag a command accepts: its own, plus `--yes` when it asks for confirmation. */
export function flagsOf(command: LeafCommand): readonly FlagDef[] {
  return command.confirm ? [...(command.flags ?? []), YES_FLAG] : (command.flags ?? []);
}

/** Every runnable command with its words, in table order. */
export function leaves(table: readonly CommandDef[]): { path: string[]; command: LeafCommand }[] {
  return table.flatMap((def) =>
    isGroup(def) ? def.subcommands.map((sub) => ({ path: [def.name, sub.name], command: sub })) : [{ path: [def.name], command: def }],
  );
}
