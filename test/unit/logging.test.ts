import { Writable } from "node:stream";
import { createLogger, redactSecretKeys, SecretScrubber } from "../../src/logging";

/** A destination that keeps every line a logger writes. */
function capture(): { lines: string[]; destination: Writable } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  return { lines, destination };
}

describe("SecretScrubber", () => {
  it("replaces a secret wherever it appears: alone, in a URL, glued to other text, several times", () => {
    const s = new SecretScrubber();
    s.add("syt_YWdlbnQ_abcdefghij_0a1b2c");
    expect(s.scrub("token syt_YWdlbnQ_abcdefghij_0a1b2c here")).toBe("token [redacted] here");
    expect(s.scrub("http://hs/x?access_token=syt_YWdlbnQ_abcdefghij_0a1b2c&user_id=@a:b")).toBe(
      "http://hs/x?access_token=[redacted]&user_id=@a:b",
    );
    expect(s.scrub("xxsyt_YWdlbnQ_abcdefghij_0a1b2cyy syt_YWdlbnQ_abcdefghij_0a1b2c")).toBe("xx[redacted]yy [redacted]");
    expect(s.scrub("syt_YWdlbnQ_abcdefghij_0a1b2")).toBe("syt_YWdlbnQ_abcdefghij_0a1b2");
  });

  it("replaces the longer of two secrets that end alike, and overlapping secrets as one", () => {
    const s = new SecretScrubber();
    s.add("inner-12345678");
    s.add("outer-inner-12345678");
    expect(s.scrub("a outer-inner-12345678 b inner-12345678 c")).toBe("a [redacted] b [redacted] c");
    s.add("ABCDEFGHIJ");
    s.add("GHIJKLMNOP");
    expect(s.scrub("<ABCDEFGHIJKLMNOP>")).toBe("<[redacted]>");
  });

  it("refuses values too short to be secrets, and scrubs with thousands registered", () => {
    const s = new SecretScrubber();
    s.add("short");
    s.add("");
    s.add(undefined);
    expect(s.scrub("short and sweet")).toBe("short and sweet");
    const tokens = Array.from({ length: 3000 }, (_, i) => `syt_ZmxlZXQ_${i.toString(36).padStart(8, "0")}_rnd${(i * 7919).toString(16)}`);
    tokens.forEach((t) => s.add(t));
    expect(s.scrub(`a ${tokens[0]} b ${tokens[2999]} c ${tokens[1500]}`)).toBe("a [redacted] b [redacted] c [redacted]");
    expect(s.scrub("nothing secret in this line at all")).toBe("nothing secret in this line at all");
  });

  it("finds a secret at any offset, after any text, including non-ASCII and a secret at the very start or end", () => {
    // The tails are screened by a rolling hash: a wrong update at some offset would let a secret through there.
    const s = new SecretScrubber();
    const secrets = ["syt_YWdlbnQ_abcdefghij_0a1b2c", "0123456789abcdef0123456789abcdef", "ünïcødé-secret-€€€-42"];
    secrets.forEach((x) => s.add(x));
    const filler = 'abc {"k":"v"} äöü € 😀 \n\t0123456789 xyz';
    let seed = 7;
    const rnd = (n: number): number => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
    for (let i = 0; i < 300; i++) {
      const before = filler.slice(0, rnd(filler.length + 1)).repeat(1 + rnd(3));
      const after = filler.slice(rnd(filler.length + 1));
      const secret = secrets[i % secrets.length];
      expect(s.scrub(before + secret + after)).toBe(`${before}[redacted]${after}`);
    }
    expect(s.scrub(secrets[1])).toBe("[redacted]");
    expect(s.scrub(secrets[1].slice(1))).toBe(secrets[1].slice(1));
  });

  it("keeps every registered secret out of the log lines", async () => {
    const { lines, destination } = capture();
    const { logger, scrubber } = createLogger({ destination });
    scrubber.add("0123456789abcdef0123456789abcdef");
    logger.info({ url: "http://hs/_matrix?access_token=0123456789abcdef0123456789abcdef" }, "in a field");
    logger.info("in the message 0123456789abcdef0123456789abcdef");
    logger.info({ token: "not registered but a secret key" }, "by key");
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines).toHaveLength(3);
    expect(lines.join("")).not.toContain("0123456789abcdef0123456789abcdef");
    expect(lines.join("")).not.toContain("not registered but a secret key");
    expect(lines.join("")).toContain("[redacted]");
  });
});

describe("redactSecretKeys", () => {
  it("replaces values under secret keys at the top level and two levels down, and leaves the caller's objects as they were", () => {
    const fields = {
      access_token: "t0",
      request: { headers: { Authorization: "Bearer t1", accept: "json" }, password: "t2" },
      deep: { a: { b: { token: "three levels down: not a path redacted by key" } } },
      list: [{ hs_token: "t3" }, "plain"],
      plain: "kept",
    };
    const copy = structuredClone(fields);
    const out = redactSecretKeys(fields);
    expect(out).toEqual({
      access_token: "[redacted]",
      request: { headers: { Authorization: "[redacted]", accept: "json" }, password: "[redacted]" },
      deep: { a: { b: { token: "three levels down: not a path redacted by key" } } },
      list: [{ hs_token: "[redacted]" }, "plain"],
      plain: "kept",
    });
    expect(Array.isArray(out.list)).toBe(true);
    expect(fields).toEqual(copy);
    const clean = { a: 1, b: { c: "x" } };
    expect(redactSecretKeys(clean)).toBe(clean);
  });

  it("applies to every line a logger writes, child bindings included", async () => {
    const { lines, destination } = capture();
    const { logger } = createLogger({ destination });
    logger.child({ module: "m", token: "bound-secret" }).warn({ options: { accessToken: "nested-secret" } }, "x");
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toContain("bound-secret");
    expect(lines[0]).not.toContain("nested-secret");
    expect(JSON.parse(lines[0])).toMatchObject({ module: "m", token: "[redacted]", options: { accessToken: "[redacted]" } });
  });
});
