/**
 * Running Nix evaluations from tests: Debian's `nix-bin` (nix-instantiate) is enough, and nixpkgs'
 * `lib` is used when one is around (NIXPKGS_LIB, or `nixpkgs` on NIX_PATH).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

export const repo = join(__dirname, "..", "..");
export const nixDir = join(repo, "nix");

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** Why Nix cannot run here, or undefined when it can. Every Nix test fails with this message. */
export function nixProblem(): string | undefined {
  const probe = spawnSync("nix-instantiate", ["--version"], { encoding: "utf8" });
  if (!probe.error && probe.status === 0) return undefined;
  const why = probe.error ? probe.error.message : `exited with ${String(probe.status)}: ${probe.stderr}`;
  return process.env.CI
    ? `nix-instantiate is not available in CI (${why}). The CI image must install Debian's nix-bin: apt-get install -y --no-install-recommends nix-bin`
    : `nix-instantiate is not available (${why}). Install it to run these tests, e.g. Debian's nix-bin: sudo apt-get install -y nix-bin`;
}

// `--store dummy://`: evaluation needs no store, no daemon and no /nix, as root or not.
const NIX_FLAGS = ["--store", "dummy://"];

export function nix(args: string[]): string {
  return execFileSync("nix-instantiate", [...NIX_FLAGS, ...args], { cwd: repo, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** Evaluates `expr` (a function of the given string arguments) to JSON text. */
export function evalRaw(expr: string, args: Record<string, string>): string {
  const argv = ["--eval", "--strict", "--json"];
  for (const [name, value] of Object.entries(args)) argv.push("--argstr", name, value);
  return nix([...argv, "-E", expr]).trim();
}

export function evalJson(expr: string, args: Record<string, string>): Json {
  return JSON.parse(evalRaw(expr, args)) as Json;
}

/** Like evalJson, for an evaluation that must fail: Nix's error message. */
export function evalError(expr: string, args: Record<string, string>): string {
  const argv = [...NIX_FLAGS, "--eval", "--strict", "--json"];
  for (const [name, value] of Object.entries(args)) argv.push("--argstr", name, value);
  const run = spawnSync("nix-instantiate", [...argv, "-E", expr], { cwd: repo, encoding: "utf8" });
  if (run.status === 0) throw new Error(`the evaluation succeeded, with ${run.stdout.slice(0, 400)}`);
  return run.stderr;
}

export interface NixpkgsLib {
  /** The lib/ directory (holds default.nix and modules.nix). */
  path: string;
  /** Where it was found. */
  from: "NIXPKGS_LIB" | "NIX_PATH";
  /** lib.version, e.g. "26.11pre-git". */
  version: string;
}

function isLibDir(dir: string): boolean {
  return existsSync(join(dir, "default.nix")) && existsSync(join(dir, "modules.nix")) && existsSync(join(dir, "types.nix"));
}

/**
 * nixpkgs' lib: NIXPKGS_LIB (nixpkgs' lib/ directory, or a checkout of nixpkgs or of
 * nix-community/nixpkgs.lib that contains it), else `nixpkgs` on NIX_PATH, else undefined.
 * A NIXPKGS_LIB that points at neither is an error, not a silent fallback.
 */
export function findNixpkgsLib(): NixpkgsLib | undefined {
  let path: string | undefined;
  let from: NixpkgsLib["from"] = "NIXPKGS_LIB";
  const env = process.env.NIXPKGS_LIB;
  if (env) {
    path = [env, join(env, "lib")].map((p) => resolve(p)).find(isLibDir);
    if (!path) throw new Error(`NIXPKGS_LIB=${env} is neither nixpkgs' lib/ directory nor a checkout that contains one`);
  } else {
    const found = spawnSync("nix-instantiate", ["--find-file", "nixpkgs"], { encoding: "utf8" });
    const root = found.status === 0 ? found.stdout.trim() : "";
    if (root && isLibDir(join(root, "lib"))) {
      path = join(root, "lib");
      from = "NIX_PATH";
    }
  }
  if (!path) return undefined;
  const version = evalJson("{ lib }: (import lib).version", { lib: path }) as string;
  return { path, from, version };
}
