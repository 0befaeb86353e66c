/**
 * Command latency: `!hive status` sent by a real operator client in the control room, until the
 * bot's reply notice reaches the operator through /sync. Baseline: the homeserver's own share, a
 * plain message from the operator seen by a second client through /sync. Both are timed from just
 * before the send to the /sync answer that carries the awaited event, with the /sync long-poll
 * already waiting when the message goes out.
 */
import { randomBytes } from "node:crypto";
import type { BenchContext, Scenario, ScenarioOutcome } from "../lib/context";
import type { BenchUser, TimelineEvent } from "../lib/matrix";
import { mainHive } from "../lib/onboard";
import { diffRequests } from "../lib/requests";
import { elapsedMs, now, round, roundSummary, sleep, summarize } from "../lib/stats";

const SYNC_TIMEOUT_MS = 10_000;
const ROUND_TRIP_TIMEOUT_MS = 30_000;

/** The last /sync position of each watching user. */
const sinceOf = new Map<string, string>();

/** Sends with `sender` and waits until `watcher` sees an event matching `awaited` in `roomId`; returns the ms. */
async function roundTrip(
  sender: BenchUser,
  watcher: BenchUser,
  roomId: string,
  content: Record<string, unknown>,
  awaited: (event: TimelineEvent, sentId: string | undefined) => boolean,
): Promise<number> {
  // Catch up first (outside the clock), so the long-poll below waits for new events only.
  let since = (await watcher.sync(sinceOf.get(watcher.userId), 0)).nextBatch;
  const started = now();
  let sentId: string | undefined;
  let pending = watcher.sync(since, SYNC_TIMEOUT_MS);
  const sent = sender.send(roomId, content).then((id) => (sentId = id));
  for (;;) {
    const batch = await pending;
    since = batch.nextBatch;
    sinceOf.set(watcher.userId, since);
    await (sentId === undefined ? sent : Promise.resolve());
    if ((batch.timeline.get(roomId) ?? []).some((e) => awaited(e, sentId))) return elapsedMs(started);
    if (elapsedMs(started) > ROUND_TRIP_TIMEOUT_MS) throw new Error(`no answer in ${roomId} within ${ROUND_TRIP_TIMEOUT_MS} ms`);
    pending = watcher.sync(since, SYNC_TIMEOUT_MS);
  }
}

async function joinWhenInvited(user: BenchUser, roomId: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await user.join(roomId);
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(250);
    }
  }
}

function isReplyTo(event: TimelineEvent, sentId: string | undefined, botUserId: string): boolean {
  if (sentId === undefined || event.sender !== botUserId || event.content.msgtype !== "m.notice") return false;
  const relates = event.content["m.relates_to"] as { "m.in_reply_to"?: { event_id?: string } } | undefined;
  return relates?.["m.in_reply_to"]?.event_id === sentId;
}

export const command: Scenario = {
  name: "command",
  title: "`!hive status` round trip through Synapse, against a plain message round trip",
  hives: ["main"],
  async run(ctx: BenchContext): Promise<ScenarioOutcome> {
    const count = ctx.options.quick ? 10 : 50;
    const warmup = 2;
    const { operator, observer } = ctx.synapse;

    ctx.log("command: echo room for the baseline");
    const echoRoom = await operator.createRoom({ preset: "private_chat", name: "bench echo", invite: [observer.userId] });
    await joinWhenInvited(observer, echoRoom, 30_000);
    const echo = (i: number): Promise<number> => {
      const nonce = `echo ${i} ${randomBytes(4).toString("hex")}`;
      return roundTrip(operator, observer, echoRoom, { msgtype: "m.text", body: nonce }, (e) => e.content.body === nonce);
    };

    const main = await mainHive(ctx, ctx.options.agents);
    const botUserId = `@${main.hive.spec.config.appservice.botLocalpart}:${main.hive.spec.config.homeserver.domain}`;
    const { roomId: room } = await main.hive.host.call({ op: "controlRoom", timeoutMs: 60_000 });
    await joinWhenInvited(operator, room, 60_000);
    const status = (): Promise<number> =>
      roundTrip(operator, operator, room, { msgtype: "m.text", body: "!hive status" }, (e, sentId) => isReplyTo(e, sentId, botUserId));

    ctx.log(`command: ${warmup} warm-up + ${count} round trips each`);
    for (let i = 0; i < warmup; i++) {
      await echo(-1 - i);
      await status();
    }
    const echoMs: number[] = [];
    const statusMs: number[] = [];
    const before = await main.hive.host.call({ op: "requests" });
    // Interleaved, so noise from other work on the machine spreads over both.
    for (let i = 0; i < count; i++) {
      echoMs.push(await echo(i));
      statusMs.push(await status());
    }
    const requests = diffRequests(before, await main.hive.host.call({ op: "requests" }));
    const e = summarize(echoMs);
    const s = summarize(statusMs);
    const notes = [
      `${count} round trips each after ${warmup} warm-up ones, interleaved; the operator is a Synapse user in \`operators\`; /sync long-polls (timeout ${SYNC_TIMEOUT_MS / 1000} s) with a filter for timelines only.`,
      "`!hive status` crosses Synapse twice (command → appservice transaction → hive-matrix → reply → operator's /sync); the baseline crosses it once.",
      `hive-matrix's requests per command: ${requests.routes
        .map((r) => `${r.method} ${r.route} ${round(r.count / count)}${r.meanMs !== null ? ` (mean ${r.meanMs} ms)` : ""}`)
        .join(", ")}.`,
    ];
    return {
      rows: [
        { metric: "round trip p50", unit: "ms", hive: s.p50, baseline: e.p50 },
        { metric: "round trip p95", unit: "ms", hive: s.p95, baseline: e.p95 },
      ],
      notes,
      details: {
        count,
        controlRoom: room,
        requests,
        status: roundSummary(s),
        echo: roundSummary(e),
        samples: { status: statusMs.map(round), echo: echoMs.map(round) },
      },
    };
  },
};
