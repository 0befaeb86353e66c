/** The command table: every command the control room knows, in the order help lists them. */
import type { CommandDef } from "../table";
import { agent } from "./agent";
import { agents } from "./agents";
import { help } from "./help";
import { invite } from "./invite";
import { log } from "./log";
import { operator } from "./operator";
import { rooms } from "./rooms";
import { status } from "./status";
import { sync } from "./sync";
import { version } from "./version";

export const COMMANDS: readonly CommandDef[] = [help, status, agents, agent, operator, invite, sync, rooms, log, version];
