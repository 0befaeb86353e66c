import { chmodSync, linkSync, lstatSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { AGENT_STATES, AgentRecords } from "../../src/agents/records";
import { checkStateDir, readTokenFile, StateDirError, tokenFileStatus, writeTokenFile } from "../../src/agents/token-file";
import { StateError, StateStore } from "../../src/store/state-store";
import { tempDir } from "../support/tmp";

/** `<root>/<name>/state`, created; returns the state dir. */
function stateDirOf(root: string, name: string): string {
  const dir = join(root, name, "state");
  mkdirSync(dir, { recursive: true });
  return dir;
}

describe("token file", () => {
  it("reads a token, tightening a loose mode through the open descriptor", () => {
    const root = tempDir();
    const dir = stateDirOf(root, "a");
    writeFileSync(join(dir, "matrix-token"), "syt_abc\n", { mode: 0o644 });
    chmodSync(join(dir, "matrix-token"), 0o644);
    expect(readTokenFile(root, "a")).toEqual({ kind: "token", token: "syt_abc" });
    expect(statSync(join(dir, "matrix-token")).mode & 0o777).toBe(0o600);
  });

  it("refuses symlinks, hardlinks, directories and garbage without touching their targets", () => {
    const root = tempDir();
    const victim = join(root, "victim");
    writeFileSync(victim, "secret\n", { mode: 0o644 });
    chmodSync(victim, 0o644);
    symlinkSync(victim, join(stateDirOf(root, "agent"), "matrix-token"));
    expect(readTokenFile(root, "agent")).toEqual({ kind: "unsafe", reason: "is a symlink" });
    linkSync(victim, join(stateDirOf(root, "hard"), "matrix-token"));
    expect(readTokenFile(root, "hard")).toEqual({ kind: "unsafe", reason: "has other hard links" });
    expect(statSync(victim).mode & 0o777).toBe(0o644);
    mkdirSync(join(stateDirOf(root, "asdir"), "matrix-token"));
    expect(readTokenFile(root, "asdir")).toMatchObject({ kind: "unsafe" });
    writeFileSync(join(stateDirOf(root, "garbage"), "matrix-token"), "two tokens\n");
    expect(readTokenFile(root, "garbage")).toMatchObject({ kind: "unsafe", reason: "does not hold exactly one token" });
    stateDirOf(root, "none");
    expect(readTokenFile(root, "none")).toEqual({ kind: "missing" });
    expect(readTokenFile(root, "nodir")).toEqual({ kind: "missing" });
  });

  it("writes over a planted symlink and a hardlink without changing the other file", () => {
    const root = tempDir();
    const victim = join(root, "victim");
    writeFileSync(victim, "secret\n");
    const a = stateDirOf(root, "a");
    symlinkSync(victim, join(a, "matrix-token"));
    writeTokenFile(root, "a", "tok1");
    const b = stateDirOf(root, "b");
    linkSync(victim, join(b, "matrix-token"));
    writeTokenFile(root, "b", "tok2");
    expect(readFileSync(victim, "utf8")).toBe("secret\n");
    for (const [d, t] of [
      [a, "tok1"],
      [b, "tok2"],
    ]) {
      const st = lstatSync(join(d, "matrix-token"));
      expect(st.isFile() && st.nlink === 1 && (st.mode & 0o777) === 0o600).toBe(true);
      expect(readFileSync(join(d, "matrix-token"), "utf8")).toBe(`${t}\n`);
      expect(readdirSync(d)).toEqual(["matrix-token"]);
    }
  });

  it("refuses a state dir (or agent dir) that is a symlink, reading and writing nothing through it", () => {
    const root = tempDir();
    const elsewhere = tempDir();
    writeFileSync(join(elsewhere, "matrix-token"), "theirs\n");
    stateDirOf(root, "ok");
    mkdirSync(join(root, "linked"));
    symlinkSync(elsewhere, join(root, "linked", "state"));
    symlinkSync(join(root, "ok"), join(root, "whole"));
    writeFileSync(join(root, "file"), "");
    expect(checkStateDir(root, "ok")).toEqual({ ok: true });
    expect(checkStateDir(root, "linked")).toMatchObject({ ok: false, missing: false, reason: expect.stringMatching(/symlink/) });
    expect(checkStateDir(root, "whole")).toMatchObject({ ok: false, missing: false, reason: expect.stringMatching(/symlink/) });
    expect(checkStateDir(root, "file")).toMatchObject({ ok: false, missing: false, reason: expect.stringMatching(/not a directory/) });
    expect(checkStateDir(root, "gone")).toMatchObject({ ok: false, missing: true });
    for (const name of ["..", ".", "a/b", ""]) expect(checkStateDir(root, name)).toMatchObject({ ok: false, missing: false });
    expect(readTokenFile(root, "linked")).toMatchObject({ kind: "unsafe", reason: expect.stringMatching(/symlink/) });
    expect(() => writeTokenFile(root, "linked", "tok")).toThrow(StateDirError);
    expect(() => writeTokenFile(root, "whole", "tok")).toThrow(StateDirError);
    expect(readdirSync(elsewhere)).toEqual(["matrix-token"]);
    expect(readFileSync(join(elsewhere, "matrix-token"), "utf8")).toBe("theirs\n");
    expect(readdirSync(join(root, "ok", "state"))).toEqual([]);
  });
});

describe("token file, as an unprivileged service user", () => {
  // The NixOS module runs hive-matrix as its own user; `nobody` stands in for it here.
  const missing = ["setpriv"].filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
  const why = process.getuid?.() !== 0 ? "not root" : missing.length > 0 ? `${missing.join(", ")} missing` : undefined;
  if (why) console.log(`token file as an unprivileged user: skipped (${why})`);
  const asNobody = (code: string): unknown => {
    const out = execFileSync(
      "setpriv",
      ["--reuid=nobody", "--regid=nogroup", "--clear-groups", process.execPath, "-r", "ts-node/register/transpile-only", "-e", code],
      { cwd: join(__dirname, "..", ".."), encoding: "utf8" },
    );
    return JSON.parse(out);
  };
  const tokenFile = JSON.stringify(join(__dirname, "..", "..", "src", "agents", "token-file"));

  (why ? it.skip : it)("a state dir it may not write yet is a denial to wait for, then usable once granted", () => {
    const root = tempDir();
    chmodSync(root, 0o755);
    mkdirSync(join(root, "a", "state"), { recursive: true, mode: 0o700 });
    chmodSync(join(root, "a"), 0o700);
    const check = `console.log(JSON.stringify(require(${tokenFile}).checkStateDir(${JSON.stringify(root)}, "a")))`;
    expect(asNobody(check)).toMatchObject({ ok: false, missing: false, denied: true });
    chmodSync(join(root, "a"), 0o755);
    chmodSync(join(root, "a", "state"), 0o755);
    expect(asNobody(check)).toMatchObject({ ok: false, missing: false, denied: true, reason: expect.stringMatching(/not writable/) });
    chmodSync(join(root, "a", "state"), 0o777);
    expect(asNobody(check)).toEqual({ ok: true });
  });

  (why ? it.skip : it)("a token file it cannot make 0600 (another owner) is not trusted", () => {
    const root = tempDir();
    chmodSync(root, 0o755);
    mkdirSync(join(root, "a", "state"), { recursive: true });
    chmodSync(join(root, "a", "state"), 0o777);
    writeFileSync(join(root, "a", "state", "matrix-token"), "root-owned-token\n", { mode: 0o644 });
    chmodSync(join(root, "a", "state", "matrix-token"), 0o644);
    const read = asNobody(`console.log(JSON.stringify(require(${tokenFile}).readTokenFile(${JSON.stringify(root)}, "a")))`);
    expect(read).toMatchObject({ kind: "unsafe", reason: expect.stringMatching(/mode 644 and cannot be made 0600/) });
    expect(statSync(join(root, "a", "state", "matrix-token")).mode & 0o777).toBe(0o644);
  });
});

describe("token file status (for !hive agent info)", () => {
  it("looks through the anchored dir: a symlinked dir or token is not reported as a token", () => {
    const root = tempDir();
    const elsewhere = tempDir();
    writeFileSync(join(elsewhere, "matrix-token"), "theirs\n");
    writeFileSync(join(stateDirOf(root, "ok"), "matrix-token"), "tok\n");
    stateDirOf(root, "empty");
    mkdirSync(join(root, "linked"));
    symlinkSync(elsewhere, join(root, "linked", "state"));
    symlinkSync(join(elsewhere, "matrix-token"), join(stateDirOf(root, "linktoken"), "matrix-token"));
    expect(["ok", "empty", "linked", "linktoken", "absent"].map((n) => tokenFileStatus(root, n))).toEqual([
      "ok",
      "missing",
      "none",
      "missing",
      "none",
    ]);
  });
});

/** A new state dir's store. */
function freshStore(): { dir: string; store: StateStore } {
  const dir = tempDir();
  const store = new StateStore(dir);
  store.init();
  return { dir, store };
}

/** The records in `store`, loaded; with `strict`, a failure to save them fails the test. */
function loadRecords(store: StateStore, strict = false): AgentRecords {
  const records = new AgentRecords(
    store,
    strict
      ? (err) => {
          throw err;
        }
      : () => undefined,
  );
  records.load();
  return records;
}

describe("agent records", () => {
  it("persist across instances and count by state", () => {
    const { store } = freshStore();
    const records = loadRecords(store, true);
    records.set("alpha", { userId: "@agent-alpha:h", state: "token_written" }, { durable: true });
    records.set("beta", { userId: "@agent-beta:h", state: "failed", reason: "boom" });
    records.flush();
    const again = loadRecords(store);
    expect(again.get("alpha")).toMatchObject({ state: "token_written", source: "discovered" });
    expect(again.get("beta")).toMatchObject({ state: "failed", reason: "boom" });
    expect(again.countsByState()).toMatchObject({ token_written: 1, failed: 1, joined: 0 });
  });

  it("keep their counts by state in step through changes, a journal replay and a reload", () => {
    const { store } = freshStore();
    const records = loadRecords(store, true);
    const recount = (r: AgentRecords): Record<string, number> => {
      const counts: Record<string, number> = Object.fromEntries(AGENT_STATES.map((s) => [s, 0]));
      for (const [, record] of r.entries()) counts[record.state]++;
      return counts;
    };
    for (let i = 0; i < 20; i++) records.set(`a${i}`, { userId: `@agent-a${i}:h`, state: "pending" });
    for (let i = 0; i < 20; i += 2) records.set(`a${i}`, { userId: `@agent-a${i}:h`, state: "token_written" });
    for (let i = 0; i < 20; i += 4) records.set(`a${i}`, { userId: `@agent-a${i}:h`, state: "joined" });
    records.set("a1", { userId: "@agent-a1:h", state: "failed", reason: "boom" });
    records.flush();
    // After the flush: in the journal only, replayed on load.
    records.set("a3", { userId: "@agent-a3:h", state: "removed" }, { durable: true });
    expect(records.countsByState()).toEqual(recount(records));
    expect(records.countsByState()).toMatchObject({ pending: 8, token_written: 5, joined: 5, failed: 1, removed: 1 });
    const again = loadRecords(store);
    expect(again.countsByState()).toEqual(recount(again));
    expect(again.countsByState()).toEqual(records.countsByState());
  });

  it("an update that changes nothing writes nothing; the file holds one agent per line", () => {
    const { dir, store } = freshStore();
    const records = loadRecords(store, true);
    records.set("alpha", { userId: "@agent-alpha:h", state: "joined", leaving: false }, { durable: true });
    records.set("beta", { userId: "@agent-beta:h", state: "token_written" }, { durable: true });
    records.flush();
    const file = join(dir, "agents.json");
    const before = statSync(file, { bigint: true });
    // A restart re-derives every agent as it was: the same fields again.
    records.set("alpha", { userId: "@agent-alpha:h", state: "joined", leaving: false }, { durable: true });
    records.set("beta", { userId: "@agent-beta:h", state: "token_written" });
    records.flush();
    const after = statSync(file, { bigint: true });
    expect([after.ino, after.mtimeNs]).toEqual([before.ino, before.mtimeNs]);
    // A durable update is one journal line, not a rewrite of every agent; loading replays it.
    records.set("beta", { userId: "@agent-beta:h", state: "joined" }, { durable: true });
    // Any field counts, also one added later: only updatedAt alone is no change.
    records.set("alpha", { userId: "@agent-alpha:h", registering: true }, { durable: true });
    expect(statSync(file, { bigint: true }).ino).toBe(before.ino);
    expect(readFileSync(join(dir, "agents.journal"), "utf8").trim().split("\n")).toHaveLength(2);
    const reread = loadRecords(store);
    expect(reread.get("alpha")?.registering).toBe(true);
    expect(reread.get("beta")?.state).toBe("joined");
    // The next rewrite covers the journal and empties it.
    records.flush();
    expect(statSync(file, { bigint: true }).ino).not.toBe(before.ino);
    expect(readFileSync(join(dir, "agents.journal"), "utf8")).toBe("");
    records.close();
    const text = readFileSync(file, "utf8");
    expect(text.split("\n").filter((line) => line.includes('"userId"'))).toHaveLength(2);
    expect(JSON.parse(text)).toMatchObject({ version: 1, agents: { alpha: { state: "joined" }, beta: { state: "joined" } } });
  });

  it("the journal: lines the file covers are skipped, a torn last line is dropped, a corrupted one is an error", () => {
    const { dir, store } = freshStore();
    const records = loadRecords(store, true);
    records.set("a", { userId: "@a:h", state: "pending", registering: true }, { durable: true });
    records.flush();
    // A crash after the file was rewritten but before the journal was emptied leaves an old line.
    const journal = join(dir, "agents.journal");
    const old = JSON.stringify({ seq: 1, name: "a", record: { ...records.get("a"), registering: true } });
    records.set("a", { userId: "@a:h", state: "registered", registering: false }, { durable: true });
    records.flush();
    records.close();
    writeFileSync(journal, `${old}\n{"seq":9,"name":"a","rec`);
    const again = loadRecords(store);
    expect(again.get("a")).toMatchObject({ state: "registered", registering: false });
    writeFileSync(journal, `{ garbage\n${old}\n`);
    expect(() => new AgentRecords(store, () => undefined).load()).toThrow(/agents\.journal: line 1 is corrupted/);
  });

  it("after a torn last journal line, the next durable update still loads: the fragment is gone first", () => {
    const { dir, store } = freshStore();
    const journal = join(dir, "agents.journal");
    const complete = JSON.stringify({
      seq: 1,
      name: "a",
      record: { userId: "@a:h", state: "pending", source: "discovered", createdAt: 1, updatedAt: 1 },
    });
    // Cut off mid-line, and cut off just before its newline (it parses, but its write never finished).
    for (const torn of [
      '{"seq":2,"name":"b","rec',
      JSON.stringify({ seq: 2, name: "b", record: { userId: "@b:h", state: "pending", source: "discovered", createdAt: 1, updatedAt: 1 } }),
    ]) {
      writeFileSync(journal, `${complete}\n${torn}`);
      const records = loadRecords(store);
      expect(records.get("a")).toMatchObject({ state: "pending" });
      expect(records.get("b")).toBeUndefined();
      records.set("c", { userId: "@c:h", state: "pending", registering: true }, { durable: true });
      records.close();
      const again = loadRecords(store);
      expect(again.get("c")).toMatchObject({ registering: true });
      expect(readFileSync(journal, "utf8").split("\n").filter(Boolean)).toHaveLength(2);
    }
  });

  it("a corrupted agents.json is an error naming the file, not a reset", () => {
    const { dir, store } = freshStore();
    writeFileSync(join(dir, "agents.json"), "{ not json");
    const records = new AgentRecords(store, () => undefined);
    expect(() => records.load()).toThrow(StateError);
    expect(() => records.load()).toThrow(/agents\.json: is corrupted/);
    expect(readFileSync(join(dir, "agents.json"), "utf8")).toBe("{ not json");
  });
});

describe("agent records before loading", () => {
  it("never overwrite the file with an empty set (a service stopped before it started)", () => {
    const dir = tempDir();
    const store = new StateStore(dir);
    store.init();
    store.writeJson("agents.json", {
      version: 1,
      agents: { a: { userId: "@a:h", state: "joined", source: "discovered", createdAt: 1, updatedAt: 1 } },
    });
    new AgentRecords(store, () => undefined).flush();
    expect(readFileSync(join(dir, "agents.json"), "utf8")).toContain('"@a:h"');
  });
});

describe("state dir lock", () => {
  it("refuses a second instance and is taken over from a dead process", () => {
    const dir = tempDir();
    const first = new StateStore(dir);
    first.init();
    first.lock();
    const second = new StateStore(dir);
    expect(() => second.lock()).toThrow(/in use by another hive-matrix/);
    first.unlock();
    second.lock();
    second.unlock();
    writeFileSync(join(dir, "lock"), "999999999\n");
    const third = new StateStore(dir);
    third.lock();
    expect(readFileSync(join(dir, "lock"), "utf8").trim()).toBe(String(process.pid));
    third.unlock();
  });
});
