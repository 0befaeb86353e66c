import { join as joinPath } from "node:path";
import { CommandError, type AgentView, type HiveApi } from "../api";
import { blocks, code, duration, para, r, table, type Rich } from "../render";
import { PREFIX, type CommandContext, type GroupCommand, type LeafCommand } from "../table";
import { agentNameArg } from "./checks";
import { roomsCell, stateCell } from "./agents";

function existing(api: HiveApi, name: string): AgentView {
  const agent = api.agent(name);
  if (!agent) throw new CommandError(para(r`There is no agent ${code(name)}. ${code(`${PREFIX} agents`)} lists them.`));
  return agent;
}

export function renderAgent(agent: AgentView, now = Date.now()): Rich {
  return table(
    ["", agent.name],
    [
      ["User", code(agent.userId)],
      ["State", stateCell(agent)],
      ["Token file", agent.tokenFile],
      ["Rooms", roomsCell(agent)],
      ["Source", agent.source],
      ["Updated", `${duration((now - agent.updatedAt) / 1000)} ago`],
    ],
  );
}

function outcome(verb: string, agent: AgentView): Rich {
  const head =
    agent.state === "failed"
      ? para(r`Agent ${code(agent.name)} (${code(agent.userId)}) failed: ${agent.reason ?? "no reason given"}.`)
      : para(r`${verb} agent ${code(agent.name)} (${code(agent.userId)}).`);
  return blocks(head, renderAgent(agent));
}

function tokenFile(ctx: CommandContext, name: string): string {
  return joinPath(ctx.config.agents.stateRoot, name, "state", "matrix-token");
}

const info: LeafCommand = {
  name: "info",
  summary: "Show one agent: user, state (and why it failed), token file, rooms.",
  permission: "operator",
  args: [agentNameArg],
  async run(ctx) {
    return renderAgent(existing(ctx.api, ctx.arg("name")));
  },
};

const add: LeafCommand = {
  name: "add",
  summary: "Provision an agent now: its user, token file, daemon restart and rooms.",
  details:
    "Agents whose state dir exists are provisioned on their own; this is for one that should be provisioned before its state dir appears, or again after a failure.",
  permission: "operator",
  args: [agentNameArg],
  progress: true,
  async run(ctx) {
    return outcome("Added", await ctx.api.addAgent(ctx.arg("name"), (line) => ctx.progress(line)));
  },
};

const remove: LeafCommand = {
  name: "remove",
  summary: "Log an agent out and make it leave the hive rooms; its account is kept.",
  details: "What happens follows agents.onRemove in the config. The account is never deleted, so the name is never reused.",
  permission: "operator",
  args: [agentNameArg],
  confirm(ctx) {
    const agent = existing(ctx.api, ctx.arg("name"));
    if (agent.state === "removed") throw new CommandError(para(r`Agent ${code(agent.name)} is removed already.`));
    const { logout, leaveRooms } = ctx.config.agents.onRemove;
    const user = code(agent.userId);
    const what =
      logout && leaveRooms
        ? r`This logs out ${user} (its token stops working) and makes it leave the hive rooms.`
        : logout
          ? r`This logs out ${user} (its token stops working).`
          : leaveRooms
            ? r`This makes ${user} leave the hive rooms.`
            : r`This marks ${user} removed (agents.onRemove turns logging out and leaving the rooms off).`;
    return para(what, " Its account is kept.");
  },
  async run(ctx) {
    return outcome("Removed", await ctx.api.removeAgent(ctx.arg("name")));
  },
};

const rotate: LeafCommand = {
  name: "rotate",
  summary: "Give an agent a new access token: log out the old one, write the token file, restart its daemon.",
  permission: "operator",
  args: [agentNameArg],
  confirm(ctx) {
    const agent = existing(ctx.api, ctx.arg("name"));
    return para(
      r`This logs out ${code(agent.userId)} (its current token stops working), writes a new token to ${code(tokenFile(ctx, agent.name))} and restarts its daemon.`,
    );
  },
  async run(ctx) {
    return outcome("Rotated the token of", await ctx.api.rotateAgent(ctx.arg("name")));
  },
};

export const agent: GroupCommand = {
  name: "agent",
  summary: "Show, add, remove or re-token one agent.",
  subcommands: [info, add, remove, rotate],
};
