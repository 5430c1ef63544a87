/**
 * Forwarding: how the proxy treats the overlay side of a scrape. Hop-by-hop headers, the failures it answers itself
 * (a dial or request error mapped to 502/504 and an X-Scrapez-Proxy-Error code, an upstream answer that cannot be
 * passed on), which errors allow one retry on a fresh connection, and a late answer drained so its pooled
 * connection survives a timeout.
 */
import type http from "node:http";
import { AppErrorCodes, ProxyErrorCodes } from "../common/errors.js";
import { ErrorCodes } from "../overlay/types.js";
import type { Resolved } from "./catalog.js";
import { resultLabel } from "./metrics.js";

/** How long a late answer (after the proxy answered 504) may take to finish before its connection is closed. */
export const LATE_ANSWER_MS = 10_000;

/**
 * A scrape ended before its answer was passed on: the deadline passed (the client gets our 504) or the client left
 * (Prometheus gave up: a 499). The overlay connection under `upstream` is not torn down. A request not yet on a
 * connection is destroyed (Node then pools a connection still being dialed, unused). One already written has its
 * answer, not begun (`answer` undefined) or half passed on, read to the end and discarded within LATE_ANSWER_MS
 * (then the connection is closed), and the connection goes back to the keep-alive pool.
 *
 * Connections are shared by every job scraping the service. While the controller is unreachable no new circuit
 * can be made, so closing one because a 1 s job timed out would fail the 5 s job's next scrape too (the Go
 * tunnelers give each Prometheus connection its own circuit). Under load (many targets starting at once, a slow
 * controller) the new dials are what make the next scrapes late, which would then close theirs: a loop that never
 * settles.
 */
export function spareUpstream(
  upstream: http.ClientRequest,
  answer: http.IncomingMessage | undefined,
  err: Error,
): void {
  if (upstream.destroyed || !upstream.socket) return void upstream.destroy(err);
  if (answer?.readableEnded) return;
  const late = setTimeout(() => upstream.destroy(err), LATE_ANSWER_MS);
  late.unref();
  upstream.once("close", () => clearTimeout(late));
  const drain = (ur: http.IncomingMessage) => {
    ur.unpipe();
    ur.resume();
    ur.once("end", () => clearTimeout(late));
  };
  if (answer) drain(answer);
  else upstream.once("response", drain);
}

export const HOP_BY_HOP = new Set([
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

/** Hop-by-hop headers: the fixed set plus any the Connection header names. */
export function hopByHop(headers: http.IncomingHttpHeaders): Set<string> {
  const drop = new Set(HOP_BY_HOP);
  const c = headers.connection;
  for (const t of (Array.isArray(c) ? c.join(",") : (c ?? "")).split(",")) {
    if (t.trim()) drop.add(t.trim().toLowerCase());
  }
  return drop;
}

export interface Failure {
  status: number;
  /** The X-Scrapez-Proxy-Error value: one of ProxyErrorCodes, or the SDK's ZITI_* code of a failed dial. */
  code: string;
  text: string;
}

export function describeTarget(r: Resolved): string {
  return `service "${r.service}"${r.identity !== undefined ? ` (replica "${r.identity}")` : ""} via identity "${r.ctx.identityName}"`;
}

/** Maps a dial or request error to the proxy's answer. */
export function failure(err: Error & { code?: string }, r: Resolved, elapsedMs: number, deadlineMs: number): Failure {
  const who = describeTarget(r);
  switch (err.code) {
    case AppErrorCodes.SCRAPE_TIMEOUT:
      return {
        status: 504,
        code: ProxyErrorCodes.SCRAPE_TIMEOUT,
        text: `scrapez proxy: ${who} did not answer within ${(deadlineMs / 1000).toFixed(1)}s`,
      };
    case ErrorCodes.DIAL_TIMEOUT:
      return {
        status: 504,
        code: err.code,
        text: `scrapez proxy: dialing ${who} timed out after ${elapsedMs} ms`,
      };
    case ErrorCodes.SERVICE_NOT_FOUND:
    case ErrorCodes.NOT_AUTHORIZED:
      return { status: 502, code: err.code, text: `scrapez proxy: ${who} is not dialable: ${err.message}` };
    case ErrorCodes.NO_EDGE_ROUTERS:
      return { status: 502, code: err.code, text: `scrapez proxy: ${who}: no online edge router: ${err.message}` };
    default:
      if (err.code?.startsWith("HPE_")) return badUpstream(r, `not valid HTTP: ${err.message} (${err.code})`);
      return {
        status: 502,
        code: resultLabel(err.code),
        text: `scrapez proxy: ${who} is unreachable: ${err.message}`,
      };
  }
}

/** An answer the proxy cannot pass on: 502 naming the service and why. */
export function badUpstream(r: Resolved, why: string): Failure {
  return {
    status: 502,
    code: ProxyErrorCodes.BAD_UPSTREAM,
    text: `scrapez proxy: ${describeTarget(r)} answered with a response that cannot be passed on: ${why}`,
  };
}

/** A pooled keep-alive socket the far end closed while idle: safe to retry an idempotent request once. */
export function isStaleSocket(err: Error & { code?: string }): boolean {
  return (
    err.code === "ECONNRESET" ||
    err.code === "EPIPE" ||
    err.code === ErrorCodes.CONNECTION_CLOSED ||
    err.code === ErrorCodes.CHANNEL_CLOSED
  );
}
