/**
 * The proxy's failures of a forward (src/common/forward.ts does the forwarding): a dial or request error mapped to
 * 502/504 and an X-Scrapez-Proxy-Error code, an upstream answer that cannot be passed on, and which of the SDK's
 * errors mean a stale pooled overlay connection (one retry on a fresh one).
 */
import { AppErrorCodes, ProxyErrorCodes, ScrapezError } from "../common/errors.js";
import type { ForwardFailure } from "../common/forward.js";
import { ErrorCodes } from "../overlay/types.js";
import type { Resolved } from "./catalog.js";
import { resultLabel } from "./metrics.js";
import { problemText } from "./request.js";

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

/** The SDK's codes for an overlay connection the far end closed while it sat in the pool (see isStaleSocket). */
export const STALE_OVERLAY_CODES: readonly string[] = [ErrorCodes.CONNECTION_CLOSED, ErrorCodes.CHANNEL_CLOSED];

/** The proxy's answer to a forward that failed (src/common/forward.ts). */
export function forwardFailure(f: ForwardFailure, r: Resolved, elapsedMs: number, deadlineMs: number): Failure {
  switch (f.kind) {
    case "request":
      return {
        status: 400,
        code: ProxyErrorCodes.BAD_REQUEST,
        text: `scrapez proxy: cannot forward this request to service "${r.service}": ${f.err.message}`,
      };
    case "error":
      return failure(f.err, r, elapsedMs, deadlineMs);
    case "timeout":
      return failure(new ScrapezError(AppErrorCodes.SCRAPE_TIMEOUT, "scrape timeout"), r, elapsedMs, deadlineMs);
    case "invalid":
      return badUpstream(r, problemText(f.problem));
  }
}
