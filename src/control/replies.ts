/**
 * Notices from the bot: replies to commands (with the reply relation, inside the thread when the
 * command was in one) and progress shown in one message edited in place (`m.replace`), with the
 * edits throttled so long work cannot flood the room or the homeserver.
 */
import type { Logger } from "../logging";
import { errorFields } from "../logging";
import { blocks, fitPlain, list, para, truncate, type Rich } from "./render";

/** The part of the bot's HiveMatrixClient this module uses (sends go through the transport). */
export interface MessageClient {
  sendMessage(roomId: string, content: Record<string, unknown>): Promise<string>;
}

/** The command being answered. */
export interface ReplyTarget {
  roomId: string;
  eventId: string;
  sender: string;
  /** Root of the thread the command was sent in, if any. */
  threadId?: string;
}

/** Homeservers refuse events over 64 KiB; stay well below it (an edit carries its content twice). */
const MAX_CONTENT_BYTES = 60_000;

function messageContent(message: Rich, maxBytes = MAX_CONTENT_BYTES): Record<string, unknown> {
  const content = { msgtype: "m.notice", body: fitPlain(message.text), format: "org.matrix.custom.html", formatted_body: message.html };
  if (Buffer.byteLength(JSON.stringify(content)) <= maxBytes) return content;
  // Too big for one event (e.g. a very long agent list): send the plain text only, shortened.
  // Code points can take up to 4 bytes in JSON (6 when escaped as \uXXXX); a sixth of the budget is safe.
  const body = `${truncate(fitPlain(message.text), Math.floor(maxBytes / 6))}\n\n(shortened: the full text is too long for one message)`;
  return { msgtype: "m.notice", body };
}

function relation(target: ReplyTarget): Record<string, unknown> {
  const inReplyTo = { event_id: target.eventId };
  return target.threadId
    ? { rel_type: "m.thread", event_id: target.threadId, is_falling_back: false, "m.in_reply_to": inReplyTo }
    : { "m.in_reply_to": inReplyTo };
}

/** An m.notice replying to `target` (or a plain notice without one). */
export function noticeContent(message: Rich, target?: ReplyTarget): Record<string, unknown> {
  const content = messageContent(message);
  if (!target) return { ...content, "m.mentions": {} };
  return { ...content, "m.relates_to": relation(target), "m.mentions": { user_ids: [target.sender] } };
}

/** An edit of `eventId` to `message`; clients without edit support show the `* `-prefixed fallback. */
export function editContent(eventId: string, message: Rich): Record<string, unknown> {
  const next = messageContent(message, MAX_CONTENT_BYTES / 2);
  const fallback: Record<string, unknown> = { ...next, body: `* ${String(next.body)}` };
  if (typeof next.formatted_body === "string") fallback.formatted_body = `* ${next.formatted_body}`;
  return {
    ...fallback,
    "m.new_content": { ...next, "m.mentions": {} },
    "m.relates_to": { rel_type: "m.replace", event_id: eventId },
    "m.mentions": {},
  };
}

export class Replies {
  constructor(
    private readonly client: MessageClient,
    private readonly logger: Logger,
    /** Least time between two edits of one progress message. */
    private readonly editIntervalMs = 1500,
  ) {}

  /** Sends a notice; returns its event ID. Throws when the homeserver refuses. */
  notice(roomId: string, message: Rich, target?: ReplyTarget): Promise<string> {
    return this.client.sendMessage(roomId, noticeContent(message, target));
  }

  edit(roomId: string, eventId: string, message: Rich): Promise<string> {
    return this.client.sendMessage(roomId, editContent(eventId, message));
  }

  /** A message for the progress of long work, sent on the first line of progress. */
  progress(target: ReplyTarget, title: Rich, onSent?: (eventId: string) => void): Progress {
    return new Progress(this, target, title, this.editIntervalMs, this.logger, onSent);
  }
}

const MAX_PROGRESS_LINES = 15;

/**
 * Progress of one command. The first line sends a reply; later lines edit it, at most once per
 * interval (the latest lines win). `finish` replaces it with the result, or, when no progress was
 * ever shown, sends the result as the one reply.
 */
export class Progress {
  private readonly lines: string[] = [];
  private dropped = 0;
  private sent: Promise<string | undefined> | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private lastEdit = 0;
  private dirty = false;
  private finished = false;

  constructor(
    private readonly replies: Replies,
    private readonly target: ReplyTarget,
    private readonly title: Rich,
    private readonly intervalMs: number,
    private readonly logger: Logger,
    private readonly onSent?: (eventId: string) => void,
  ) {}

  update(line: string): void {
    if (this.finished) return;
    this.lines.push(line);
    if (this.lines.length > MAX_PROGRESS_LINES) {
      this.lines.shift();
      this.dropped++;
    }
    if (!this.sent) {
      const message = this.render();
      this.lastEdit = Date.now();
      this.sent = this.replies.notice(this.target.roomId, message, this.target).then(
        (eventId) => {
          this.onSent?.(eventId);
          return eventId;
        },
        (err: unknown) => {
          this.logger.warn(errorFields(err), "could not send a progress message");
          return undefined;
        },
      );
      this.chain = this.sent;
      return;
    }
    this.dirty = true;
    this.schedule();
  }

  /** Shows the result: the final edit of the progress message, or a new reply. Throws when it cannot be sent. */
  async finish(result: Rich): Promise<void> {
    this.finished = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.chain;
    const eventId = await this.sent;
    if (eventId) await this.replies.edit(this.target.roomId, eventId, result);
    else await this.replies.notice(this.target.roomId, result, this.target);
  }

  private schedule(): void {
    if (this.timer) return;
    const wait = Math.max(0, this.lastEdit + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.dirty || this.finished) return;
      this.dirty = false;
      this.lastEdit = Date.now();
      const message = this.render();
      this.chain = this.chain.then(async () => {
        const eventId = await this.sent;
        if (!eventId || this.finished) return;
        await this.replies.edit(this.target.roomId, eventId, message).catch((err: unknown) => {
          this.logger.warn(errorFields(err), "could not edit a progress message");
        });
      });
    }, wait);
    this.timer.unref();
  }

  private render(): Rich {
    const shown = this.dropped > 0 ? [`… (${this.dropped} earlier lines)`, ...this.lines] : this.lines;
    return blocks(para(this.title), list(shown.map((l) => truncate(l, 300))));
  }
}
