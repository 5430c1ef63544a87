/**
 * The rules both scrapez servers apply to what they forward: the hop-by-hop headers neither passes on, the check of
 * an answer that cannot be passed on, what a stale pooled connection looks like, and how long a late answer may
 * take. The forwarding itself is each side's relay: the proxy's src/proxy/overlay-forward.ts and the bind's
 * src/bind/relay-exchange.ts, both on src/common/http1.ts.
 */
import type http from "node:http";
import { fieldValues, type RawHeaders } from "./http1.js";

// --- headers -----------------------------------------------------------------------------------------------------

/** Hop-by-hop headers (RFC 9110 7.6.1, and the proxy ones): about one connection, never forwarded. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/**
 * Hop-by-hop headers of a message: the fixed set plus any its Connection header names (lower-case). Most messages'
 * Connection header names nothing beyond the fixed set (`keep-alive`, `close`, or none at all), and then the fixed
 * set itself is returned: no set is built per request.
 */
export function hopByHop(headers: http.IncomingHttpHeaders): ReadonlySet<string> {
  const c = headers.connection;
  if (c === undefined) return HOP_BY_HOP;
  let drop: Set<string> | undefined;
  for (const t of (Array.isArray(c) ? c.join(",") : c).split(",")) {
    const name = t.trim().toLowerCase();
    if (!name || HOP_BY_HOP.has(name)) continue;
    drop ??= new Set(HOP_BY_HOP);
    drop.add(name);
  }
  return drop ?? HOP_BY_HOP;
}

/** Hop-by-hop headers of a message given as raw header lines (see hopByHop). */
export function hopByHopRaw(headers: RawHeaders): ReadonlySet<string> {
  const c = fieldValues(headers, "connection");
  return hopByHop(c.length ? { connection: c.join(",") } : {});
}

/** Whether a message lets its connection carry another one (RFC 9112 9.3). */
export function keepsAlive(minor: 0 | 1, headers: RawHeaders): boolean {
  const tokens = fieldValues(headers, "connection").join(",").toLowerCase();
  if (/(^|,)\s*close\s*(,|$)/.test(tokens)) return false;
  return minor === 1 || /(^|,)\s*keep-alive\s*(,|$)/.test(tokens);
}

/** Node's ClientRequest refused a path with these; a request line cannot carry them. */
const INVALID_PATH = /[^\u0021-\u00ff]/;

/**
 * A GET's head as it goes upstream: `method path`, Host set to `host`, and the client's end-to-end headers as it
 * sent them (hop-by-hop ones, those its Connection names, Content-Length and those named in `drop`, lower-case, left
 * out). Throws a TypeError when the path has characters a request line cannot carry.
 */
export function requestHead(
  method: string,
  path: string,
  host: string,
  rawHeaders: readonly string[],
  drop: readonly string[] = [],
): Buffer {
  if (INVALID_PATH.test(path)) throw new TypeError("Request path contains unescaped characters");
  const skip = hopByHopRaw(rawHeaders as RawHeaders);
  let out = `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n`;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (lower === "host" || lower === "content-length" || skip.has(lower)) continue;
    if (drop.length > 0 && drop.includes(lower)) continue;
    out += `${name}: ${rawHeaders[i + 1]}\r\n`;
  }
  return Buffer.from(`${out}\r\n`, "latin1");
}

// --- answers that cannot be passed on ----------------------------------------------------------------------------

/** Why an upstream answer cannot be passed on. Each side words it (src/proxy/request.ts, src/bind/respond.ts). */
export type AnswerProblem =
  /** Not a final status Node's server can write (200-999). */
  | { kind: "status"; status: number | undefined; reason: string }
  /** A control character in the reason phrase. */
  | { kind: "reason"; status: number; reason: string }
  /** A header name that is not a token, or a value with a character HTTP does not allow. */
  | { kind: "header-name" | "header-value"; name: string }
  /** 101 Switching Protocols with Upgrade to a GET that asked for no upgrade. */
  | { kind: "upgrade" }
  /** The connection closed with neither an answer nor an error. */
  | { kind: "no-answer" }
  /** Node's writer refused the head anyway (not expected after the checks above). */
  | { kind: "unwritable"; message: string };

/**
 * Why an answer cannot be passed on as it is, or undefined. Node's HTTP client accepts status lines and headers that
 * its server side refuses to write (`HTTP/1.1 000`, `099`, a control byte in the reason phrase), and a 1xx status is
 * never a final answer. Checked before anything is written, so the side's 502 carries none of it.
 */
export function answerProblem(
  status: number | undefined,
  reason: string | undefined,
  rawHeaders: readonly string[],
): AnswerProblem | undefined {
  if (status === undefined || !Number.isInteger(status) || status < 200 || status > 999) {
    return { kind: "status", status, reason: reason ?? "" };
  }
  if (reason !== undefined && INVALID_FIELD_CHAR.test(reason)) return { kind: "reason", status, reason };
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (!HTTP_TOKEN.test(name)) return { kind: "header-name", name };
    if (INVALID_FIELD_CHAR.test(rawHeaders[i + 1]!)) return { kind: "header-value", name };
  }
  return undefined;
}

/**
 * What http.validateHeaderName and validateHeaderValue check (Node's checkIsHttpToken and checkInvalidHeaderChar,
 * RFC 9110 5.1 and 5.5), as tests that throw nothing: an answer's headers are checked on every scrape.
 */
const HTTP_TOKEN = /^[\^_`a-zA-Z\-0-9!#$%&'*+.|~]+$/;
const INVALID_FIELD_CHAR = /[^\t\x20-\x7e\x80-\xff]/;

// --- connections -------------------------------------------------------------------------------------------------

/**
 * How long a late answer (after the scrape was answered or abandoned) may take to finish before its connection
 * closes. Until then the proxy reads it to its end and discards it, and the connection goes back to the pool.
 *
 * The proxy's overlay connections are shared by every job scraping the service. While the controller is unreachable
 * no new circuit can be made, so closing one because a 1 s job timed out would fail the 5 s job's next scrape too
 * (the Go tunnelers give each Prometheus connection its own circuit). Under load (many targets starting at once, a
 * slow controller) the new dials are what make the next scrapes late, which would then close theirs: a loop that
 * never settles.
 */
export const LATE_ANSWER_MS = 10_000;

/** Errors of a request on a pooled connection the far end closed while it was idle. */
const STALE = ["ECONNRESET", "EPIPE"];

/**
 * Set (true) on a connection that was dialed ahead and held idle before its first request (the proxy's warm-up):
 * like a pooled keep-alive one, it may have died quietly meanwhile, so its first request gets the same one retry.
 */
export const DIALED_AHEAD = Symbol("scrapez.dialedAhead");

/**
 * A pooled keep-alive connection the far end closed while idle (`extraCodes`: the transport's own codes for that):
 * safe to send a GET or HEAD once more, on a fresh connection, which then tells the real state.
 */
export function isStaleSocket(err: Error & { code?: string }, extraCodes: readonly string[] = []): boolean {
  return err.code !== undefined && (STALE.includes(err.code) || extraCodes.includes(err.code));
}

// --- failures ---------------------------------------------------------------------------------------------------

/** Why the side answers a scrape itself. */
export type ForwardFailure =
  /** The upstream request cannot be written (a path a request line cannot carry: requestHead). */
  | { kind: "request"; err: Error }
  /** The dial or the request failed before an answer began. */
  | { kind: "error"; err: Error & { code?: string } }
  /** The deadline passed before an answer began. */
  | { kind: "timeout" }
  /** The upstream answered something that cannot be passed on. */
  | { kind: "invalid"; problem: AnswerProblem };
