/**
 * Hostile input to the config loader and to agent names: every case ends in a clear error (or a
 * valid value), never an unexpected exception, and a refused agent name never reaches the disk.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { agentLocalpart, agentNameProblem } from "../../src/agents/names";
import { ConfigError, loadConfigFile, parseConfig } from "../../src/config/load";
import { AGENT_NAME_PATTERN } from "../../src/config/schema";
import { tempDir } from "../support/tmp";

const base = { homeserver: { url: "http://127.0.0.1:8008", domain: "hive.test" } };

describe("config loader under hostile input", () => {
  it("random values anywhere in the document: a valid Config or a ConfigError naming key paths", () => {
    fc.assert(
      fc.property(
        fc.constantFrom("homeserver", "appservice", "agents", "rooms", "control", "logging", "operators", "stateDir", "bogus"),
        fc.anything(),
        (key, value) => {
          try {
            const config = parseConfig({ ...base, [key]: value });
            expect(config.homeserver.domain).toBe("hive.test");
          } catch (err) {
            expect(err).toBeInstanceOf(ConfigError);
            const problems = (err as ConfigError).problems;
            expect(problems.length).toBeGreaterThan(0);
            for (const p of problems) expect(typeof p).toBe("string");
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it("random file contents (YAML, binary, huge): a ConfigError, never a crash", () => {
    const dir = tempDir();
    const file = join(dir, "config.yaml");
    fc.assert(
      fc.property(
        fc.oneof(fc.string({ unit: "binary", maxLength: 300 }), fc.constantFrom("a: [", "- - -", "&a [*a]", "\u0000\u0001", "{{{{")),
        (text) => {
          writeFileSync(file, text);
          try {
            loadConfigFile(file);
          } catch (err) {
            expect(err).toBeInstanceOf(ConfigError);
            expect((err as Error).message).toContain(file);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("agent names under hostile input", () => {
  it("a name is accepted only if it is short, lower-case letters, digits and '-'; the localpart then has no tricks", () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.string({ unit: "binary", maxLength: 20 }), fc.constantFrom("../x", "UPPER", "a/b", "é", "a b", ".", "..", "-a", "a\n")),
        (name) => {
          const problem = agentNameProblem(name, 9);
          if (problem === undefined) {
            expect(name.length).toBeLessThanOrEqual(9);
            expect(AGENT_NAME_PATTERN.test(name)).toBe(true);
            const localpart = agentLocalpart(parseConfig(base), name);
            expect(localpart).toMatch(/^agent-[a-z0-9-]+$/);
          } else {
            expect(problem.length).toBeGreaterThan(0);
          }
        },
      ),
      { numRuns: 1000 },
    );
  });
});
