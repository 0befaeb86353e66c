/**
 * Child processes (the service under test, the baseline appservice) run as plain JavaScript: a
 * TypeScript require hook would keep the compiler in the child's memory and distort what the
 * memory scenario measures. This transpiles an entry file and every relative import it reaches
 * (isolated-module transpilation, no type check: `npx tsc --noEmit` does that) into a build dir
 * that mirrors the repository, so `node_modules` and `package.json` resolve as they do from src/.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import ts from "typescript";
import { REPO_ROOT } from "../../dev/synapse";

function resolveLocal(fromFile: string, specifier: string): string | undefined {
  const base = resolve(dirname(fromFile), specifier);
  for (const candidate of [`${base}.ts`, join(base, "index.ts"), base]) {
    if (candidate.endsWith(".ts") && existsSync(candidate)) return candidate;
  }
  return undefined;
}

function compilerOptions(): ts.CompilerOptions {
  return {
    module: ts.ModuleKind.CommonJS,
    target: ts.ScriptTarget.ES2022,
    esModuleInterop: true,
    isolatedModules: true,
    sourceMap: false,
  };
}

/** Transpiles the closure of `entries` (repo-relative .ts paths) into `outRoot`; returns the .js path of each entry. */
export function buildChildren(entries: string[], outRoot: string): string[] {
  const seen = new Set<string>();
  const queue = entries.map((e) => resolve(REPO_ROOT, e));
  const options = compilerOptions();
  while (queue.length > 0) {
    const file = queue.pop();
    if (file === undefined || seen.has(file)) continue;
    seen.add(file);
    const source = readFileSync(file, "utf8");
    for (const imported of ts.preProcessFile(source, true, true).importedFiles) {
      if (!imported.fileName.startsWith(".")) continue;
      const target = resolveLocal(file, imported.fileName);
      if (target) queue.push(target);
    }
    const out = join(outRoot, relative(REPO_ROOT, file)).replace(/\.ts$/, ".js");
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, ts.transpileModule(source, { compilerOptions: options, fileName: file }).outputText);
  }
  // src/version.ts reads ../package.json relative to itself.
  copyFileSync(join(REPO_ROOT, "package.json"), join(outRoot, "package.json"));
  return entries.map((e) => join(outRoot, e.replace(/\.ts$/, ".js")));
}
