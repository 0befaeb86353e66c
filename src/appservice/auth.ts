/** hs_token authentication of homeserver → appservice requests. */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Request } from "express";

export type AuthResult = { ok: true } | { ok: false; status: 401 | 403; errcode: "M_MISSING_TOKEN" | "M_FORBIDDEN"; error: string };

/** Constant-time comparison: hashing first makes the lengths equal, so length leaks nothing either. */
export function tokensEqual(presented: string, expected: string): boolean {
  const a = createHash("sha256").update(presented).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * The spec's `Authorization: Bearer` header, the legacy `access_token` query parameter, or both
 * (tuwunel sends both). Every token presented must match: a request carrying one right and one
 * wrong token is refused.
 */
export function authenticate(req: Pick<Request, "headers" | "query">, hsToken: string): AuthResult {
  const presented: string[] = [];
  const header = req.headers.authorization;
  if (typeof header === "string" && header.length > 0) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) return { ok: false, status: 403, errcode: "M_FORBIDDEN", error: "Malformed Authorization header" };
    presented.push(match[1]);
  }
  const query = req.query.access_token;
  if (query !== undefined) {
    if (typeof query !== "string") return { ok: false, status: 403, errcode: "M_FORBIDDEN", error: "Malformed access_token" };
    presented.push(query);
  }
  if (presented.length === 0) return { ok: false, status: 401, errcode: "M_MISSING_TOKEN", error: "Missing token" };
  // Compare every token even after a mismatch, so timing does not tell which one was wrong.
  const results = presented.map((token) => tokensEqual(token, hsToken));
  if (results.every(Boolean)) return { ok: true };
  return { ok: false, status: 403, errcode: "M_FORBIDDEN", error: "Bad token supplied" };
}
