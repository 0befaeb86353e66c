/**
 * The appservice's hot route, `PUT /_matrix/app/v1/transactions/:txnId` (and the legacy
 * `/transactions/:txnId`), on plain node:http in front of the express app. Express's per-request
 * machinery (router layers, query and body-parser middleware, res.json) cost about 0.45 ms of CPU
 * per transaction, as much as the rest of the intake; every agent onboarded brings three.
 *
 * The lean path must answer exactly as the express route would, so it takes only the requests
 * whose handling it reproduces from the headers alone, before reading anything: method PUT, a URL
 * of printable ASCII without `#` (anything else makes express parse it with url.parse), a txnId
 * that percent-decodes, an identity Content-Encoding, and a Content-Type that is absent or
 * `application/json` with at most `charset=utf-8`. Everything else, including gzip bodies and
 * other charsets, goes to express unchanged. What a transaction means (authentication, validation,
 * refusals, the answer to each failure) is not here but in the TransactionSteps both paths share.
 */
import type { IncomingHttpHeaders, IncomingMessage, RequestListener, ServerResponse } from "node:http";
import { StringDecoder } from "node:string_decoder";
import type { Request } from "express";

/** Answers a request with a JSON body. */
export type Reply = (status: number, body: object) => void;

/** A failure while reading the body, named as body-parser names it (the shared error handler maps these). */
export interface BodyError {
  type: "entity.too.large" | "entity.parse.failed" | "request.aborted";
}

/** What a transaction request goes through, the same for the express route and the lean path. */
export interface TransactionSteps {
  /** Checks the hs_token; false when refused, after answering and counting the refusal. */
  authorize(req: Pick<Request, "headers" | "query">, path: string, reply: Reply): boolean;
  /** Validates the parsed body and hands the transaction on; `fail` gets a rejection of the handler. */
  receive(txnId: string, body: unknown, raw: Buffer | undefined, reply: Reply, fail: (err: unknown) => void): void;
  /** Answers a failure as the express app's error handler does; `path` is the request's pathname. */
  fail(err: unknown, path: string, reply: Reply): void;
}

export interface LeanOptions {
  maxBodyBytes: number;
  /** Express's own query parser (`app.get("query parser fn")`), so `access_token` is read as express reads it. */
  parseQuery(query: string): Request["query"];
}

/** The express route's pattern for both paths: case-insensitive, one optional trailing slash. */
const TRANSACTION_PATH = /^\/(?:_matrix\/app\/v1\/)?transactions\/([^/]+?)\/?$/i;
/** A URL express's parseurl splits itself at the first `?`; others it hands to url.parse. */
const PLAIN_URL = /^\/[\x21\x22\x24-\x7e]*$/;
/** Content-Types for which body-parser and the raw-body hook both read the body as UTF-8. */
const UTF8_JSON = /^application\/json(?:; ?charset=utf-8)?$/i;

const TOO_LARGE: BodyError = { type: "entity.too.large" };
const ABORTED: BodyError = { type: "request.aborted" };
const NOT_JSON: BodyError = { type: "entity.parse.failed" };

/** A transaction the lean path takes, decided from the request line and headers alone. */
export interface LeanTake {
  txnId: string;
  /** The URL's pathname. */
  path: string;
  query: Request["query"];
}

/**
 * Whether the lean path can answer this request exactly as express would, from what arrived before
 * the body; undefined hands it to express. Shared by the node:http listener below and the
 * socket-level server (lean-server.ts).
 */
export function takeTransaction(
  method: string | undefined,
  url: string,
  headers: IncomingHttpHeaders,
  options: Pick<LeanOptions, "parseQuery">,
): LeanTake | undefined {
  if (method !== "PUT" || !PLAIN_URL.test(url)) return undefined;
  const q = url.indexOf("?");
  const path = q < 0 ? url : url.slice(0, q);
  const match = TRANSACTION_PATH.exec(path);
  if (!match) return undefined;
  const type = headers["content-type"];
  const encoding = headers["content-encoding"];
  if ((type !== undefined && !UTF8_JSON.test(type)) || (encoding && encoding.toLowerCase() !== "identity")) return undefined;
  try {
    return { txnId: decodeURIComponent(match[1]), path, query: q < 0 ? {} : options.parseQuery(url.slice(q + 1)) };
  } catch {
    // Express fails the route match (or its query middleware) on it and answers; nothing read yet.
    return undefined;
  }
}

/** A taken transaction's body, read whole: parsed as body-parser parses it and handed to the steps. */
export function receiveBody(steps: TransactionSteps, take: LeanTake, raw: Buffer, reply: Reply): void {
  let body: unknown;
  try {
    body = parseJson(raw);
  } catch {
    return steps.fail(NOT_JSON, take.path, reply);
  }
  receive(steps, take, body, raw, reply);
}

/** Hands a parsed body to the steps; a throw in a step becomes the error handler's answer, as express's router makes it. */
function receive(steps: TransactionSteps, take: LeanTake, body: unknown, raw: Buffer | undefined, reply: Reply): void {
  const fail = (err: unknown): void => steps.fail(err, take.path, reply);
  try {
    steps.receive(take.txnId, body, raw, reply, fail);
  } catch (err) {
    fail(err);
  }
}

/** The request listener to serve: transactions the lean path takes, everything else to `fallback` (the express app). */
export function leanTransactionListener(steps: TransactionSteps, options: LeanOptions, fallback: RequestListener): RequestListener {
  return (req, res) => {
    const take = takeTransaction(req.method, req.url ?? "", req.headers, options);
    if (!take) return fallback(req, res);
    const reply: Reply = (status, body) => sendJson(res, status, body);
    if (!steps.authorize({ headers: req.headers, query: take.query }, take.path, reply)) return;
    // body-parser leaves a request without a body unread, with an empty object as its body.
    if (req.headers["transfer-encoding"] === undefined && Number.isNaN(Number(req.headers["content-length"]))) {
      return receive(steps, take, {}, undefined, reply);
    }
    readBody(req, options.maxBodyBytes, (result) => {
      if (!Buffer.isBuffer(result)) return steps.fail(result, take.path, reply);
      receiveBody(steps, take, result, reply);
    });
  };
}

/** What express's res.status(status).json(body) sends, without its machinery. */
function sendJson(res: ServerResponse, status: number, body: object): void {
  // A handler settling after the socket is gone, or a second answer, must not throw out of a promise chain.
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader("Content-Type", "application/json; charset=utf-8");
  res.setHeader("Content-Length", Buffer.byteLength(text));
  res.end(text);
}

/**
 * Reads the body as raw-body does for body-parser: at most `limit` bytes are kept; a body declared
 * or found larger is refused, its data is thrown away as it arrives and the answer waits for the
 * request's end, so the homeserver, still sending, reads it on a connection that stays usable.
 */
function readBody(req: IncomingMessage, limit: number, done: (result: Buffer | BodyError) => void): void {
  const declared = req.headers["content-length"] === undefined ? undefined : Number(req.headers["content-length"]);
  if (declared !== undefined && declared > limit) return discard(req, () => done(TOO_LARGE));
  let chunks: Buffer[] = [];
  let received = 0;
  const stop = (): void => {
    req.off("data", onData);
    req.off("end", onEnd);
    req.off("aborted", onAborted);
    req.off("error", onAborted);
    req.off("close", onAborted);
  };
  const onData = (chunk: Buffer): void => {
    received += chunk.length;
    if (received <= limit) {
      chunks.push(chunk);
      return;
    }
    stop();
    chunks = [];
    discard(req, () => done(TOO_LARGE));
  };
  const onEnd = (): void => {
    stop();
    done(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, received));
  };
  // The peer is gone: nobody to answer, nothing to count (express's error handler does the same).
  const onAborted = (): void => {
    stop();
    done(ABORTED);
  };
  req.on("data", onData);
  req.on("end", onEnd);
  req.on("aborted", onAborted);
  req.on("error", onAborted);
  req.on("close", onAborted);
}

/** body-parser's dump: reads off the rest of the request without keeping it, then calls `then` once. */
function discard(req: IncomingMessage, then: () => void): void {
  const socket = req.socket as IncomingMessage["socket"] | null;
  if (!socket || !socket.readable || (req.complete && !req.readable)) return then();
  let called = false;
  const once = (): void => {
    if (called) return;
    called = true;
    req.off("end", once);
    req.off("close", once);
    then();
  };
  req.on("end", once);
  req.on("close", once);
  req.resume();
}

/** body-parser's JSON parse of a UTF-8 body: iconv-lite's decoder (a leading BOM dropped), an empty body is `{}`. */
function parseJson(raw: Buffer): unknown {
  const decoder = new StringDecoder("utf8");
  let text = decoder.write(raw) + decoder.end();
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  return text.length === 0 ? {} : JSON.parse(text);
}
