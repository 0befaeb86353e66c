import { AGENT_STATES, type AgentView } from "../api";
import { blocks, code, concat, para, plural, r, table, text, type Rich } from "../render";
import { PREFIX, type LeafCommand } from "../table";

/** Enough for any real hive; more rows would not fit in one event. */
const MAX_ROWS = 100;

export function stateCell(agent: AgentView): Rich {
  return text(agent.reason ? `${agent.state} (${agent.reason})` : agent.state);
}

/** "none" would read as "no token"; the point is that there is nowhere to write one yet. */
export function tokenFileCell(agent: AgentView): string {
  return agent.tokenFile === "none" ? "no state dir" : agent.tokenFile;
}

export function roomsCell(agent: AgentView): Rich {
  return text(agent.rooms.length > 0 ? agent.rooms.join(", ") : "none");
}

export const agents: LeafCommand = {
  name: "agents",
  summary: "List the agents: name, user, state, token file, joined rooms and last activity.",
  permission: "operator",
  flags: [{ name: "state", value: "state", help: "Only agents in this state.", choices: AGENT_STATES }],
  async run(ctx) {
    const wanted = ctx.option("state");
    const all = ctx.api.agents();
    const shown = (wanted ? all.filter((a) => a.state === wanted) : all).slice().sort((a, b) => a.name.localeCompare(b.name));
    if (all.length === 0) {
      return para(
        r`No agents yet. An agent appears when its state dir exists under ${code(ctx.config.agents.stateRoot)}, or with ${code(`${PREFIX} agent add <name>`)}.`,
      );
    }
    if (shown.length === 0) return para(r`No agent is ${code(wanted ?? "")} (of ${plural(all.length, "agent")}).`);
    const rows = shown.slice(0, MAX_ROWS).map((a) => [a.name, code(a.userId), stateCell(a), tokenFileCell(a), roomsCell(a), a.activity]);
    return blocks(
      para(wanted ? `${plural(shown.length, "agent")} ${wanted} (of ${all.length}):` : `${plural(shown.length, "agent")}:`),
      table(["Name", "User", "State", "Token file", "Rooms", "Activity"], rows),
      shown.length > MAX_ROWS
        ? para(concat(`… and ${shown.length - MAX_ROWS} more. Narrow the list with `), code("--state=<state>"), ".")
        : undefined,
    );
  },
};
