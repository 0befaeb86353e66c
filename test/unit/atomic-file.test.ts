import { lstatSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../../src/store/atomic-file";
import { tempDir } from "../support/tmp";

describe("writeFileAtomic", () => {
  it("writes a 0600 regular file and leaves no temp file behind", () => {
    const dir = tempDir();
    writeFileAtomic(join(dir, "matrix-token"), "secret\n");
    const st = lstatSync(join(dir, "matrix-token"));
    expect(st.isFile()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(readdirSync(dir)).toEqual(["matrix-token"]);
  });

  it("replaces a planted symlink instead of writing through it", () => {
    const dir = tempDir();
    const victim = join(tempDir(), "victim");
    writeFileSync(victim, "original");
    symlinkSync(victim, join(dir, "matrix-token"));
    writeFileAtomic(join(dir, "matrix-token"), "new");
    expect(readFileSync(victim, "utf8")).toBe("original");
    expect(lstatSync(join(dir, "matrix-token")).isSymbolicLink()).toBe(false);
    expect(readFileSync(join(dir, "matrix-token"), "utf8")).toBe("new");
  });
});
