import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { ConfigError, loadConfigFile, parseConfig } from "../../src/config/load";
import { cli } from "../../src/cli";
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
    expect(config.agents.restartShell).toBe("/bin/sh");
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

  it("refuses a restart shell that is not an absolute path (it is run without a PATH lookup)", () => {
    expect(problemsOf({ ...minimal, agents: { restartShell: "dash" } })).toEqual(["agents.restartShell: must be an absolute path"]);
    expect(parseConfig({ ...minimal, agents: { restartShell: "/usr/bin/dash" } }).agents.restartShell).toBe("/usr/bin/dash");
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

  it("refuses invalid names on the adopt list", () => {
    expect(problemsOf({ ...minimal, agents: { adopt: ["old1", "Old2", "a b"] } })).toEqual([
      expect.stringMatching(/^agents\.adopt\[1\]: "Old2" is not a valid agent name/),
      expect.stringMatching(/^agents\.adopt\[2\]: "a b" is not a valid agent name/),
    ]);
  });

  it("refuses a bot localpart that an agent name can produce, under a fixed template and under {name}", () => {
    expect(problemsOf({ ...minimal, appservice: { botLocalpart: "agent-ops" } })).toEqual([
      expect.stringMatching(/^appservice\.botLocalpart: the bot @agent-ops:hive\.example is inside the agents' user namespace/),
    ]);
    expect(problemsOf({ ...minimal, appservice: { botLocalpart: "ops-bot" }, agents: { localpart: "{name}-bot" } })).toEqual([
      expect.stringMatching(/^appservice\.botLocalpart: .*inside the agents' user namespace \(agents\.localpart "\{name\}-bot"\)/),
    ]);
    for (const key of ["names", "adopt"]) {
      expect(problemsOf({ ...minimal, agents: { localpart: "{name}", [key]: ["hive"] } })).toEqual([
        expect.stringMatching(/^appservice\.botLocalpart: .*with agents\.names and agents\.adopt/),
      ]);
    }
    // Outside the namespace: a different prefix, or a name the template cannot produce.
    expect(() => parseConfig({ ...minimal, appservice: { botLocalpart: "agents-ops" } })).not.toThrow();
    expect(() => parseConfig({ ...minimal, appservice: { botLocalpart: "agent-" } })).not.toThrow();
    expect(() => parseConfig({ ...minimal, agents: { localpart: "{name}", names: ["bob"] } })).not.toThrow();
  });

  it("refuses an operator who is the bot or inside the agents' namespace", () => {
    expect(
      problemsOf({ ...minimal, operators: ["@ok:hive.example", "@hive:hive.example", "@agent-x:hive.example", "@Agent-Y:hive.example"] }),
    ).toEqual([
      "operators[1]: @hive:hive.example is the bot itself; operators are people",
      expect.stringMatching(/^operators\[2\]: @agent-x:hive\.example is inside the agents' user namespace .*ignore its commands/),
      expect.stringMatching(/^operators\[3\]: @Agent-Y:hive\.example is inside the agents' user namespace/),
    ]);
    expect(problemsOf({ ...minimal, operators: ["@alice:hive.example"], agents: { localpart: "{name}", adopt: ["alice"] } })).toEqual([
      expect.stringMatching(/^operators\[0\]: @alice:hive\.example is inside the agents' user namespace/),
    ]);
    // The same localpart on another server is someone else.
    expect(() => parseConfig({ ...minimal, operators: ["@agent-x:other.example", "@alice:hive.example"] })).not.toThrow();
    expect(() =>
      parseConfig({ ...minimal, operators: ["@alice:hive.example"], agents: { localpart: "{name}", names: ["bob"] } }),
    ).not.toThrow();
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

describe("check-config", () => {
  afterEach(() => jest.restoreAllMocks());

  it("warns about a metrics token file that run would refuse", async () => {
    const dir = tempDir();
    const tokenFile = join(dir, "metrics-token");
    writeFileSync(tokenFile, "a".repeat(32), { mode: 0o644 });
    const file = join(dir, "config.yaml");
    writeFileSync(
      file,
      YAML.stringify({ homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" }, appservice: { metricsTokenFile: tokenFile } }),
    );
    const out: string[] = [];
    jest.spyOn(process.stdout, "write").mockImplementation((chunk) => {
      out.push(String(chunk));
      return true;
    });
    expect(await cli(["check-config", "--config", file])).toBe(0);
    expect(out.join("")).toContain(
      `warning: metrics token file ${tokenFile} is readable by every user; make it 0600 or 0640 (run refuses to start)`,
    );
  });
});
