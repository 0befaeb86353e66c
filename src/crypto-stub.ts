/**
 * Points matrix-bot-sdk's native crypto binding at the stub shipped in `stubs/`, whatever npm
 * installed under that name.
 *
 * Inside this repository npm `overrides` already installs the stub. A project that installs the
 * packed `hive-matrix` tarball does not inherit those overrides, so npm installs the real
 * `@matrix-org/matrix-sdk-crypto-nodejs`, whose binary comes from a postinstall download (skipped
 * or impossible offline); matrix-bot-sdk requires it on load and the service would not start.
 * hive-matrix keeps encryption off, so the stub (every export throws on use) is always right.
 * Imported first by the CLI, before anything loads matrix-bot-sdk.
 */
import Module from "node:module";
import { join } from "node:path";

const CRYPTO_MODULE = "@matrix-org/matrix-sdk-crypto-nodejs";
export const CRYPTO_STUB = join(__dirname, "..", "stubs", "matrix-sdk-crypto-nodejs", "index.js");

type Resolve = (request: string, ...rest: unknown[]) => string;
const loader = Module as unknown as { _resolveFilename: Resolve };
const resolve = loader._resolveFilename;
loader._resolveFilename = function (this: unknown, request: string, ...rest: unknown[]): string {
  return request === CRYPTO_MODULE ? CRYPTO_STUB : resolve.call(this, request, ...rest);
};
