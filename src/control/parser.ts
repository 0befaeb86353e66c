/**
 * From a message body to words and flags. Shell-like quoting: "a b" and 'a b' are one word,
 * a backslash takes the next character literally (inside quotes too), adjacent pieces join
 * (`a"b c"` is `ab c`). Only a word that starts unquoted can be a flag: `"--yes"` and `\--yes` are
 * arguments, so a confirmation cannot be smuggled in through quoting, while `--key="a b"` is a
 * flag with a value. `--` ends the flags.
 */
import { truncate } from "./render";
import { PREFIX } from "./table";

/** Longer bodies are refused before tokenizing. */
export const MAX_COMMAND_LENGTH = 1000;

export interface Token {
  value: string;
  /** True when the word's first character was quoted or escaped (such a word is never a flag). */
  quoted: boolean;
  /** Offset of the word's first character in the input. */
  start: number;
}

export interface Flag {
  name: string;
  /** The text after `=`, when given. */
  value?: string;
  /** The word as written, for error messages. */
  raw: string;
}

export interface ParsedLine {
  words: string[];
  flags: Flag[];
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; error: string };

const WHITESPACE = /\s/u;

/**
 * The text after `!hive` when `body` is a command (`!hive` followed by whitespace or the end,
 * case-insensitive), else undefined.
 */
export function commandText(body: string): string | undefined {
  if (body.length < PREFIX.length || body.slice(0, PREFIX.length).toLowerCase() !== PREFIX) return undefined;
  const rest = body.slice(PREFIX.length);
  if (rest !== "" && !WHITESPACE.test(rest[0])) return undefined;
  return rest;
}

export function tokenize(input: string): ParseResult<Token[]> {
  const tokens: Token[] = [];
  let current: Token | undefined;
  let quote: '"' | "'" | undefined;
  let quoteStart = 0;
  const word = (at: number, literal: boolean): Token => (current ??= { value: "", quoted: literal, start: at });
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    if (c === "\\") {
      if (i + 1 >= input.length) {
        return { ok: false, error: "the command ends with a lone backslash (\\); write \\\\ for a backslash" };
      }
      const w = word(i, true);
      // Take a whole surrogate pair, so an escaped emoji stays one character.
      const next = String.fromCodePoint(input.codePointAt(i + 1) ?? 0);
      w.value += next;
      i += next.length;
      continue;
    }
    if (quote) {
      if (c === quote) quote = undefined;
      else word(i, true).value += c;
      continue;
    }
    if (c === '"' || c === "'") {
      quote = c;
      quoteStart = i;
      word(i, true);
      continue;
    }
    if (WHITESPACE.test(c)) {
      if (current) tokens.push(current);
      current = undefined;
      continue;
    }
    word(i, false).value += c;
  }
  if (quote) {
    return {
      ok: false,
      error: `the ${quote === '"' ? "double" : "single"} quote at character ${quoteStart + 1} is never closed; close it, or write \\${quote} for a literal quote`,
    };
  }
  if (current) tokens.push(current);
  return { ok: true, value: tokens };
}

const FLAG_NAME = /^[A-Za-z][A-Za-z0-9-]*$/;

/** Splits words into positional words and flags. */
export function splitFlags(tokens: readonly Token[]): ParseResult<ParsedLine> {
  const words: string[] = [];
  const flags: Flag[] = [];
  let flagsEnded = false;
  for (const t of tokens) {
    if (t.quoted || flagsEnded || !t.value.startsWith("-") || t.value === "-") {
      words.push(t.value);
      continue;
    }
    if (t.value === "--") {
      flagsEnded = true;
      continue;
    }
    if (!t.value.startsWith("--")) {
      return { ok: false, error: `options are written with two dashes, like --yes; \`${truncate(t.value, 40)}\` is not understood` };
    }
    const body = t.value.slice(2);
    const eq = body.indexOf("=");
    const name = eq === -1 ? body : body.slice(0, eq);
    if (!FLAG_NAME.test(name)) {
      return { ok: false, error: `\`${truncate(t.value, 40)}\` is not a valid option (options look like --yes or --state=failed)` };
    }
    flags.push(eq === -1 ? { name, raw: t.value } : { name, value: body.slice(eq + 1), raw: t.value });
  }
  return { ok: true, value: { words, flags } };
}

/** tokenize + splitFlags. */
export function parseLine(input: string): ParseResult<ParsedLine> {
  if (input.length > MAX_COMMAND_LENGTH) {
    return { ok: false, error: `the command is ${input.length} characters long; commands are at most ${MAX_COMMAND_LENGTH}` };
  }
  const tokens = tokenize(input);
  return tokens.ok ? splitFlags(tokens.value) : tokens;
}

/** Quotes a word so that `tokenize` reads it back unchanged (used when echoing a command to send). */
export function quoteWord(word: string): string {
  if (word !== "" && !/[\s"'\\]/u.test(word) && !word.startsWith("-")) return word;
  return `"${word.replace(/["\\]/g, (c) => `\\${c}`)}"`;
}
