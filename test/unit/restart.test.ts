import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { FORK_SERVER_NAME, quoteForForkServer } from "../../src/agents/fork-server";
import { Restarter, restartArgv, runRestart, type RestartResult } from "../../src/agents/restart";
import { tempDir } from "../support/tmp";

/** Writes its arguments (after the output file) as JSON: what the restart command received, exactly. */
const RECORD_ARGV = [process.execPath, "-e", "require('fs').writeFileSync(process.argv[1], JSON.stringify(process.argv.slice(2)))"];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie still answers kill(0) until its parent reaps it.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Waits (up to 10 s) until `pid` is gone; the assertions say whether it went. */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 200 && existsSync(`/proc/${pid}`) && alive(pid); i++) await new Promise((r) => setTimeout(r, 50));
  return !existsSync(`/proc/${pid}`) || !alive(pid);
}

function readPid(file: string): number {
  return Number(readFileSync(file, "utf8").trim());
}

async function waitForFile(file: string): Promise<void> {
  for (let i = 0; i < 200 && !existsSync(file); i++) await new Promise((r) => setTimeout(r, 50));
  expect(existsSync(file)).toBe(true);
}

describe("restart command", () => {
  it("replaces {name} in every argument, no shell", () => {
    expect(restartArgv(["systemctl", "restart", "hive-matrix-daemon@{name}"], "alpha")).toEqual([
      "systemctl",
      "restart",
      "hive-matrix-daemon@alpha",
    ]);
  });

  // The same outcomes, spawned from this process and through the fork server.
  const ways: [
    string,
    () => { run: (template: string[], name: string, timeoutMs: number) => Promise<RestartResult>; close: () => Promise<void> },
  ][] = [
    ["spawned directly", () => ({ run: runRestart, close: async () => undefined })],
    ["through the fork server", () => new Restarter()],
  ];
  // NixOS's /bin/sh is bash (in POSIX mode, as it runs when called `sh`).
  if (existsSync("/bin/bash")) {
    const bashAsSh = join(tempDir(), "sh");
    symlinkSync("/bin/bash", bashAsSh);
    ways.push(["through the fork server, bash as sh", () => new Restarter(bashAsSh)]);
  }

  describe.each(ways)("%s", (_, make) => {
    let restarter: ReturnType<(typeof ways)[number][1]>;
    beforeEach(() => {
      restarter = make();
    });
    afterEach(() => restarter.close());

    it("reports success, a failing status with stderr, a missing command, a signal and a timeout", async () => {
      expect(await restarter.run(["true"], "a", 5000)).toMatchObject({ ok: true });
      expect(await restarter.run(["sh", "-c", "echo broken >&2; exit 3", "{name}"], "a", 5000)).toEqual({
        ok: false,
        problem: "`sh` exited with status 3: broken",
        durationMs: expect.any(Number),
      });
      // Only the tail of a long stderr is kept.
      const long = await restarter.run(["sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"], "a", 5000);
      expect(long.problem).toMatch(/^`sh` exited with status 1: .*line199$/s);
      expect(long.problem!.length).toBeLessThan(460);
      expect(await restarter.run(["/no/such/cmd"], "a", 5000)).toMatchObject({ ok: false, problem: "`/no/such/cmd` was not found" });
      expect(await restarter.run(["no-such-command-{name}"], "x", 5000)).toMatchObject({
        ok: false,
        problem: "`no-such-command-x` was not found",
      });
      expect(await restarter.run(["sh", "-c", "kill -TERM $$"], "a", 5000)).toMatchObject({
        ok: false,
        problem: "`sh` was killed by SIGTERM",
      });
      // A command that looks like an option (spawned, not exec'd by a shell that would parse it).
      expect(await restarter.run(["-no-such-command"], "a", 5000)).toMatchObject({
        ok: false,
        problem: "`-no-such-command` was not found",
      });
      // A command that itself exits 127 is not taken for a missing one.
      expect(await restarter.run(["sh", "-c", "exit 127"], "a", 5000)).toMatchObject({ ok: false, problem: "`sh` exited with status 127" });
    });

    it("kills a command that runs too long", async () => {
      const dir = tempDir();
      const pidFile = join(dir, "pid");
      const result = await restarter.run(["sh", "-c", 'echo $$ > "$0"; exec sleep 30', pidFile], "a", 500);
      expect(result).toMatchObject({ ok: false, problem: "`sh` did not finish within 1 s and was killed" });
      expect(await gone(readPid(pidFile))).toBe(true);
    });

    it("passes hostile names and arguments as exact argv, never as code", async () => {
      const dir = tempDir();
      const out = join(dir, "argv.json");
      const pwned = join(dir, "pwned");
      const names = [
        "$(touch " + pwned + ")",
        "`touch " + pwned + "`",
        "a;touch " + pwned,
        "it's",
        "'\\''",
        "two\nlines\n",
        "\n",
        "tab\tcr\r",
        " spaces  ",
        "{name}",
        '"$nl"',
        "'\"$nl\"'",
        "back\\slash\\",
        "-x",
        "ünïcødé ✓",
        "",
      ];
      for (const name of names) {
        const template = [...RECORD_ARGV, out, "{name}", "pre-{name}-post", "'{name}'", "$HOME", "*", "", "x'\n'y"];
        const result = await restarter.run(template, name, 20_000);
        expect(result).toMatchObject({ ok: true });
        expect(JSON.parse(readFileSync(out, "utf8"))).toEqual(restartArgv(template, name).slice(RECORD_ARGV.length + 1));
      }
      expect(existsSync(pwned)).toBe(false);
    });

    it("refuses a NUL byte in an argument and runs nothing", async () => {
      const dir = tempDir();
      const result = await restarter.run(["sh", "-c", 'touch "$0"', join(dir, "ran"), "a\0b"], "a", 5000);
      expect(result.ok).toBe(false);
      expect(result.problem).toMatch(/^`sh` could not be started/);
      expect(readdirSync(dir)).toEqual([]);
    });

    it("runs restarts in parallel", async () => {
      // Each command waits until all four have started: run one after another, the first would time out.
      const dir = tempDir();
      const barrier = [
        "sh",
        "-c",
        'touch "$0/$1"; i=0; until [ "$(ls "$0" | wc -l)" -ge 4 ]; do sleep 0.05; i=$((i+1)); [ $i -lt 200 ] || exit 9; done',
        dir,
        "{name}",
      ];
      const results = await Promise.all(["a", "b", "c", "d"].map((name) => restarter.run(barrier, name, 30_000)));
      expect(results.map((r) => r.problem)).toEqual([undefined, undefined, undefined, undefined]);
    });
  });

  it("quotes for the fork server so that sh reads back the same words", () => {
    const args = ["it's", "a\nb", "$(id)", "`id`", "\\", "'", '"$nl"', ""];
    // As the fork server reads it: the line in a variable, parsed by eval.
    const line = args.map(quoteForForkServer).join(" ");
    expect(line).not.toContain("\n");
    const script = `nl='\n'\neval "set -- $1"\nprintf '%s\\0' "$@"`;
    expect(spawnSync("/bin/sh", ["-c", script, "sh", line], { encoding: "utf8" }).stdout.split("\0").slice(0, -1)).toEqual(args);
    expect(() => quoteForForkServer("a\0b")).toThrow(/NUL/);
  });

  describe("fork server", () => {
    it("is one long-lived shell, ended by close(); restarts after close() are spawned directly", async () => {
      const restarter = new Restarter();
      expect(restarter.forkServerPid).toBeUndefined();
      await restarter.run(["true"], "a", 5000);
      const pid = restarter.forkServerPid!;
      expect(readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")).toContain(FORK_SERVER_NAME);
      await restarter.run(["true"], "b", 5000);
      expect(restarter.forkServerPid).toBe(pid);
      const dir = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[4];
      expect(existsSync(dir)).toBe(true);
      await restarter.close();
      expect(await gone(pid)).toBe(true);
      expect(existsSync(dir)).toBe(false);
      expect(await restarter.run(["true"], "c", 5000)).toMatchObject({ ok: true });
      expect(restarter.forkServerPid).toBeUndefined();
    });

    it("fails what was pending when it dies, and the next restart starts a new one", async () => {
      const restarter = new Restarter();
      try {
        const dir = tempDir();
        const pidFile = join(dir, "pid");
        const pending = restarter.run(["sh", "-c", 'echo $$ > "$0"; exec sleep 30', pidFile], "a", 60_000);
        await waitForFile(pidFile);
        const first = restarter.forkServerPid!;
        process.kill(first, "SIGKILL");
        expect(await pending).toMatchObject({ ok: false, problem: "`sh` gave no result: the fork server (/bin/sh) was killed by SIGKILL" });
        // Its command is ended with it.
        expect(await gone(readPid(pidFile))).toBe(true);
        expect(await restarter.run(["true"], "b", 5000)).toMatchObject({ ok: true });
        expect(restarter.forkServerPid).not.toBe(first);
      } finally {
        await restarter.close();
      }
    });

    it("spawns directly where there is no shell", async () => {
      const restarter = new Restarter("/no/such/sh");
      expect(await restarter.run(["sh", "-c", "exit 4"], "a", 5000)).toMatchObject({ ok: false, problem: "`sh` exited with status 4" });
      expect(restarter.forkServerPid).toBeUndefined();
      await restarter.close();
    });

    it("does not outlive a crashed service: at EOF it ends its commands and exits", async () => {
      const dir = tempDir();
      const pidFile = join(dir, "pid");
      // A process that starts a restart and is then killed by SIGKILL, leaving no chance to clean up.
      const code =
        `const { Restarter } = require(${JSON.stringify(join(__dirname, "../../src/agents/restart"))});` +
        `const r = new Restarter(); void r.run(["sh", "-c", 'echo $$ > "$0"; exec sleep 30', ${JSON.stringify(pidFile)}], "a", 60000);` +
        "setTimeout(() => console.log(r.forkServerPid), 200); setInterval(() => undefined, 1000);";
      const service = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", "-e", code], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      const serverPid = await new Promise<number>((resolve) =>
        service.stdout.once("data", (d: Buffer) => resolve(Number(String(d).trim()))),
      );
      await waitForFile(pidFile);
      const commandPid = readPid(pidFile);
      const scratch = readFileSync(`/proc/${serverPid}/cmdline`, "utf8").split("\0")[4];
      service.kill("SIGKILL");
      expect(await gone(serverPid)).toBe(true);
      expect(await gone(commandPid)).toBe(true);
      expect(existsSync(scratch)).toBe(false);
    });
  });
});
