import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { discoverAgents } from "../../src/agents/discovery";
import { parseConfig } from "../../src/config/load";
import { buildRegistration, escapeRegex, loadRegistration, writeRegistration } from "../../src/registration";
import { tempDir } from "../support/tmp";

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
