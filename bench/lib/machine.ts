/** The machine a run measured on: benchmark numbers mean little without it. */
import { execFile } from "node:child_process";
import { cpus, loadavg, release, totalmem, type } from "node:os";
import { join } from "node:path";
import { selectedHomeserver } from "../../dev/homeserver";
import { venvDir } from "../../dev/synapse";
import { tuwunelBin, tuwunelVersion } from "../../dev/tuwunel";

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  os: string;
  node: string;
  /** e.g. `Synapse 1.143.0 (sqlite)` or `tuwunel 1.4.6 (RocksDB)`. */
  homeserver: string;
  loadAverageStart: number[];
  loadAverageEnd: number[];
}

function load(): number[] {
  return loadavg().map((x) => Math.round(x * 100) / 100);
}

/** The Synapse version installed in the harness's venv ("unknown" when it cannot be read). */
export function synapseVersion(): Promise<string> {
  const python = join(venvDir(), "bin", "python");
  return new Promise((resolve) => {
    execFile(python, ["-c", "import synapse; print(synapse.__version__)"], { timeout: 30_000 }, (err, stdout) => {
      resolve(err ? "unknown" : stdout.trim().split(" ")[0]);
    });
  });
}

export async function machineInfo(): Promise<MachineInfo> {
  const cpu = cpus();
  return {
    cpuModel: cpu[0]?.model.trim() ?? "unknown",
    cores: cpu.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    os: `${type()} ${release()}`,
    node: process.version,
    homeserver:
      selectedHomeserver() === "tuwunel" ? `${tuwunelVersion(tuwunelBin())} (RocksDB)` : `Synapse ${await synapseVersion()} (sqlite)`,
    loadAverageStart: load(),
    loadAverageEnd: load(),
  };
}

export function finishMachineInfo(info: MachineInfo): MachineInfo {
  return { ...info, loadAverageEnd: load() };
}
