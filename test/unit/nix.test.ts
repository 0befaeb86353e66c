/**
 * The NixOS module's Nix code, evaluated without nixpkgs (Debian's `nix-bin` is enough):
 * every .nix file parses; the pure functions in nix/lib.nix turn sample option sets into the
 * expected tuwunel settings, hive-matrix config and registration; that registration equals what
 * the TypeScript builds (src/registration.ts, and the CLI when there is one); nix/npm-lock.nix
 * makes the lock fetchable; and nix/package-files.txt, the package's file set, is what
 * nix/package.nix builds from. nix/module.nix itself is tested in nix-module.test.ts.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import YAML from "yaml";
import { configSchema } from "../../src/config/schema";
import { buildRegistration } from "../../src/registration";
import { evalJson, evalRaw, nix, nixDir, nixProblem, repo, type Json, type JsonObject } from "../support/nix";
import { tempDir } from "../support/tmp";

const problem = nixProblem();

/** Calls `fn` of nix/lib.nix on `input` (passed as JSON, so `null` stays null). */
function libRaw(fn: string, input: JsonObject): string {
  return evalRaw(`{ lib, input }: (import lib).${fn} (builtins.fromJSON input)`, {
    lib: join(nixDir, "lib.nix"),
    input: JSON.stringify(input),
  });
}

function lib(fn: string, input: JsonObject): Json {
  return JSON.parse(libRaw(fn, input)) as Json;
}

/** Object keys sorted recursively: Nix prints attribute sets that way. */
function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return Object.fromEntries(entries.map(([k, v]) => [k, canonical(v)]));
  }
  return value;
}

function withoutTokens(registration: object): Record<string, unknown> {
  const rest: Record<string, unknown> = { ...registration };
  delete rest.as_token;
  delete rest.hs_token;
  return rest;
}

function nixFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return nixFiles(path);
    return entry.name.endsWith(".nix") ? [path] : [];
  });
}

const operator = "@alice:hive.example";

/** Three hives: the defaults, everything customised, and the bare `{name}` template. */
const samples: { name: string; input: JsonObject; config: JsonObject; registration: JsonObject; tuwunel: JsonObject }[] = [
  {
    name: "a default hive",
    input: { domain: "hive.example", appservice: { operators: [operator] } },
    config: {
      homeserver: { url: "http://127.0.0.1:8008", domain: "hive.example" },
      appservice: {
        id: "hyperhive",
        bind: "127.0.0.1",
        port: 9010,
        url: "http://127.0.0.1:9010",
        registration: "/var/lib/hyperhive/matrix-appservice/registration.yaml",
        botLocalpart: "hive",
      },
      stateDir: "/var/lib/hyperhive/matrix",
      operators: [operator],
      agents: {
        stateRoot: "/var/lib/hyperhive/agents",
        names: [],
        localpart: "agent-{name}",
        restartCommand: ["systemctl", "restart", "hive-matrix-daemon@{name}"],
      },
    },
    registration: {
      id: "hyperhive",
      url: "http://127.0.0.1:9010",
      sender_localpart: "hive",
      namespaces: {
        users: [
          { exclusive: true, regex: "^@hive:hive\\.example$" },
          { exclusive: true, regex: "^@agent-[a-z0-9-]+:hive\\.example$" },
        ],
        aliases: [],
        rooms: [],
      },
      rate_limited: false,
    },
    tuwunel: {
      global: {
        server_name: "hive.example",
        address: ["127.0.0.1"],
        port: [8008],
        max_request_size: 20000000,
        allow_federation: true,
        trusted_servers: [],
        allow_registration: true,
        registration_token_file: "/run/credentials/tuwunel.service/registration_token",
        appservice_dir: "/run/credentials/tuwunel.service",
        new_user_displayname_suffix: "",
        well_known: { client: "https://matrix.hive.example", server: "matrix.hive.example:443" },
      },
    },
  },
  {
    name: "a custom template, ports and paths",
    input: {
      domain: "hive.example",
      serverName: "hive-2.example:8448",
      gatewayHost: null,
      httpPort: 8118,
      openFirewall: true,
      trustedServers: ["matrix.org"],
      maxRequestSize: 50000000,
      registrationTokenFile: null,
      appservice: {
        id: "hive.prod",
        port: 9123,
        botLocalpart: "hive.bot",
        operators: ["@op:hive-2.example:8448"],
        agentLocalpart: "ai.{name}_x",
        agentNames: ["zeta", "alpha"],
        restartCommand: ["machinectl", "shell", "{name}", "/run/current-system/sw/bin/systemctl", "restart", "hive-matrix-daemon"],
        registration: "/srv/hm-registration/hive.yml",
        stateDir: "/srv/hm",
        agentStateRoot: "/srv/agents",
        settings: { logging: { level: "debug" }, homeserver: { requestTimeoutMs: 60000 } },
      },
    },
    config: {
      homeserver: { url: "http://127.0.0.1:8118", domain: "hive-2.example:8448", requestTimeoutMs: 60000 },
      appservice: {
        id: "hive.prod",
        bind: "127.0.0.1",
        port: 9123,
        url: "http://127.0.0.1:9123",
        registration: "/srv/hm-registration/hive.yml",
        botLocalpart: "hive.bot",
      },
      stateDir: "/srv/hm",
      operators: ["@op:hive-2.example:8448"],
      agents: {
        stateRoot: "/srv/agents",
        names: ["zeta", "alpha"],
        localpart: "ai.{name}_x",
        restartCommand: ["machinectl", "shell", "{name}", "/run/current-system/sw/bin/systemctl", "restart", "hive-matrix-daemon"],
      },
      logging: { level: "debug" },
    },
    registration: {
      id: "hive.prod",
      url: "http://127.0.0.1:9123",
      sender_localpart: "hive.bot",
      namespaces: {
        users: [
          { exclusive: true, regex: "^@hive\\.bot:hive-2\\.example:8448$" },
          { exclusive: true, regex: "^@ai\\.[a-z0-9-]+_x:hive-2\\.example:8448$" },
        ],
        aliases: [],
        rooms: [],
      },
      rate_limited: false,
    },
    tuwunel: {
      global: {
        server_name: "hive-2.example:8448",
        address: ["0.0.0.0"],
        port: [8118],
        max_request_size: 50000000,
        allow_federation: true,
        trusted_servers: ["matrix.org"],
        allow_registration: false,
        appservice_dir: "/run/credentials/tuwunel.service",
        new_user_displayname_suffix: "",
      },
    },
  },
  {
    name: "the bare {name} template with explicit agents (older hives)",
    input: {
      domain: "hive.example",
      serverName: "matrix.hive.example",
      appservice: { operators: ["@alice:matrix.hive.example"], agentLocalpart: "{name}", agentNames: ["bob", "carol", "bob"] },
    },
    config: {
      homeserver: { url: "http://127.0.0.1:8008", domain: "matrix.hive.example" },
      appservice: {
        id: "hyperhive",
        bind: "127.0.0.1",
        port: 9010,
        url: "http://127.0.0.1:9010",
        registration: "/var/lib/hyperhive/matrix-appservice/registration.yaml",
        botLocalpart: "hive",
      },
      stateDir: "/var/lib/hyperhive/matrix",
      operators: ["@alice:matrix.hive.example"],
      agents: {
        stateRoot: "/var/lib/hyperhive/agents",
        names: ["bob", "carol", "bob"],
        localpart: "{name}",
        restartCommand: ["systemctl", "restart", "hive-matrix-daemon@{name}"],
      },
    },
    registration: {
      id: "hyperhive",
      url: "http://127.0.0.1:9010",
      sender_localpart: "hive",
      namespaces: {
        users: [
          { exclusive: true, regex: "^@hive:matrix\\.hive\\.example$" },
          { exclusive: true, regex: "^@bob:matrix\\.hive\\.example$" },
          { exclusive: true, regex: "^@carol:matrix\\.hive\\.example$" },
        ],
        aliases: [],
        rooms: [],
      },
      rate_limited: false,
    },
    tuwunel: {
      global: {
        server_name: "matrix.hive.example",
        address: ["127.0.0.1"],
        port: [8008],
        max_request_size: 20000000,
        allow_federation: true,
        trusted_servers: [],
        allow_registration: true,
        registration_token_file: "/run/credentials/tuwunel.service/registration_token",
        appservice_dir: "/run/credentials/tuwunel.service",
        new_user_displayname_suffix: "",
        well_known: { client: "https://matrix.hive.example", server: "matrix.hive.example:443" },
      },
    },
  },
];

describe("nix/", () => {
  beforeAll(() => {
    if (problem) throw new Error(problem);
  });

  describe("parses", () => {
    const files = nixFiles(nixDir);

    it("has the module, the package and the pure functions", () => {
      const names = files.map((f) => relative(nixDir, f));
      expect(names).toEqual(expect.arrayContaining(["lib.nix", "module.nix", "package.nix", "npm-lock.nix"]));
    });

    it.each(files.map((f) => [relative(repo, f), f]))("%s", (_name, file) => {
      // Throws, with Nix's message, on a syntax error or an undefined variable.
      expect(() => nix(["--parse", file])).not.toThrow();
    });
  });

  describe.each(samples)("lib.nix for $name", (sample) => {
    it("generates the hive-matrix config", () => {
      expect(lib("hiveMatrixConfig", sample.input)).toEqual(sample.config);
    });

    it("generates the registration without tokens", () => {
      expect(lib("registrationWithoutTokens", sample.input)).toEqual(sample.registration);
    });

    it("generates tuwunel's [global] settings", () => {
      expect(lib("tuwunelSettings", sample.input)).toEqual(sample.tuwunel);
    });

    it("raises no assertion", () => {
      expect(lib("failedAssertions", sample.input)).toEqual([]);
    });

    it("writes a config the TypeScript schema accepts and a registration identical to buildRegistration's", () => {
      const config = configSchema.parse(lib("hiveMatrixConfig", sample.input));
      const fromTs = buildRegistration(config, { asToken: "a".repeat(64), hsToken: "b".repeat(64) }, config.agents.names);
      const nixText = libRaw("registrationWithoutTokens", sample.input);
      expect(JSON.parse(nixText)).toEqual(withoutTokens(fromTs));
      // Byte for byte, given Nix's sorted attribute names.
      expect(nixText).toBe(JSON.stringify(canonical(withoutTokens(fromTs))));
    });

    const cli = join(repo, "src", "cli.ts");
    (existsSync(cli) ? it : it.skip)("matches the registration `hive-matrix registration` writes", () => {
      const dir = tempDir("hm-nix-");
      const generated = lib("hiveMatrixConfig", sample.input) as JsonObject;
      // Same config, but nothing outside the temp dir is touched.
      const appservice = { ...(generated.appservice as JsonObject), registration: join(dir, "registration.yaml") };
      const agents = { ...(generated.agents as JsonObject), stateRoot: join(dir, "agents") };
      const configPath = join(dir, "config.yaml");
      writeFileSync(configPath, JSON.stringify({ ...generated, appservice, agents }));
      const out = join(dir, "out", "registration.yaml");
      execFileSync(process.execPath, [join(repo, "bin", "hive-matrix.js"), "registration", "--config", configPath, "--out", out], {
        cwd: repo,
        stdio: ["ignore", "pipe", "pipe"],
      });
      const written = YAML.parse(readFileSync(out, "utf8")) as Record<string, unknown>;
      expect(written.as_token).toMatch(/^[0-9a-f]{64}$/);
      expect(written.hs_token).toMatch(/^[0-9a-f]{64}$/);
      expect(statSync(out).mode & 0o777).toBe(0o600);
      expect(withoutTokens(written)).toEqual(lib("registrationWithoutTokens", sample.input));
    });
  });

  describe("lib.nix assertions", () => {
    const base = { domain: "hive.example", appservice: { operators: [operator] } };
    const failed = (input: JsonObject): string[] => lib("failedAssertions", input) as string[];

    it("asks for services.hyperhive.domain, and only for it, when it is missing", () => {
      const messages = failed({ appservice: { operators: [operator] } });
      expect(messages).toHaveLength(1);
      expect(messages[0]).toMatch(/set services\.hyperhive\.domain/);
    });

    it("asks for operators", () => {
      expect(failed({ domain: "hive.example" })).toEqual([expect.stringMatching(/appservice\.operators is empty.*Set it/)]);
    });

    it.each([
      ["agent-{name}-{name}", /must contain \{name\} exactly once/],
      ["agent", /must contain \{name\} exactly once/],
      ["Agent-{name}", /may only contain a-z, 0-9 and \. _ = \/ - around \{name\}/],
      ["agent+{name}", /may only contain a-z, 0-9 and \. _ = \/ - around \{name\}/],
      ["hive{name}", /can produce the bot's localpart/],
    ])("refuses the localpart template %s", (template, message) => {
      const messages = failed({ ...base, appservice: { ...base.appservice, agentLocalpart: template } });
      expect(messages).toEqual([expect.stringMatching(message)]);
      expect(messages[0]).toContain("services.hyperhive.matrix.appservice.agentLocalpart");
    });

    it("accepts every character the TypeScript schema accepts around {name}", () => {
      expect(failed({ ...base, appservice: { ...base.appservice, agentLocalpart: "a.b_c=d/e-{name}.9" } })).toEqual([]);
    });

    it("wants agent names with the bare {name} template", () => {
      expect(failed({ ...base, appservice: { ...base.appservice, agentLocalpart: "{name}" } })).toEqual([
        expect.stringMatching(/set services\.hyperhive\.matrix\.appservice\.agentNames/),
      ]);
    });

    it("refuses bad operators, agent names, ports and registration paths, naming the option", () => {
      const messages = failed({
        ...base,
        httpPort: 9010,
        appservice: {
          ...base.appservice,
          operators: ["alice"],
          agentNames: ["Bad_Name", "waytoolongname"],
          registration: "/var/lib/hyperhive/matrix/registration.json",
        },
      });
      expect(messages).toEqual([
        expect.stringMatching(/appservice\.operators: "alice" is not a full Matrix user ID/),
        expect.stringMatching(/appservice\.agentNames: "Bad_Name", "waytoolongname"/),
        expect.stringMatching(/appservice\.port = 9010 must be a TCP port .* other than services\.hyperhive\.matrix\.httpPort/),
        expect.stringMatching(/appservice\.registration = .* ending in \.yaml or \.yml/),
        expect.stringMatching(/appservice\.registration = .* directory of its own/),
      ]);
    });

    it("needs a gateway for the GUI", () => {
      expect(failed({ ...base, gatewayHost: null, gui: { enable: true } })).toEqual([expect.stringMatching(/gui\.enable needs a gateway/)]);
    });

    it("does not ask for appservice settings when the appservice is off", () => {
      expect(failed({ domain: "hive.example", appservice: { enable: false } })).toEqual([]);
    });
  });

  describe("npm-lock.nix", () => {
    const fixExpr = (what: string): string =>
      `{ file, repo }: let n = import file; package = builtins.fromJSON (builtins.readFile (repo + "/package.json")); ` +
      `lock = builtins.fromJSON (builtins.readFile (repo + "/package-lock.json")); fixed = n.fixLock { inherit package; packageLock = lock; }; in ${what}`;
    const args = { file: join(nixDir, "npm-lock.nix"), repo };

    it("leaves no package importNpmLock could not fetch", () => {
      expect(evalJson(fixExpr("n.unfetchable fixed"), args)).toEqual([]);
    });

    it("derives each registry tarball URL from the entry's name and version", () => {
      const lockFile = JSON.parse(readFileSync(join(repo, "package-lock.json"), "utf8")) as { packages: Record<string, JsonObject> };
      const resolved = evalJson(fixExpr("builtins.mapAttrs (_: e: e.resolved or null) fixed.packages"), args) as Record<
        string,
        string | null
      >;
      for (const [path, entry] of Object.entries(lockFile.packages)) {
        if (path === "" || entry.link === true || typeof entry.integrity !== "string") continue;
        const name = typeof entry.name === "string" ? entry.name : path.slice(path.lastIndexOf("node_modules/") + "node_modules/".length);
        const base = name.includes("/") ? name.slice(name.indexOf("/") + 1) : name;
        const url =
          typeof entry.resolved === "string" ? entry.resolved : `https://registry.npmjs.org/${name}/-/${base}-${String(entry.version)}.tgz`;
        expect([path, resolved[path]]).toEqual([path, url]);
      }
    });

    it("resolves an npm alias to the aliased package", () => {
      expect(evalJson(fixExpr(`n.tarballUrl "@vector-im/matrix-bot-sdk" "0.8.0-element.3"`), args)).toBe(
        "https://registry.npmjs.org/@vector-im/matrix-bot-sdk/-/matrix-bot-sdk-0.8.0-element.3.tgz",
      );
    });

    it("points each file: override at its directory in the repository", () => {
      const pkg = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")) as { overrides?: Record<string, string> };
      const overrides = Object.entries(pkg.overrides ?? {}).filter(([, spec]) => spec.startsWith("file:"));
      const packages = evalJson(fixExpr("fixed.packages"), args) as Record<string, JsonObject>;
      for (const [name, spec] of overrides) {
        const dir = spec.slice("file:".length).replace(/^\.\//, "");
        expect(packages[`node_modules/${name}`]).toEqual({ resolved: dir, link: true });
        expect(existsSync(join(repo, dir, "package.json"))).toBe(true);
      }
      // No entry may point at a path that does not exist (importNpmLock copies them).
      for (const [path, entry] of Object.entries(packages)) {
        const target = entry.resolved;
        if (typeof target === "string" && !target.includes("://")) expect([path, existsSync(join(repo, target))]).toEqual([path, true]);
      }
    });
  });

  describe("package-files.txt, the package's file set", () => {
    const listed = readFileSync(join(nixDir, "package-files.txt"), "utf8")
      .split("\n")
      .filter((line) => line !== "" && !line.startsWith("#"));

    it("names existing paths inside the repository, once each", () => {
      expect(listed.length).toBeGreaterThan(0);
      for (const path of listed) {
        expect([path, /^\/|(^|\/)\.\.(\/|$)|\s/.test(path)]).toEqual([path, false]);
        expect([path, existsSync(join(repo, path))]).toEqual([path, true]);
      }
      expect(new Set(listed).size).toBe(listed.length);
    });

    it("is the file set nix/package.nix builds from", () => {
      // package.nix evaluated with just enough of a lib to see its source file set.
      const expr = `{ repo }: let
        lib = {
          importJSON = p: builtins.fromJSON (builtins.readFile p);
          inherit (builtins) filter;
          hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
          splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
          fileContents = p: let t = builtins.readFile p; n = builtins.stringLength t; in
            if builtins.substring (n - 1) 1 t == "\\n" then builtins.substring 0 (n - 1) t else t;
          fileset = { unions = ps: ps; toSource = { root, fileset }: { inherit root fileset; }; };
          licenses.asl20 = null;
          platforms.linux = [ ];
        };
        pkg = import (/. + repo + "/nix/package.nix") {
          inherit lib;
          buildNpmPackage = args: args;
          importNpmLock = { __functor = _: _: null; npmConfigHook = null; };
          nodejs_22 = null;
        };
      in { root = toString pkg.src.root; files = map toString pkg.src.fileset; }`;
      const src = evalJson(expr, { repo }) as { root: string; files: string[] };
      expect(src.root).toBe(repo);
      expect(src.files).toEqual(listed.map((path) => join(repo, path)));
    });
  });
});

describe("the deployed node flags", () => {
  it("are the ones the fleet benchmark measures as deployed", () => {
    const root = join(__dirname, "..", "..");
    const bench = readFileSync(join(root, "bench", "scenarios", "fleet.ts"), "utf8");
    const flags = JSON.parse(/DEPLOYED_FLAGS = (\[[^\]]*\])/.exec(bench)?.[1] ?? "null") as string[];
    const module = readFileSync(join(root, "nix", "module.nix"), "utf8");
    expect(/NODE_OPTIONS = "([^"]*)";/.exec(module)?.[1]).toBe(flags.join(" "));
  });
});
