/**
 * A hostile tenant swapping its own dirs for symlinks while hive-matrix writes and rotates its
 * token: a worker thread renames `<root>/a/state` (or `<root>/a` itself) back and forth between
 * the real directory and symlinks to another agent's dir and to a dir outside stateRoot, as fast
 * as it can, while this thread writes and reads tokens. Whatever the interleaving, nothing may
 * appear outside agent a's own dir and agent b's token must never change.
 */
import { lstatSync, mkdirSync, readFileSync, readdirSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { readTokenFile, StateDirError, writeTokenFile } from "../../src/agents/token-file";
import { startSwapper } from "../support/swapper";
import { tempDir } from "../support/tmp";

interface Tree {
  [path: string]: string;
}

/** Every entry under `dir` (not following links): path → "dir", "link → target" or the file's content. */
function tree(dir: string, base = dir, out: Tree = {}): Tree {
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    const st = lstatSync(path);
    const key = relative(base, path);
    if (st.isSymbolicLink()) out[key] = "link";
    else if (st.isDirectory()) {
      out[key] = "dir";
      tree(path, base, out);
    } else out[key] = readFileSync(path, "utf8");
  }
  return out;
}

interface RaceResult {
  written: number;
  refused: number;
  cycles: number;
}

async function race(place: string, real: string, links: string[], root: string): Promise<RaceResult> {
  const swapper = startSwapper(place, real, links);
  let written = 0;
  let refused = 0;
  let cycles = 0;
  try {
    // Bounded by count and time: enough to hit the windows many times, never a slow test.
    const deadline = Date.now() + 3000;
    for (let i = 0; i < 20_000 && Date.now() < deadline; i++) {
      try {
        writeTokenFile(root, "a", `tok-a-${i}`);
        written++;
      } catch (err) {
        if (!(err instanceof StateDirError)) throw err;
        refused++;
      }
      const read = readTokenFile(root, "a");
      // A read through a swapped-in link would see b's token (or nothing of a's).
      if (read.kind === "token") expect(read.token).toMatch(/^tok-a-\d+$/);
    }
  } finally {
    cycles = await swapper.stop();
  }
  return { written, refused, cycles };
}

function setUp(): { root: string; outside: string; bToken: string } {
  const root = tempDir();
  const outside = tempDir();
  mkdirSync(join(root, "a", "state"), { recursive: true });
  mkdirSync(join(root, "b", "state"), { recursive: true });
  mkdirSync(join(outside, "state"));
  const bToken = "tok-b-original\n";
  writeFileSync(join(root, "b", "state", "matrix-token"), bToken, { mode: 0o600 });
  return { root, outside, bToken };
}

function expectOnlyOwnToken(stateDir: string): void {
  expect(readdirSync(stateDir)).toEqual(["matrix-token"]);
  const st = lstatSync(join(stateDir, "matrix-token"));
  expect(st.isFile() && (st.mode & 0o777) === 0o600).toBe(true);
  expect(readFileSync(join(stateDir, "matrix-token"), "utf8")).toMatch(/^tok-a-\d+\n$/);
}

describe("token writes while the tenant swaps its dirs for symlinks", () => {
  it("the state dir swapped for links to another agent's state dir and to a dir outside: nothing lands there", async () => {
    const { root, outside, bToken } = setUp();
    const a = join(root, "a");
    renameSync(join(a, "state"), join(a, "real"));
    symlinkSync(join(root, "b", "state"), join(a, "to-b"));
    symlinkSync(join(outside, "state"), join(a, "to-outside"));
    const bBefore = lstatSync(join(root, "b", "state", "matrix-token"));
    const result = await race(join(a, "state"), join(a, "real"), [join(a, "to-b"), join(a, "to-outside")], root);

    // The race really ran both ways: some writes got through, some found a link and were refused.
    expect(result.cycles).toBeGreaterThan(0);
    expect(result.written).toBeGreaterThan(0);
    expect(result.refused).toBeGreaterThan(0);
    expect(tree(outside)).toEqual({ state: "dir" });
    expect(tree(join(root, "b"))).toEqual({ state: "dir", "state/matrix-token": bToken });
    expect(lstatSync(join(root, "b", "state", "matrix-token")).ino).toBe(bBefore.ino);
    expectOnlyOwnToken(join(a, "real"));
    expect(readdirSync(a).sort()).toEqual(["real", "to-b", "to-outside"]);
  });

  it("the agent dir itself swapped for links to another agent's dir and to a dir outside: nothing lands there", async () => {
    const { root, outside, bToken } = setUp();
    const parking = tempDir();
    renameSync(join(root, "a"), join(root, "a-real"));
    symlinkSync(join(root, "b"), join(parking, "to-b"));
    symlinkSync(outside, join(parking, "to-outside"));
    // The links rest outside stateRoot so that the only names under it are a (sometimes), a-real and b.
    const result = await race(join(root, "a"), join(root, "a-real"), [join(parking, "to-b"), join(parking, "to-outside")], root);

    expect(result.cycles).toBeGreaterThan(0);
    expect(result.written).toBeGreaterThan(0);
    expect(result.refused).toBeGreaterThan(0);
    expect(tree(outside)).toEqual({ state: "dir" });
    expect(tree(join(root, "b"))).toEqual({ state: "dir", "state/matrix-token": bToken });
    expectOnlyOwnToken(join(root, "a-real", "state"));
    expect(readdirSync(root).sort()).toEqual(["a-real", "b"]);
  });
});

describe("a failed token write", () => {
  it("leaves no temp file behind and the old token whole", () => {
    const root = tempDir();
    const state = join(root, "a", "state");
    mkdirSync(state, { recursive: true });
    // rename(2) cannot replace a non-empty directory: the write fails after its temp file was written.
    mkdirSync(join(state, "matrix-token"));
    writeFileSync(join(state, "matrix-token", "keep"), "x");
    expect(() => writeTokenFile(root, "a", "tok")).toThrow();
    expect(tree(state)).toEqual({ "matrix-token": "dir", "matrix-token/keep": "x" });
  });
});
