/**
 * Hostile input to the config loader and to agent names: every case ends in a clear error (or a
 * valid value), never an unexpected exception, and a refused agent name never reaches the disk:
 * the agent-name test runs discovery and onboarding on real dirs and compares the file tree.
 */
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import fc from "fast-check";
import { discoverAgents } from "../../src/agents/discovery";
import { AgentError, AgentManager } from "../../src/agents/manager";
import { ConfigError, loadConfigFile, parseConfig } from "../../src/config/load";
import { createLogger } from "../../src/logging";
import { HomeserverTransport } from "../../src/matrix/transport";
import { Metrics } from "../../src/metrics";
import { buildRegistration, newToken } from "../../src/registration";
import { StateStore } from "../../src/store/state-store";
import { FakeHomeserver } from "../support/fake-homeserver";
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

/** Every path under `dir` (not following links), relative, with "/" after directories. */
function listTree(dir: string, base = dir, out: string[] = []): string[] {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    const st = lstatSync(path);
    out.push(relative(base, path) + (st.isDirectory() ? "/" : ""));
    if (st.isDirectory() && !st.isSymbolicLink()) listTree(path, base, out);
  }
  return out.sort();
}

/**
 * Which dir names may become agents, written out independently of the validator: at most 9
 * characters of a-z, 0-9 and '-', not starting with '-', and not the bot ("hive") or the operator
 * ("alice") under the bare {name} template used below.
 */
function mayBecomeAgent(name: string): boolean {
  if (name.length === 0 || name.length > 9 || name.startsWith("-")) return false;
  for (const c of name) if (!"abcdefghijklmnopqrstuvwxyz0123456789-".includes(c)) return false;
  return name !== "hive" && name !== "alice";
}

/** A homeserver that lets every agent register and log in: the disk is what is under test here. */
async function permissiveHomeserver(asToken: string): Promise<FakeHomeserver> {
  const hs = new FakeHomeserver({ flavour: "synapse", asToken, hsToken: "unused", domain: "hive.test", namespace: /^[a-z0-9-]+$/ });
  let n = 0;
  hs.override((req, res) => {
    const send = (body: unknown): boolean => {
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify(body));
      return true;
    };
    if (req.path === "/_matrix/client/v3/login")
      return send({ access_token: `syt_fuzz_${++n}`, device_id: (req.body as { device_id: string }).device_id });
    if (req.path === "/_matrix/client/v3/logout/all") return send({});
    return false;
  });
  await hs.start();
  return hs;
}

const dirName = fc
  .oneof(
    fc.string({ unit: "binary", maxLength: 14 }),
    fc.string({ unit: fc.constantFrom("a", "z", "0", "-", ".", "A", "é", " ", "\n", "_"), maxLength: 12 }),
    fc.constantFrom("UPPER", "-dash", "a.b", "waytoolongname", "ünï", "hive", "alice", "ok", "x-1", "...", " a"),
  )
  // What a file system can hold as one directory name.
  .filter((n) => n.length > 0 && n !== "." && n !== ".." && !n.includes("/") && !n.includes("\0") && Buffer.byteLength(n) < 200);

describe("agent names under hostile input", () => {
  it("discovery and onboarding write a token only into the state dir of a valid agent, and nothing anywhere else", async () => {
    const registrationTokens = { asToken: newToken(), hsToken: newToken() };
    const hs = await permissiveHomeserver(registrationTokens.asToken);
    try {
      await fc.assert(
        // The bot's and the operator's names are always among them: the collisions that matter most.
        fc.asyncProperty(
          fc.uniqueArray(dirName, { maxLength: 8 }).map((n) => [...new Set([...n, "hive", "alice", "ok"])]),
          async (names) => {
            // Each run is a fresh hive: accounts of earlier runs would (rightly) be refused as not ours.
            hs.users.clear();
            const sandbox = tempDir();
            const stateRoot = join(sandbox, "agents");
            const stateDir = join(sandbox, "state");
            for (const name of names) mkdirSync(join(stateRoot, name, "state"), { recursive: true });
            mkdirSync(stateDir, { mode: 0o700 });
            const before = listTree(sandbox);
            const config = parseConfig({
              homeserver: { url: hs.url, domain: "hive.test", maxRetries: 0 },
              appservice: { botLocalpart: "hive" },
              operators: ["@alice:hive.test"],
              stateDir,
              agents: { stateRoot, localpart: "{name}", restartCommand: ["true"], rescanIntervalSeconds: 3600 },
            });
            // As `hive-matrix registration` writes it from the dirs on disk.
            const registration = buildRegistration(config, registrationTokens, discoverAgents(config).names);
            const { logger } = createLogger({ level: "silent" });
            const metrics = new Metrics();
            const transport = new HomeserverTransport({
              baseUrl: hs.url,
              asToken: registrationTokens.asToken,
              timeoutMs: 5000,
              maxRetries: 0,
              logger,
              metrics,
            });
            const state = new StateStore(stateDir);
            state.init();
            const userNamespaces = (): RegExp[] => registration.namespaces.users.map((n) => new RegExp(n.regex));
            const manager = new AgentManager({ config, userNamespaces, transport, state, logger, metrics });
            manager.start();
            await manager.idle();
            for (const bad of ["../escape", "a/b", "../agents/x", "..", ""]) await expect(manager.add(bad)).rejects.toThrow(AgentError);
            await manager.stop();

            const valid = names.filter(mayBecomeAgent);
            const allowed = new Set([...before, ...valid.map((n) => `agents/${n}/state/matrix-token`)]);
            const after = listTree(sandbox);
            const unexpected = after.filter((p) => !allowed.has(p) && !p.startsWith("state/"));
            expect(unexpected).toEqual([]);
            // Not vacuous: every valid agent did get its token, and nothing left the sandbox.
            for (const n of valid) expect(readFileSync(join(stateRoot, n, "state", "matrix-token"), "utf8")).toMatch(/^syt_fuzz_\d+\n$/);
            expect(existsSync(join(sandbox, "escape"))).toBe(false);
            expect(readdirSync(dirname(sandbox))).toContain(basename(sandbox));
          },
        ),
        { numRuns: 25 },
      );
    } finally {
      await hs.stop();
    }
  });
});
