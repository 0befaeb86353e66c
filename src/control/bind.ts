/**
 * Matches parsed words and flags against the command table: finds the command, checks the number
 * of arguments, the flags and each argument's own check. Nothing reaches a handler (or the api)
 * unless it passed here.
 */
import { usage } from "./help";
import type { Flag, ParsedLine } from "./parser";
import { blocks, code, concat, join, para, r, truncate, type Rich } from "./render";
import { closest } from "./suggest";
import { flagsOf, isGroup, PREFIX, type CheckEnv, type CommandDef, type Invocation, type LeafCommand } from "./table";

export type BindResult = { ok: true; invocation: Invocation } | { ok: false; message: Rich; path?: string[] };

/** A word from the input, shortened and quoted for an error message. */
function shown(word: string): Rich {
  return code(truncate(word, 40));
}

function didYouMean(word: string, candidates: readonly string[], show = (c: string): string => c): Rich | string {
  const guess = closest(word, candidates);
  return guess ? r` Did you mean ${code(show(guess))}?` : "";
}

function usageLine(path: string[], command: LeafCommand): Rich {
  return para(r`Usage: ${code(usage(path, command))}`);
}

function fail(path: string[] | undefined, ...parts: (Rich | undefined)[]): BindResult {
  return { ok: false, message: blocks(...parts), path };
}

export function bind(line: ParsedLine, table: readonly CommandDef[], env: CheckEnv): BindResult {
  // `!hive` alone is help.
  const words = line.words.length === 0 && line.flags.length === 0 && table.some((d) => d.name === "help") ? ["help"] : line.words;
  if (words.length === 0) {
    return fail(undefined, para(r`No command given. Send ${code(PREFIX)} for the list of commands.`));
  }
  const first = words[0].toLowerCase();
  const def = table.find((d) => d.name === first);
  if (!def) {
    return fail(
      undefined,
      para(
        r`${shown(words[0])} is not a command.`,
        didYouMean(
          first,
          table.map((d) => d.name),
        ),
        r` Send ${code(PREFIX)} for the list of commands.`,
      ),
    );
  }
  let path = [def.name];
  let command: LeafCommand;
  let rest: string[];
  if (isGroup(def)) {
    const names = def.subcommands.map((s) => s.name);
    const subWord = words[1] ?? def.default;
    if (subWord === undefined) {
      return fail(
        path,
        para(r`${code(def.name)} needs one of: `, join(names.map((n) => code(n))), "."),
        groupUsage(def.name, def.subcommands),
      );
    }
    const sub = def.subcommands.find((s) => s.name === subWord.toLowerCase());
    if (!sub) {
      return fail(
        path,
        para(r`${code(def.name)} has no sub-command ${shown(subWord)}.`, didYouMean(subWord, names)),
        groupUsage(def.name, def.subcommands),
      );
    }
    path = [def.name, sub.name];
    command = sub;
    rest = words.slice(2);
  } else {
    command = def;
    rest = words.slice(1);
  }

  const argDefs = command.args ?? [];
  const required = argDefs.filter((a) => !a.optional).length;
  const takesRest = argDefs[argDefs.length - 1]?.rest === true;
  const name = path.join(" ");
  if (rest.length < required) {
    const missing = argDefs.slice(rest.length).filter((a) => !a.optional);
    return fail(
      path,
      para(
        r`${code(name)} needs `,
        join(
          missing.map((a) => code(`<${a.name}>`)),
          " and ",
        ),
        ".",
      ),
      usageLine(path, command),
    );
  }
  if (!takesRest && rest.length > argDefs.length) {
    const extra = rest.slice(argDefs.length);
    const takes =
      argDefs.length === 0 ? "takes no arguments" : `takes at most ${argDefs.length} argument${argDefs.length === 1 ? "" : "s"}`;
    return fail(
      path,
      para(
        r`${code(name)} ${takes}, but got more: `,
        join(extra.slice(0, 5).map(shown)),
        extra.length > 5 ? ", …" : "",
        r`. Put an argument containing spaces in quotes.`,
      ),
      usageLine(path, command),
    );
  }

  const args: Record<string, string> = {};
  argDefs.forEach((a, i) => {
    const value = a.rest ? rest.slice(i).join(" ") : rest[i];
    if (value !== undefined && (!a.rest || i < rest.length)) args[a.name] = value;
  });
  for (const a of argDefs) {
    const value = args[a.name];
    if (value === undefined || !a.check) continue;
    const problem = a.check(value, env);
    if (problem) return fail(path, para(r`${code(`<${a.name}>`)} ${shown(value)} ${problem}.`), usageLine(path, command));
  }

  const flags = bindFlags(line.flags, command, path);
  if (!flags.ok) return flags;
  return { ok: true, invocation: { path, command, args, flags: flags.flags } };
}

function bindFlags(
  given: readonly Flag[],
  command: LeafCommand,
  path: string[],
): { ok: true; flags: Record<string, string | true> } | { ok: false; message: Rich; path: string[] } {
  const defs = flagsOf(command);
  const name = path.join(" ");
  const out: Record<string, string | true> = {};
  const bad = (...parts: (Rich | string)[]): { ok: false; message: Rich; path: string[] } => ({
    ok: false,
    message: blocks(para(...parts), usageLine(path, command)),
    path,
  });
  for (const flag of given) {
    const def = defs.find((d) => d.name === flag.name);
    if (!def) {
      const known = defs.map((d) => d.name);
      return bad(
        r`${code(name)} has no option ${shown(`--${flag.name}`)}.`,
        known.length === 0 ? r` It takes no options.` : didYouMean(flag.name, known, (n) => `--${n}`),
      );
    }
    if (out[def.name] !== undefined) return bad(r`${code(`--${def.name}`)} is given twice.`);
    if (def.value === undefined) {
      if (flag.value !== undefined) return bad(r`${code(`--${def.name}`)} takes no value; write just ${code(`--${def.name}`)}.`);
      out[def.name] = true;
      continue;
    }
    if (flag.value === undefined || flag.value === "") {
      return bad(r`${code(`--${def.name}`)} needs a value: ${code(`--${def.name}=<${def.value}>`)}.`);
    }
    if (def.choices && !def.choices.includes(flag.value)) {
      return bad(
        r`${code(`--${def.name}`)} cannot be ${shown(flag.value)}; it is one of `,
        join(def.choices.map((c) => code(c))),
        ".",
        didYouMean(flag.value, def.choices),
      );
    }
    out[def.name] = flag.value;
  }
  return { ok: true, flags: out };
}

function groupUsage(group: string, subs: readonly LeafCommand[]): Rich {
  return para(
    concat("Usage: "),
    join(
      subs.map((s) => code(usage([group, s.name], s))),
      ", ",
    ),
  );
}
