import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SeenCommands } from "../../src/control/seen";
import { StateStore } from "../../src/store/state-store";
import { tempDir } from "../support/tmp";

describe("handled commands across a crash", () => {
  it("a command admitted but never finished is reported as interrupted after a restart, once", () => {
    const store = new StateStore(tempDir());
    store.init();
    const before = new SeenCommands(store);
    before.load();
    before.add("$done", { roomId: "!r:h", eventId: "$done", sender: "@op:h" });
    before.finish("$done");
    before.add("$cut", { roomId: "!r:h", eventId: "$cut", sender: "@op:h" });
    before.setProgress("$cut", "$progress");
    // The process dies here.
    const after = new SeenCommands(store);
    after.load();
    expect(after.has("$done") && after.has("$cut")).toBe(true);
    expect(after.interrupted()).toEqual([{ roomId: "!r:h", eventId: "$cut", sender: "@op:h", progressEventId: "$progress" }]);
    after.finish("$cut");
    const again = new SeenCommands(store);
    again.load();
    expect(again.interrupted()).toEqual([]);
    expect(again.has("$cut")).toBe(true);
  });
});

describe("a corrupted commands-seen.json", () => {
  it("is an error naming the file, and the file is left as it was", () => {
    const dir = tempDir();
    const store = new StateStore(dir);
    store.init();
    writeFileSync(join(dir, "commands-seen.json"), '{"version": 1, "eventIds": "oops"}');
    expect(() => new SeenCommands(store).load()).toThrow(/commands-seen\.json: is corrupted/);
    expect(readFileSync(join(dir, "commands-seen.json"), "utf8")).toBe('{"version": 1, "eventIds": "oops"}');
  });
});
