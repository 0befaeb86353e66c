import { mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { discoverAgents } from "../../src/agents/discovery";
import { parseConfig } from "../../src/config/load";
import { LiveRegistration } from "../../src/live-registration";
import { createLogger } from "../../src/logging";
import { buildRegistration, escapeRegex, loadRegistration, writeRegistration, type Registration } from "../../src/registration";
import { captureLogs } from "../support/logs";
import { tempDir } from "../support/tmp";
import { until } from "../support/wait";

const TOKENS = { asToken: "b".repeat(64), hsToken: "c".repeat(64) };

const config = parseConfig({ homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" } });

describe("registration", () => {
  it("writes fresh 32-byte hex tokens, 0600, and keeps them when written again", () => {
    const path = join(tempDir(), "registration.yaml");
    const first = writeRegistration(config, path);
    expect(first.freshTokens).toBe(true);
    expect(first.registration.as_token).toMatch(/^[0-9a-f]{64}$/);
    expect(first.registration.hs_token).toMatch(/^[0-9a-f]{64}$/);
    expect(first.registration.as_token).not.toBe(first.registration.hs_token);
    expect(statSync(path).mode & 0o777).toBe(0o600);

    const changed = parseConfig({
      homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" },
      appservice: { url: "http://10.0.0.1:9010" },
    });
    const second = writeRegistration(changed, path);
    expect(second.freshTokens).toBe(false);
    expect(second.registration.as_token).toBe(first.registration.as_token);
    expect(second.registration.hs_token).toBe(first.registration.hs_token);
    expect(loadRegistration(path)).toEqual(second.registration);
    expect(loadRegistration(path).url).toBe("http://10.0.0.1:9010");
  });

  it("has the fields the homeserver needs and an exclusive namespace for the bot and the agents", () => {
    const reg = buildRegistration(config, { asToken: "a".repeat(64), hsToken: "b".repeat(64) });
    expect(reg).toMatchObject({ id: "hyperhive", url: "http://127.0.0.1:9010", sender_localpart: "hive", rate_limited: false });
    const regexes = reg.namespaces.users.map((n) => new RegExp(n.regex));
    expect(reg.namespaces.users.every((n) => n.exclusive)).toBe(true);
    const inNamespace = (id: string): boolean => regexes.some((r) => r.test(id));
    expect(inNamespace("@hive:hive.example")).toBe(true);
    expect(inNamespace("@agent-alpha:hive.example")).toBe(true);
    expect(inNamespace("@alice:hive.example")).toBe(false);
    expect(inNamespace("@agent-alpha:hiveXexample")).toBe(false);
    expect(inNamespace("@hive:other.example")).toBe(false);
  });

  it("lists agents explicitly for the bare {name} template", () => {
    const legacy = parseConfig({ homeserver: { url: "http://h", domain: "hive.example" }, agents: { localpart: "{name}" } });
    const reg = buildRegistration(legacy, { asToken: "a".repeat(64), hsToken: "b".repeat(64) }, ["bob", "alice", "bob"]);
    expect(reg.namespaces.users.map((n) => n.regex)).toEqual([
      "^@hive:hive\\.example$",
      "^@alice:hive\\.example$",
      "^@bob:hive\\.example$",
    ]);
  });

  it("under {name}, lists the dirs on disk except those naming the bot or an operator, plus configured and adopted names", () => {
    const stateRoot = tempDir();
    for (const dir of ["hive", "alice", "bob", "Bad"]) mkdirSync(join(stateRoot, dir, "state"), { recursive: true });
    const legacy = parseConfig({
      homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" },
      operators: ["@alice:hive.example"],
      agents: { stateRoot, localpart: "{name}", names: ["carol"], adopt: ["old1"] },
    });
    // What `hive-matrix registration` passes for the bare template.
    const names = discoverAgents(legacy).names;
    expect(names).toEqual(["bob", "carol", "old1"]);
    expect(buildRegistration(legacy, { asToken: "a", hsToken: "b" }, names).namespaces.users.map((u) => u.regex)).toEqual([
      "^@hive:hive\\.example$",
      "^@bob:hive\\.example$",
      "^@carol:hive\\.example$",
      "^@old1:hive\\.example$",
    ]);
  });

  it("escapes regex metacharacters", () => {
    expect(escapeRegex("a.b+c*d?(e)|[f]{g}^$\\")).toBe("a\\.b\\+c\\*d\\?\\(e\\)\\|\\[f\\]\\{g\\}\\^\\$\\\\");
  });

  it("refuses the repository's example file with its placeholder tokens", () => {
    expect(() => loadRegistration(join(__dirname, "..", "..", "registration.yaml"))).toThrow(/placeholder as_token/);
  });

  it("refuses short, equal or missing tokens with a clear message", () => {
    const path = join(tempDir(), "r.yaml");
    const base = buildRegistration(config, { asToken: "a".repeat(64), hsToken: "b".repeat(64) });
    writeFileSync(path, YAML.stringify({ ...base, as_token: "short" }));
    expect(() => loadRegistration(path)).toThrow(/as_token is shorter than 32/);
    writeFileSync(path, YAML.stringify({ ...base, hs_token: base.as_token }));
    expect(() => loadRegistration(path)).toThrow(/must differ/);
    writeFileSync(path, YAML.stringify({ ...base, hs_token: undefined }));
    expect(() => loadRegistration(path)).toThrow(/hs_token: Required/);
  });

  it("keeps the example registration.yaml in the generated shape", () => {
    const example = YAML.parse(readFileSync(join(__dirname, "..", "..", "registration.yaml"), "utf8")) as Record<string, unknown>;
    const generated = buildRegistration(config, { asToken: "x", hsToken: "y" }) as unknown as Record<string, unknown>;
    expect({ ...example, as_token: "x", hs_token: "y" }).toEqual(generated);
  });
});

describe("the registration in use, reloaded from its file", () => {
  const legacy = parseConfig({ homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" }, agents: { localpart: "{name}" } });

  function setup(): { path: string; live: LiveRegistration; logs: string[]; changes: Registration[] } {
    const path = join(tempDir(), "registration.yaml");
    const initial = writeRegistration(legacy, path, ["one"]).registration;
    const { lines, destination } = captureLogs();
    const live = new LiveRegistration(path, initial, createLogger({ level: "debug", destination }).logger);
    const changes: Registration[] = [];
    live.on("changed", (r: Registration) => changes.push(r));
    return { path, live, logs: lines, changes };
  }
  const covers = (live: LiveRegistration, userId: string): boolean => live.userPatterns().some((r) => r.test(userId));

  it("uses new user namespaces at once; an unchanged file changes nothing", () => {
    const { path, live, changes } = setup();
    expect(covers(live, "@two:hive.example")).toBe(false);
    expect(live.reload("test")).toEqual({ outcome: "unchanged" });
    writeRegistration(legacy, path, ["one", "two"]);
    expect(live.reload("test")).toEqual({ outcome: "changed", users: 3 });
    expect(covers(live, "@two:hive.example")).toBe(true);
    expect(covers(live, "@one:hive.example")).toBe(true);
    expect(changes).toHaveLength(1);
    expect(live.current.namespaces.users).toHaveLength(3);
  });

  it.each<[string, (path: string) => void, RegExp]>([
    ["a file that is not YAML", (path) => writeFileSync(path, "{ nope"), /not valid YAML/],
    ["a missing file", (path) => unlinkSync(path), /cannot read registration .*ENOENT/],
    [
      "a regex that does not compile",
      (path) => {
        const reg = loadRegistration(path);
        reg.namespaces.users.push({ exclusive: true, regex: "^@(two:hive\\.example$" });
        writeFileSync(path, YAML.stringify(reg));
      },
      /Invalid regular expression/,
    ],
    [
      "new tokens",
      (path) => {
        const reg = loadRegistration(path);
        writeFileSync(
          path,
          YAML.stringify({ ...reg, as_token: "a".repeat(64), namespaces: buildRegistration(legacy, TOKENS, ["two"]).namespaces }),
        );
      },
      /it changes as_token, which needs a restart of hive-matrix/,
    ],
    [
      "another bot",
      (path) => writeFileSync(path, YAML.stringify({ ...loadRegistration(path), sender_localpart: "other" })),
      /it changes sender_localpart/,
    ],
  ])("refuses %s with one clear log line and keeps the registration in use", (_what, spoil, reason) => {
    const { path, live, logs, changes } = setup();
    const before = live.current;
    spoil(path);
    const result = live.reload("test");
    expect(result).toMatchObject({ outcome: "refused", reason: expect.stringMatching(reason) });
    expect(live.current).toBe(before);
    expect(covers(live, "@one:hive.example")).toBe(true);
    expect(changes).toEqual([]);
    const errors = logs.filter((l) => l.includes('"level":50'));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/not reloaded: .*still using the one loaded before/);
    expect(errors[0]).not.toContain("a".repeat(64));
    expect(errors[0]).not.toContain(before.as_token);
  });

  it("notices when `hive-matrix registration` replaces the file", async () => {
    const { path, live, changes } = setup();
    live.watch();
    try {
      writeRegistration(legacy, path, ["one", "two", "three"]);
      await until(() => changes.length === 1, 10_000);
      expect(covers(live, "@three:hive.example")).toBe(true);
    } finally {
      live.stop();
    }
  });
});
