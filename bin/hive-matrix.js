#!/usr/bin/env node
"use strict";
// Thin launcher: the compiled CLI when built, otherwise the TypeScript source through ts-node.
const path = require("path");
const fs = require("fs");
const compiled = path.join(__dirname, "..", "dist", "cli.js");
if (fs.existsSync(compiled)) {
  require(compiled).main(process.argv.slice(2));
} else {
  require("ts-node").register({ transpileOnly: true, project: path.join(__dirname, "..", "tsconfig.json") });
  require(path.join(__dirname, "..", "src", "cli.ts")).main(process.argv.slice(2));
}
