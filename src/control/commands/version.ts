import { VERSION } from "../../version";
import { r } from "../render";
import type { LeafCommand } from "../table";

export const version: LeafCommand = {
  name: "version",
  summary: "Show the version of hive-matrix.",
  permission: "operator",
  async run() {
    return r`hive-matrix ${VERSION} (Node.js ${process.versions.node})`;
  },
};
