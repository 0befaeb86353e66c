/** The package version, read once from package.json (repo root from both src/ and dist/). */
import { readFileSync } from "node:fs";
import { join } from "node:path";

export const VERSION: string = (JSON.parse(readFileSync(join(__dirname, "..", "package.json"), "utf8")) as { version: string }).version;
