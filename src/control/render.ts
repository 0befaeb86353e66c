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
 * A table: an HTML <table>, and in the plain body columns padded with spaces (counted in code
 * points; wide characters may still misalign, which is cosmetic).
 */
export function table(headers: readonly string[], rows: readonly (readonly Part[])[]): Rich {
  const head = headers.map(part);
  const body = rows.map((row) => headers.map((_, i) => part(row[i] ?? "")));
  const width = headers.map((_, i) => Math.max(Array.from(head[i].text).length, ...body.map((row) => Array.from(row[i].text).length)));
  const pad = (s: string, w: number): string => s + " ".repeat(Math.max(0, w - Array.from(s).length));
  const textLine = (cells: Rich[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c.text : pad(c.text, width[i])))
      .join("  ")
      .trimEnd();
  const text = [textLine(head), width.map((w) => "-".repeat(w)).join("  "), ...body.map(textLine)].join("\n");
  const htmlRow = (cells: Rich[], tag: "th" | "td"): string => `<tr>${cells.map((c) => `<${tag}>${c.html}</${tag}>`).join("")}</tr>`;
  const html = `<table><thead>${htmlRow(head, "th")}</thead><tbody>${body.map((row) => htmlRow(row, "td")).join("")}</tbody></table>`;
  return Rich.unsafe(text, html);
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
