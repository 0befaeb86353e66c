/**
 * The older onboarding flow, the baseline of the onboarding scenario: a host daemon holding a
 * shared registration token registers each agent through user-interactive auth
 * (POST /register → 401 with a session and flows → one POST per stage of the flow that contains
 * `m.login.registration_token`), then writes the token file and restarts the agent's daemon.
 * The password is sent once, with the first request: Synapse keeps its hash in the session.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { runRestart } from "../../src/agents/restart";
import { writeTokenFile } from "../../src/agents/token-file";
import { call, MatrixHttpError } from "./matrix";
import { elapsedMs, now } from "./stats";

export interface LegacyTimings {
  /** Milliseconds of each /register request, in order (the first is the 401 that opens the session). */
  requestsMs: number[];
  /** Stage types completed, in order. */
  stages: string[];
  tokenFileMs: number;
  restartMs: number;
}

interface Flow {
  stages: string[];
}

const TOKEN_STAGE = "m.login.registration_token";

async function timed(baseUrl: string, body: unknown, log: number[]): Promise<{ status: number; json: Record<string, unknown> }> {
  const t = now();
  const answer = await call(baseUrl, "POST", "/_matrix/client/v3/register", { body });
  log.push(elapsedMs(t));
  return answer;
}

/** Registers `username` with the registration token; returns its access token and the timings. */
export async function registerWithToken(
  baseUrl: string,
  username: string,
  registrationToken: string,
): Promise<{ userId: string; accessToken: string; timings: Omit<LegacyTimings, "tokenFileMs" | "restartMs"> }> {
  const requestsMs: number[] = [];
  const stages: string[] = [];
  const password = randomBytes(24).toString("base64url");
  let answer = await timed(baseUrl, { username, password, initial_device_display_name: "hyperhive" }, requestsMs);
  if (answer.status !== 401 || typeof answer.json.session !== "string")
    throw new MatrixHttpError(answer.status, answer.json, "POST /register (opening the session)");
  const session = answer.json.session;
  const flows = (answer.json.flows ?? []) as Flow[];
  const flow = flows.find((f) => f.stages.includes(TOKEN_STAGE));
  if (!flow) throw new Error(`Synapse offers no registration flow with ${TOKEN_STAGE}: ${JSON.stringify(flows)}`);
  for (const stage of flow.stages) {
    const completed = (answer.json.completed ?? []) as string[];
    if (completed.includes(stage)) continue;
    const auth: Record<string, unknown> = { type: stage, session };
    if (stage === TOKEN_STAGE) auth.token = registrationToken;
    answer = await timed(baseUrl, { auth }, requestsMs);
    stages.push(stage);
    if (answer.status === 200) break;
    if (answer.status !== 401) throw new MatrixHttpError(answer.status, answer.json, `POST /register (${stage})`);
  }
  if (answer.status !== 200 || typeof answer.json.access_token !== "string") {
    throw new MatrixHttpError(answer.status, answer.json, "POST /register (after every stage)");
  }
  return { userId: String(answer.json.user_id), accessToken: answer.json.access_token, timings: { requestsMs, stages } };
}

/** One agent the old way: state dir, registration, token file (same writer, 0600), daemon restart. */
export async function onboardLegacy(
  baseUrl: string,
  stateRoot: string,
  name: string,
  registrationToken: string,
  restartCommand: string[],
): Promise<LegacyTimings> {
  const stateDir = join(stateRoot, name, "state");
  mkdirSync(stateDir, { recursive: true });
  const registered = await registerWithToken(baseUrl, name, registrationToken);
  let t = now();
  writeTokenFile(stateRoot, name, registered.accessToken);
  const tokenFileMs = elapsedMs(t);
  t = now();
  const restart = await runRestart(restartCommand, name, 60_000);
  if (!restart.ok) throw new Error(`restart of ${name} failed: ${restart.problem ?? "unknown"}`);
  return { ...registered.timings, tokenFileMs, restartMs: elapsedMs(t) };
}
