/**
 * How the bind side answers: the upstream response checked before it is passed on (status line, headers, hop-by-hop
 * headers dropped), the scrape deadline, the one-line answers of its own (a refusal, a 502 or 504, a request head
 * Node's parser refused), the audit fields of a scrape, and the guard that keeps a throw on the response path to one
 * exchange.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import { answerPlain, rawAnswer } from "../common/answer.js";
import { RESERVE_SHARE, scrapeDeadlineMs } from "../common/deadline.js";
import type { Logger } from "../common/log.js";
import type { Caller } from "./caller.js";

/** Hop-by-hop response headers (RFC 9110 7.6.1): about the exporter's connection, not the dialer's. */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
]);

/** Why Node's HTTP server could not write this upstream response as it is, or undefined if it can. */
export function invalidResponse(pres: http.IncomingMessage): string | undefined {
  const status = pres.statusCode ?? 0;
  const line = `${status} ${JSON.stringify(pres.statusMessage ?? "")}`;
  if (!Number.isInteger(status) || status < 200 || status > 999) {
    return `an invalid status line (status ${line}: a final status is 200-999)`;
  }
  if (/[^\t\x20-\x7e\x80-\xff]/.test(pres.statusMessage ?? "")) {
    return `an invalid status line (status ${line}: control byte in the reason phrase)`;
  }
  const raw = pres.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    try {
      http.validateHeaderName(raw[i]!);
      http.validateHeaderValue(raw[i]!, raw[i + 1]!);
    } catch {
      return `an invalid header (${JSON.stringify(raw[i]!.slice(0, 64))})`;
    }
  }
  return undefined;
}

/** The upstream response's headers as writeHead takes them (flat name, value list), hop-by-hop ones dropped. */
export function forwardedHeaders(pres: http.IncomingMessage): string[] {
  const named = new Set(
    String(pres.headers.connection ?? "")
      .toLowerCase()
      .split(",")
      .map((x) => x.trim()),
  );
  const out: string[] = [];
  const raw = pres.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(k) || named.has(k)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

/** Ms to allow the upstream: the common scrape-deadline rule with the bind's reserve (src/common/deadline.ts). */
export function upstreamTimeoutMs(
  header: string | string[] | undefined,
  fallbackSeconds: number,
  maxSeconds = 600,
): number {
  return scrapeDeadlineMs(header, fallbackSeconds, RESERVE_SHARE.bind, maxSeconds);
}

export function send(res: http.ServerResponse, status: number, text: string): void {
  answerPlain(res, status, text, {}, ["allow"]);
}

/** The audit fields for a caller: verified name (or "unverified"), the self-declared name, and how verified. */
export function audit(who: Caller): Record<string, unknown> {
  return { caller: who.caller, claimed: who.claimed, verified_by: who.verifiedBy };
}

/** A request Node's parser refused: a one-line 400 (431 for an oversized head) when no response is under way. */
export function clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  const busy = (socket as unknown as { _httpMessage?: unknown })._httpMessage;
  if (!busy && socket.writable) {
    const status = err.code === "HPE_HEADER_OVERFLOW" ? 431 : 400;
    socket.end(rawAnswer(status, `scrapez bind: malformed HTTP request (${err.code ?? "error"})`));
    setTimeout(() => socket.destroy(), 1_000).unref();
  } else socket.destroy();
}

/** Runs a response-path step; a throw there (a bug, or input we failed to foresee) ends this exchange only. */
export function guarded(res: http.ServerResponse, log: Logger, what: string, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    log.error("response path failed; connection closed", { what, reason: (err as Error).message });
    res.destroy();
  }
}
