/** Plain and HTML bodies built together; everything from users and agents is escaped. */
import { blocks, code, escapeHtml, fitPlain, list, para, PLAIN_WIDTH, r, sanitize, table, text, truncate } from "../../src/control/render";
import { editContent, noticeContent } from "../../src/control/replies";
import { foreignTags } from "../support/control";

const HOSTILE = `<img src=x onerror="alert('x')">&amp;</table>`;

describe("HTML escaping", () => {
  it("escapes the five HTML characters", () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe("&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  });

  it("escapes values in every builder, keeping the plain text as written", () => {
    const parts = [text(HOSTILE), code(HOSTILE), para(HOSTILE), list([HOSTILE]), table(["h"], [[HOSTILE]]), r`x ${HOSTILE} y`];
    for (const p of parts) {
      expect(foreignTags(p.html)).toEqual([]);
      expect(p.html).toContain("&lt;img src=x onerror=&quot;alert(&#39;x&#39;)&quot;&gt;&amp;amp;&lt;/table&gt;");
      expect(p.text).toContain(HOSTILE);
    }
  });

  it("escapes the literal parts of a sentence too", () => {
    expect(r`a <b> ${code("c")}`.html).toBe("a &lt;b&gt; <code>c</code>");
  });

  it("neutralises control characters and bidi overrides", () => {
    expect(sanitize("a\nb\u202ec\u0000d")).toBe("a\uFFFDb\uFFFDc\uFFFDd");
    expect(text("x\ny").text).toBe("x\uFFFDy");
  });

  it("truncates by code point", () => {
    expect(truncate("🐝🐝🐝", 2)).toBe("🐝…");
    expect(truncate("abc", 3)).toBe("abc");
  });

  it("renders a table as aligned text and an HTML table", () => {
    const t = table(
      ["Name", "State"],
      [
        ["x", "joined"],
        ["longer", "failed"],
      ],
    );
    expect(t.text).toBe("Name    State\n------  ------\nx       joined\nlonger  failed");
    expect(t.html).toBe(
      "<table><thead><tr><th>Name</th><th>State</th></tr></thead><tbody><tr><td>x</td><td>joined</td></tr><tr><td>longer</td><td>failed</td></tr></tbody></table>",
    );
  });

  it("a plain table wider than 80 columns wraps its last column beside the others; the HTML is the same table", () => {
    const long = "word ".repeat(30).trim();
    const t = table(["Key", "Value"], [["k", long]]);
    const lines = t.text.split("\n");
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(PLAIN_WIDTH);
    expect(lines[2]).toMatch(/^k {4}word word/);
    expect(lines.slice(3).every((l) => l.startsWith("     word"))).toBe(true);
    expect(lines.slice(2).join(" ").replace(/\s+/g, " ")).toBe(`k ${long}`);
    expect(t.html).toBe(
      `<table><thead><tr><th>Key</th><th>Value</th></tr></thead><tbody><tr><td>k</td><td>${long}</td></tr></tbody></table>`,
    );
  });

  it("when the other columns leave the last one too little room, each row becomes a block of `Header: value` lines", () => {
    const wide = "x".repeat(70);
    const t = table(["Name", "Wide", "State"], [["a", wide, "joined"]]);
    expect(t.text).toBe(`a\n  Wide: ${wide}\n  State: joined`);
    expect(t.html).toContain("<th>Wide</th>");
  });

  it("fitPlain wraps long lines at 80 columns, list items under their text, and leaves short ones alone", () => {
    const words = "lorem ipsum ".repeat(12).trim();
    const out = fitPlain(`short\n- ${words}\n${words}`);
    const lines = out.split("\n");
    expect(lines[0]).toBe("short");
    expect(lines.every((l) => l.length <= PLAIN_WIDTH)).toBe(true);
    expect(lines[1].startsWith("- lorem")).toBe(true);
    expect(lines[2].startsWith("  ")).toBe(true);
    expect(out.replace(/\s+/g, " ")).toBe(`short - ${words} ${words}`);
    expect(fitPlain("x".repeat(90))).toBe("x".repeat(90));
  });
});

describe("message content", () => {
  const target = { roomId: "!r:x", eventId: "$cmd", sender: "@op:x" };

  it("a reply is an m.notice with both bodies and the reply relation", () => {
    expect(noticeContent(blocks(para("hi <you>")), target)).toEqual({
      msgtype: "m.notice",
      body: "hi <you>",
      format: "org.matrix.custom.html",
      formatted_body: "<p>hi &lt;you&gt;</p>",
      "m.relates_to": { "m.in_reply_to": { event_id: "$cmd" } },
      "m.mentions": { user_ids: ["@op:x"] },
    });
  });

  it("a reply to a command in a thread stays in the thread", () => {
    expect(noticeContent(para("x"), { ...target, threadId: "$root" })["m.relates_to"]).toEqual({
      rel_type: "m.thread",
      event_id: "$root",
      is_falling_back: false,
      "m.in_reply_to": { event_id: "$cmd" },
    });
  });

  it("an edit carries m.new_content and m.replace, with a fallback body", () => {
    const c = editContent("$orig", para("done"));
    expect(c).toMatchObject({
      msgtype: "m.notice",
      body: "* done",
      "m.new_content": { msgtype: "m.notice", body: "done", formatted_body: "<p>done</p>" },
      "m.relates_to": { rel_type: "m.replace", event_id: "$orig" },
    });
  });

  it("a message too big for one event is sent shortened, as plain text", () => {
    const big = list(Array.from({ length: 3000 }, (_, i) => `agent-${i} <b>with a long line of text</b>`));
    const c = noticeContent(big, target);
    expect(Buffer.byteLength(JSON.stringify(c))).toBeLessThan(65_536);
    expect(c.formatted_body).toBeUndefined();
    expect(String(c.body)).toMatch(/shortened/);
    const edit = editContent("$orig", big);
    expect(Buffer.byteLength(JSON.stringify(edit))).toBeLessThan(65_536);
    const astral = list(Array.from({ length: 20_000 }, () => "🐝\ud800"));
    expect(Buffer.byteLength(JSON.stringify(noticeContent(astral, target)))).toBeLessThan(65_536);
  });
});
