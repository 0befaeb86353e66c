import { Writable } from "node:stream";
import { createLogger, SecretScrubber } from "../../src/logging";

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

  it("keeps every registered secret out of the log lines", async () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
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
