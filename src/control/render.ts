/**
 * Messages as a plain `body` and an HTML `formatted_body` built side by side. A `Rich` value can
 * only be made by the functions here, and every string they take is escaped on its way into the
 * HTML, so a name or reason that came from a user or an agent cannot inject markup.
 */

export class Rich {
  private constructor(
    readonly text: string,
    readonly html: string,
  ) {}

  /** Only for this module's builders; everything else composes existing values. */
  static unsafe(text: string, html: string): Rich {
    return new Rich(text, html);
  }
}

export type Part = Rich | string | number;

const HTML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c] ?? c);
}

/**
 * Control characters and bidi overrides in a value could fake line breaks or reorder a table
 * ("Trojan Source"); they are shown as U+FFFD instead.
 */
// eslint-disable-next-line no-control-regex
const UNSAFE_CHARS = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

export function sanitize(s: string): string {
  return s.replace(UNSAFE_CHARS, "\uFFFD");
}

/** Shortens a value for display, counting code points so a surrogate pair is never split. */
export function truncate(s: string, max: number): string {
  const chars = Array.from(s);
  return chars.length <= max ? s : `${chars.slice(0, max - 1).join("")}…`;
}

function part(p: Part): Rich {
  if (p instanceof Rich) return p;
  const s = sanitize(String(p));
  return Rich.unsafe(s, escapeHtml(s));
}

/** Plain text; the value is escaped (and control characters neutralised). */
export function text(s: string | number): Rich {
  return part(s);
}

/** Inline code: `x` in the body, <code>x</code> in HTML. */
export function code(s: string): Rich {
  const v = sanitize(s);
  return Rich.unsafe(`\`${v}\``, `<code>${escapeHtml(v)}</code>`);
}

/** Concatenates parts; strings are escaped. */
export function concat(...parts: Part[]): Rich {
  const rs = parts.map(part);
  return Rich.unsafe(rs.map((r) => r.text).join(""), rs.map((r) => r.html).join(""));
}

export function join(parts: readonly Part[], separator: Part = ", "): Rich {
  const out: Part[] = [];
  parts.forEach((p, i) => {
    if (i > 0) out.push(separator);
    out.push(p);
  });
  return concat(...out);
}

/**
 * Template literal for sentences: r`Send ${code(cmd)} to confirm.` The literal parts are escaped
 * too, so `<` in a sentence is text, never markup.
 */
export function r(strings: TemplateStringsArray, ...values: Part[]): Rich {
  const out: Part[] = [];
  strings.forEach((s, i) => {
    out.push(s);
    if (i < values.length) out.push(values[i]);
  });
  return concat(...out);
}

/** A paragraph (block). */
export function para(...parts: Part[]): Rich {
  const c = concat(...parts);
  return Rich.unsafe(c.text, `<p>${c.html}</p>`);
}

/** A bulleted list (block). */
export function list(items: readonly Part[]): Rich {
  const rs = items.map(part);
  return Rich.unsafe(rs.map((x) => `- ${x.text}`).join("\n"), `<ul>${rs.map((x) => `<li>${x.html}</li>`).join("")}</ul>`);
}

/** Blocks one after another (paragraphs, lists, tables). */
export function blocks(...items: (Rich | undefined)[]): Rich {
  const rs = items.filter((x): x is Rich => x !== undefined);
  return Rich.unsafe(rs.map((x) => x.text).join("\n\n"), rs.map((x) => x.html).join(""));
}

/**
 * How wide a plain body may be: text clients (a terminal, a bridge) show it as it is, so a line
 * longer than this wraps in the middle of a word or a table column.
 */
export const PLAIN_WIDTH = 80;

/** A table's last column needs at least this much room to be wrapped beside the others. */
const MIN_WRAPPED_COLUMN = 30;

function width(s: string): number {
  return Array.from(s).length;
}

/** Words of `s` on lines of at most `max` columns; a longer word gets a line of its own. */
export function wrapWords(s: string, max: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of s.split(" ")) {
    if (line !== "" && width(line) + 1 + width(word) > max) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  lines.push(line);
  return lines;
}

/**
 * The plain body as sent: every line wrapped at PLAIN_WIDTH, continuation lines indented like the
 * line they continue (list items: under the item's text). Tables are laid out to fit already.
 */
export function fitPlain(text: string, max = PLAIN_WIDTH): string {
  return text
    .split("\n")
    .flatMap((line) => {
      if (width(line) <= max) return [line];
      const indent = /^(\s*(?:- )?)/.exec(line)?.[1] ?? "";
      const pad = " ".repeat(width(indent));
      return wrapWords(line.slice(indent.length), max - width(indent)).map((l, i) => (i === 0 ? indent : pad) + l);
    })
    .join("\n");
}

/**
 * A table: an HTML <table>, and in the plain body columns padded with spaces (counted in code
 * points; wide characters may still misalign, which is cosmetic). A plain table wider than
 * PLAIN_WIDTH wraps its last column beside the others when that leaves it room, and otherwise
 * shows each row as its first cell followed by an indented `Header: value` line per other cell.
 */
export function table(headers: readonly string[], rows: readonly (readonly Part[])[]): Rich {
  const head = headers.map(part);
  const body = rows.map((row) => headers.map((_, i) => part(row[i] ?? "")));
  const htmlRow = (cells: Rich[], tag: "th" | "td"): string => `<tr>${cells.map((c) => `<${tag}>${c.html}</${tag}>`).join("")}</tr>`;
  const html = `<table><thead>${htmlRow(head, "th")}</thead><tbody>${body.map((row) => htmlRow(row, "td")).join("")}</tbody></table>`;
  return Rich.unsafe(plainTable(head, body), html);
}

function plainTable(head: Rich[], body: Rich[][]): string {
  const widths = head.map((_, i) => Math.max(width(head[i].text), ...body.map((row) => width(row[i].text))));
  const last = widths.length - 1;
  const before = widths.slice(0, last).reduce((sum, w) => sum + w + 2, 0);
  const room = Math.min(widths[last], PLAIN_WIDTH - before);
  if (room < MIN_WRAPPED_COLUMN && before + widths[last] > PLAIN_WIDTH) return stackedTable(head, body);
  const pad = (s: string, w: number): string => s + " ".repeat(Math.max(0, w - width(s)));
  const lines = (cells: Rich[]): string[] => {
    const lead = cells
      .slice(0, last)
      .map((c, i) => pad(c.text, widths[i]) + "  ")
      .join("");
    return wrapWords(cells[last].text, room).map((l, i) => `${i === 0 ? lead : " ".repeat(before)}${l}`.trimEnd());
  };
  const rule = [...widths.slice(0, last), room].map((w) => "-".repeat(w)).join("  ");
  return [...lines(head), rule, ...body.flatMap(lines)].join("\n");
}

function stackedTable(head: Rich[], body: Rich[][]): string {
  return body
    .flatMap((row) => [
      row[0].text,
      ...row.slice(1).flatMap((cell, i) => {
        const label = head[i + 1].text;
        return cell.text === "" ? [] : [label ? `  ${label}: ${cell.text}` : `  ${cell.text}`];
      }),
    ])
    .join("\n");
}

/** "1 agent", "3 agents". */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** "42 s", "3 min", "2 h 5 min", "3 d 4 h". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
