/**
 * Which homeserver the e2e run talks to, and tests that only one of them can run. A test that
 * needs a Synapse-only API (shared-secret registration, `/_synapse/admin`) is skipped on tuwunel,
 * with the reason in its name and on stderr, so a skipped count never hides why.
 */
import { e2eEnv } from "../harness/slots";

export const homeserverKind = e2eEnv().homeserver.kind;
export const onTuwunel = homeserverKind === "tuwunel";

function announceSkip(name: string, reason: string): string {
  process.stderr.write(`e2e: skipped on tuwunel: "${name}": ${reason}\n`);
  return `${name} [skipped on tuwunel: ${reason}]`;
}

/** `it`, except on tuwunel, where the test is skipped and `reason` says why. */
export function itSynapseOnly(reason: string, name: string, fn: jest.ProvidesCallback, timeout?: number): void {
  if (onTuwunel) it.skip(announceSkip(name, reason), fn, timeout);
  else it(name, fn, timeout);
}

/** `describe`, except on tuwunel, where the whole block is skipped and `reason` says why. */
export function describeSynapseOnly(reason: string, name: string, fn: () => void): void {
  if (onTuwunel) describe.skip(announceSkip(name, reason), fn);
  else describe(name, fn);
}
