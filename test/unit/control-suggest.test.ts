import { closest, editDistance } from "../../src/control/suggest";

describe("suggestions for typos", () => {
  it("measures edits, with a transposition as one", () => {
    expect(editDistance("status", "status")).toBe(0);
    expect(editDistance("stauts", "status")).toBe(1);
    expect(editDistance("sttus", "status")).toBe(1);
    expect(editDistance("", "abc")).toBe(3);
    expect(editDistance("kitten", "sitting")).toBe(3);
  });

  const names = ["help", "status", "agents", "agent", "invite", "sync", "version"];

  it.each([
    ["stauts", "status"],
    ["hepl", "help"],
    ["verison", "version"],
    ["invtie", "invite"],
    ["snyc", "sync"],
    ["agnets", "agents"],
    ["STATUS", "status"],
    ["ver", "version"],
  ])("%s → %s", (typo, meant) => {
    expect(closest(typo, names)).toBe(meant);
  });

  it.each(["florp", "x", "", "a".repeat(200), "<script>"])("no suggestion for %j", (word) => {
    expect(closest(word, names)).toBeUndefined();
  });
});
