/**
 * Routing: what a request to the proxy asks for and whether it may ask it. The request forms (absolute-form
 * `http://<service>/<path>`, path mode `/scrape/<target>/<path>`), the Host check, the scrape deadline, the limits
 * of `/sd` queries, and the error header the proxy sets on its own answers.
 */
import { isIP } from "node:net";
import { answerProblem, type AnswerProblem } from "../common/forward.js";
import { RESERVE_SHARE, scrapeDeadlineMs as deadlineMs } from "../common/deadline.js";
import { nameToHost, parseTargetHost, targetHost } from "../common/naming.js";
import type { TargetName } from "../overlay/types.js";

/** Set on answers the proxy makes itself (not the bind side's), with a short reason. */
export const ERROR_HEADER = "x-scrapez-proxy-error";

/**
 * `/sd` query limits: parameters, characters of the whole query, characters of one value, and `service` and
 * `attribute` values together (each `service` glob is matched against every service name the catalog offers).
 */
export const MAX_SD_PARAMS = 32;
export const MAX_SD_QUERY = 4096;
export const MAX_SD_GLOB = 256;
export const MAX_SD_PATTERNS = 16;

/**
 * An `/sd` query string (without `?`) -> its `service` globs and `attribute`s, or why it is refused (one line
 * naming the limit it passed; answered 400 `sd-query-too-large`).
 */
export function parseSdQuery(query: string): { service: string[]; attribute: string[] } | { tooLarge: string } {
  if (query.length > MAX_SD_QUERY) return { tooLarge: `${query.length} characters (at most ${MAX_SD_QUERY})` };
  const q = [...new URLSearchParams(query)];
  if (q.length > MAX_SD_PARAMS) return { tooLarge: `more than ${MAX_SD_PARAMS} parameters` };
  const service: string[] = [];
  const attribute: string[] = [];
  for (const [k, v] of q) {
    if (v.length > MAX_SD_GLOB)
      return { tooLarge: `${printable(k, 16)}= is ${v.length} characters (at most ${MAX_SD_GLOB})` };
    if (k === "service") service.push(v);
    else if (k === "attribute") attribute.push(v);
  }
  if (service.length + attribute.length > MAX_SD_PATTERNS) {
    return {
      tooLarge:
        `${service.length + attribute.length} service= and attribute= values (at most ${MAX_SD_PATTERNS} ` +
        "together)",
    };
  }
  return { service, attribute };
}

/** A peer's bytes made safe for a one-line message: printable ASCII kept, anything else as \xNN, at most `max`. */
export function printable(s: string, max = 64): string {
  const cut = s.length > max ? `${s.slice(0, max)}...` : s;
  return cut.replace(/[^\x20-\x7e]|\\/g, (c) =>
    c === "\\" ? "\\\\" : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

/**
 * Why an upstream answer cannot be passed on as it is (src/common/forward.ts checks), in the proxy's words, or
 * undefined.
 */
export function unpassable(
  status: number | undefined,
  reason: string | undefined,
  rawHeaders: string[],
): string | undefined {
  const p = answerProblem(status, reason, rawHeaders);
  return p && problemText(p);
}

/** An answer that cannot be passed on, in the proxy's words (the end of its 502's text). */
export function problemText(p: AnswerProblem): string {
  switch (p.kind) {
    case "status":
      return `status ${String(p.status ?? "none").padStart(3, "0")} is not a final HTTP status`;
    case "reason":
      return `the reason phrase "${printable(p.reason)}" has a control character`;
    case "header-name":
      return `the header name "${printable(p.name)}" is not a valid token`;
    case "header-value":
      return `the value of header "${printable(p.name)}" has a character HTTP does not allow`;
    case "upgrade":
      return "101 Switching Protocols to a GET that asked for no upgrade";
    case "no-answer":
      return "the connection closed without an answer";
    case "unwritable":
      return p.message;
  }
}

/** How many of a service's replicas the answer to an unknown replica names (the rest are counted). */
export const MAX_NAMED_REPLICAS = 20;

/**
 * The text of the 502 for a replica name the catalog does not list, for a service it knows: the replicas it does
 * list (at most MAX_NAMED_REPLICAS, with how many more), or that it lists none.
 */
export function unknownReplicaText(service: string, replica: string, replicas: readonly string[]): string {
  const svc = printable(service);
  const head = `scrapez proxy: service "${svc}" has no replica "${printable(replica)}"`;
  if (replicas.length === 0) {
    return `${head}: no identity binds it by edge identity, so it has no replicas; address the service as ${nameToHost(service)}`;
  }
  const named = replicas.slice(0, MAX_NAMED_REPLICAS).map((r) => `"${printable(r)}"`);
  const more = replicas.length > MAX_NAMED_REPLICAS ? ` and ${replicas.length - MAX_NAMED_REPLICAS} more` : "";
  return (
    `${head}: its replicas are ${named.join(", ")}${more}; address one as ` +
    `${targetHost({ service, identity: replicas[0]! })}`
  );
}

/** `host[:port]` or `[v6][:port]` -> the host, lower-case, without brackets or a trailing dot. */
export function hostOnly(hostHeader: string): string {
  const h = hostHeader.trim().toLowerCase();
  const v6 = /^\[([^\]]*)\](?::\d*)?$/.exec(h);
  return (v6 ? v6[1]! : h.replace(/:\d*$/, "")).replace(/\.$/, "");
}

/**
 * The DNS-rebinding guard for origin-form requests when no credentials are required: a web page can make a browser
 * send requests to the proxy under the page's own host name, and read the answers. Such a request carries that name
 * in Host; so only `localhost`, IP literals (a page served from an IP literal is the proxy itself), the listen host
 * and `allowedHosts` are served. No Host at all (HTTP/1.0) is not a browser's and passes.
 */
export function hostAllowed(
  hostHeader: string | undefined,
  listenHost: string,
  allowedHosts: readonly string[],
): boolean {
  if (hostHeader === undefined || hostHeader.trim() === "") return true;
  const h = hostOnly(hostHeader);
  if (h === "localhost" || isIP(h) !== 0) return true;
  if (h === listenHost.toLowerCase().replace(/\.$/, "")) return true;
  return allowedHosts.some((a) => a.toLowerCase().replace(/\.$/, "") === h);
}

/**
 * How long the proxy may take to dial and answer: the common scrape-deadline rule (src/common/deadline.ts) with the
 * proxy's reserve; without the header, `timeouts.defaultScrapeSeconds`.
 */
export function scrapeDeadlineMs(header: string | string[] | undefined, fallbackSeconds: number): number {
  return deadlineMs(header, fallbackSeconds, RESERVE_SHARE.proxy);
}

/** `http://host[:port]/path?query` -> host and path; undefined unless it is an absolute http URL. */
export function parseAbsolute(url: string): { hostPort: string; path: string } | undefined {
  // Parsed by hand: WHATWG URL lower-cases hosts and rejects hosts whose last label is numeric (`svc.1`).
  const m = /^http:\/\/([^/?#]+)([^#]*)/i.exec(url);
  if (!m || m[1]!.includes("@")) return undefined;
  const rest = m[2]!;
  return { hostPort: m[1]!, path: rest.startsWith("/") ? rest : `/${rest}` };
}

/** `/scrape/<target>/<path>?q` -> target and `/<path>?q`. */
export function parsePathMode(url: string): { target: TargetName; path: string } | "bad" | undefined {
  const m = /^\/scrape\/([^/?#]+)([^?#]*)(\?[^#]*)?/.exec(url);
  if (!m) return undefined;
  let host: string;
  try {
    host = decodeURIComponent(m[1]!);
  } catch {
    return "bad";
  }
  return { target: parseTargetHost(host), path: `${m[2] || "/"}${m[3] ?? ""}` };
}
