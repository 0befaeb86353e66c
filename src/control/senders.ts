/** Who the appservice itself is: its users are never obeyed nor answered in the control room. */
import type { Registration } from "../registration";

/**
 * True for every user ID in the registration's user namespaces (the bot and the agents). Built
 * from the registration the homeserver has, so it matches exactly the users the homeserver
 * lets this appservice act as.
 */
export function appserviceUserPredicate(
  registration: Pick<Registration, "namespaces" | "sender_localpart">,
  domain: string,
): (userId: string) => boolean {
  const patterns = registration.namespaces.users.map((ns) => new RegExp(ns.regex));
  const bot = `@${registration.sender_localpart}:${domain}`;
  return (userId) => userId === bot || patterns.some((p) => p.test(userId));
}
