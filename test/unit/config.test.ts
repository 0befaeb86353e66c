import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { ConfigError, loadConfigFile, parseConfig } from "../../src/config/load";
import { renderSampleConfig } from "../../src/config/sample";
import { configSchema } from "../../src/config/schema";
import { tempDir } from "../support/tmp";

const minimal = { homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" } };

function problemsOf(raw: unknown): string[] {
  try {
    parseConfig(raw);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error("expected a ConfigError");
}

describe("config validation", () => {
  it("fills every default from the schema", () => {
    const config = parseConfig(minimal);
    expect(config.appservice).toMatchObject({ id: "hyperhive", bind: "127.0.0.1", port: 9010, botLocalpart: "hive" });
    expect(config.agents.localpart).toBe("agent-{name}");
    expect(config.agents.restartCommand).toEqual(["systemctl", "restart", "hive-matrix-daemon@{name}"]);
    expect(config.stateDir).toBe("/var/lib/hyperhive/matrix");
  });

  it("names the key path of missing, unknown and mistyped keys", () => {
    const problems = problemsOf({
      homeserver: { url: "http://x", extra: 1 },
      appservice: { port: "9010" },
      agents: { restartCommand: ["ok", 3] },
      operators: ["alice"],
      surprise: true,
    });
    expect(problems).toEqual(
      expect.arrayContaining([
        "homeserver.domain: required",
        "homeserver.extra: unknown key",
        "appservice.port: expected number, got string",
        "agents.restartCommand[1]: expected string, got number",
        expect.stringMatching(/^operators\[0\]: must be a full Matrix user ID/),
        "surprise: unknown key",
      ]),
    );
  });

  it("requires homeserver.url and homeserver.domain, and nothing else", () => {
    expect(problemsOf({})).toEqual(["homeserver: required"]);
    expect(problemsOf({ homeserver: {} })).toEqual(["homeserver.url: required", "homeserver.domain: required"]);
  });

  it("refuses a localpart template without exactly one {name} or with bad characters", () => {
    expect(problemsOf({ ...minimal, agents: { localpart: "agent" } })).toEqual(["agents.localpart: must contain {name} exactly once"]);
    expect(problemsOf({ ...minimal, agents: { localpart: "{name}-{name}" } })).toEqual([
      "agents.localpart: must contain {name} exactly once",
    ]);
    expect(problemsOf({ ...minimal, agents: { localpart: "Agent_{name}" } })[0]).toMatch(/^agents\.localpart: may only contain/);
  });

  it("refuses invalid agent names listed in the config", () => {
    expect(problemsOf({ ...minimal, agents: { names: ["ok", "UPPER", "../x", "waytoolongname"] } })).toEqual([
      expect.stringMatching(/^agents\.names\[1\]: "UPPER" is not a valid agent name/),
      expect.stringMatching(/^agents\.names\[2\]: "\.\.\/x" is not a valid agent name/),
      expect.stringMatching(/^agents\.names\[3\]: "waytoolongname" is not a valid agent name/),
    ]);
  });

  it("reports unreadable files and invalid YAML with the file name", () => {
    const dir = tempDir();
    expect(() => loadConfigFile(join(dir, "missing.yaml"))).toThrow(/missing\.yaml: 1 problem\(s\):\n {2}- file does not exist/);
    writeFileSync(join(dir, "bad.yaml"), "homeserver: [unclosed\n");
    expect(() => loadConfigFile(join(dir, "bad.yaml"))).toThrow(/bad\.yaml: .*not valid YAML/s);
  });
});

describe("config.sample.yaml", () => {
  const samplePath = join(__dirname, "..", "..", "config.sample.yaml");

  it("is exactly what the schema generates (run `npm run sample-config` after changing the schema)", () => {
    expect(readFileSync(samplePath, "utf8")).toBe(renderSampleConfig());
  });

  it("loads without problems and shows every default of the schema", () => {
    const sample = loadConfigFile(samplePath);
    const defaults = parseConfig(minimal);
    expect({ ...sample, operators: [] }).toEqual(defaults);
  });

  it("documents every key of the schema", () => {
    const doc = YAML.parse(readFileSync(samplePath, "utf8")) as Record<string, unknown>;
    const keysOf = (o: Record<string, unknown>, prefix = ""): string[] =>
      Object.entries(o).flatMap(([k, v]) =>
        v && typeof v === "object" && !Array.isArray(v) ? keysOf(v as Record<string, unknown>, `${prefix}${k}.`) : [`${prefix}${k}`],
      );
    const schemaKeys = keysOf(configSchema.parse({ ...minimal }) as unknown as Record<string, unknown>);
    expect(keysOf(doc).sort()).toEqual(schemaKeys.sort());
  });
});
