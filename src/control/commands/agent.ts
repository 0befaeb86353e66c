import { join as joinPath } from "node:path";
import { CommandError, type AgentView, type HiveApi } from "../api";
import { blocks, code, duration, list, para, r, table, type Rich } from "../render";
import { PREFIX, type CommandContext, type GroupCommand, type LeafCommand } from "../table";
import { agentNameArg } from "./checks";
import { roomsCell, stateCell } from "./agents";

function existing(api: HiveApi, name: string): AgentView {
  const agent = api.agent(name);
  if (!agent) throw new CommandError(para(r`There is no agent ${code(name)}. ${code(`${PREFIX} agents`)} lists them.`));
  return agent;
}

function tokenPath(agent: AgentView): string {
  return joinPath(agent.stateDir, "matrix-token");
}

function tokenCell(agent: AgentView): Rich {
  if (agent.tokenFile === "ok") return code(tokenPath(agent));
  if (agent.tokenFile === "missing") return r`not written yet (${code(tokenPath(agent))})`;
  return r`none: no state dir yet (${code(agent.stateDir)})`;
}

export function renderAgent(agent: AgentView, now = Date.now()): Rich {
  return table(
    ["", agent.name],
    [
      ["User", code(agent.userId)],
      ["State", stateCell(agent)],
      ["Token file", tokenCell(agent)],
      ["Rooms", roomsCell(agent)],
      ["Activity", agent.activity],
      ["Source", agent.source],
      ["Updated", `${duration((now - agent.updatedAt) / 1000)} ago`],
    ],
  );
}

/** What an agent without a state dir gets, and when: said in the confirmation and in the result. */
function noStateDir(agent: AgentView): Rich {
  return para(
    r`It has no state dir yet (${code(agent.stateDir)}), so no token file is written now. `,
    r`Its token is written to ${code(tokenPath(agent))}, and its daemon restarted, as soon as that dir appears.`,
  );
}

function outcome(head: Rich, agent: AgentView, reconcileInterval: number): Rich {
  const problems = agent.roomProblems ?? [];
  const retry =
    reconcileInterval > 0
      ? `It runs again on its own (on every change, and every ${duration(reconcileInterval)})`
      : "It runs again on every change";
  return blocks(
    agent.state === "failed"
      ? para(r`Agent ${code(agent.name)} (${code(agent.userId)}) failed: ${agent.reason ?? "no reason given"}.`)
      : para(head),
    agent.tokenFile === "none" && agent.state !== "removed" ? noStateDir(agent) : undefined,
    problems.length > 0 ? para("The rooms reconcile that followed did not finish:") : undefined,
    problems.length > 0 ? list(problems) : undefined,
    problems.length > 0 ? para(`${retry}; new problems are reported in this room.`) : undefined,
    renderAgent(agent),
  );
}

function tokenFile(ctx: CommandContext, name: string): string {
  return joinPath(ctx.config.agents.stateRoot, name, "state", "matrix-token");
}

function interval(ctx: CommandContext): number {
  return ctx.config.rooms.reconcileIntervalSeconds;
}

const info: LeafCommand = {
  name: "info",
  summary: "Show one agent: user, state (and why it failed), token file, rooms, last activity.",
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
    "Agents whose state dir exists are provisioned on their own; this is for one that should be provisioned before its state dir appears, or again after a failure. Without a state dir the account is registered and joined to the rooms, and the token is written (and the daemon restarted) as soon as the dir appears. The answer comes once the agent is in the rooms.",
  permission: "operator",
  args: [agentNameArg],
  progress: true,
  async run(ctx) {
    const agent = await ctx.api.addAgent(ctx.arg("name"), (line) => ctx.progress(line));
    const what = agent.tokenFile === "none" ? "its account is registered" : "its token is written and its daemon restarted";
    return outcome(r`Added agent ${code(agent.name)} (${code(agent.userId)}): ${what}.`, agent, interval(ctx));
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
    const agent = await ctx.api.removeAgent(ctx.arg("name"));
    return outcome(r`Removed agent ${code(agent.name)} (${code(agent.userId)}).`, agent, interval(ctx));
  },
};

const rotate: LeafCommand = {
  name: "rotate",
  summary: "Give an agent a new access token: log out the old one, write the token file, restart its daemon.",
  details:
    "An agent without a state dir has no token to replace: then only its account is checked, nothing is logged out, and the confirmation says so.",
  permission: "operator",
  args: [agentNameArg],
  confirm(ctx) {
    const agent = existing(ctx.api, ctx.arg("name"));
    if (agent.tokenFile === "none") {
      return blocks(
        para(
          r`Agent ${code(agent.name)} has no state dir yet (${code(agent.stateDir)}), so there is no token to replace: `,
          r`this only checks its account ${code(agent.userId)}; nothing is logged out and no token file is written.`,
        ),
        para(r`Its token is written to ${code(tokenFile(ctx, agent.name))} as soon as that dir appears.`),
      );
    }
    return para(
      r`This logs out ${code(agent.userId)} (its current token stops working), writes a new token to ${code(tokenFile(ctx, agent.name))} and restarts its daemon.`,
    );
  },
  async run(ctx) {
    const agent = await ctx.api.rotateAgent(ctx.arg("name"));
    const head =
      agent.tokenFile === "none"
        ? r`Checked the account of agent ${code(agent.name)} (${code(agent.userId)}); no token was rotated.`
        : r`Rotated the token of agent ${code(agent.name)} (${code(agent.userId)}): the old one is logged out, the new one written.`;
    return outcome(head, agent, interval(ctx));
  },
};

export const agent: GroupCommand = {
  name: "agent",
  summary: "Show, add, remove or re-token one agent.",
  subcommands: [info, add, remove, rotate],
};
