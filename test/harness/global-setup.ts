/**
 * Jest global setup of the e2e project: one homeserver for the whole run (tuwunel when TUWUNEL_BIN
 * names a binary, Synapse otherwise), with every slot's registration loaded (see slots.ts). Tests
 * find it through `e2eEnv()`.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { CURRENT_RUN_FILE, RUNS_ROOT, RUN_DIR_ENV, SLOT_KINDS, buildSlots, saveSlot, stopOrphanedHomeservers } from "./slots";
import { DEFAULT_SERVER_NAME } from "../../dev/synapse";
import { accessOf, registerUser, selectedHomeserver, startHomeserver } from "../../dev/homeserver";
import { freePort } from "../../dev/server-process";

export default async function globalSetup(): Promise<void> {
  const t0 = Date.now();
  await stopOrphanedHomeservers();
  const stamp = new Date()
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z");
  const runDir = join(RUNS_ROOT, `${stamp}-${process.pid}`);
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const baseDir = join(runDir, "homeserver");
  const kind = selectedHomeserver();
  const serverName = DEFAULT_SERVER_NAME;
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;

  const slots = await buildSlots(runDir, { url, serverName });
  const registrations = slots.map((s) => s.homeserverRegistrationPath);

  // Accounts "created by the older flow" must exist before the homeserver loads the registration
  // that claims them exclusively: a first start without any appservice creates them. (On tuwunel
  // that first start also creates the launcher's admin, so no test user becomes server admin.)
  const needPreexisting = slots.filter((s) => SLOT_KINDS[s.kind].preexistingAccounts && s.agentNames.length > 0);
  if (needPreexisting.length > 0) {
    const bare = await startHomeserver({ kind, baseDir, serverName, port, appserviceConfigFiles: [] });
    try {
      for (const slot of needPreexisting) {
        for (const name of slot.agentNames) {
          const user = await registerUser(bare, slot.agentTemplate.replace("{name}", name));
          slot.preexistingAccounts.push({ name, ...user });
        }
        saveSlot(runDir, slot);
      }
    } finally {
      await bare.stop();
    }
  }

  const tStart = Date.now();
  const hs = await startHomeserver({ kind, baseDir, serverName, port, appserviceConfigFiles: registrations });
  const startMs = Date.now() - tStart;
  writeFileSync(join(runDir, "homeserver.json"), JSON.stringify(accessOf(hs), null, 2) + "\n", { mode: 0o600 });
  mkdirSync(dirname(CURRENT_RUN_FILE), { recursive: true });
  writeFileSync(CURRENT_RUN_FILE, `${runDir}\n`);
  process.env[RUN_DIR_ENV] = runDir;
  process.stderr.write(
    `\ne2e: ${hs.version} ${hs.url} (pid ${hs.pid}) with ${slots.length} appservice slots ready in ` +
      `${Date.now() - t0} ms (last start ${startMs} ms); run dir ${runDir}\n`,
  );
}
