/**
 * How the bind side answers: its wording of a forward's failures (./relay-exchange.ts forwards: an upstream answer
 * that cannot be passed on, an error, the deadline), the scrape deadline, the one-line answers of its own (a refusal,
 * a 502 or 504, a request head Node's parser refused) and the audit fields of a scrape.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import { answerPlain, rawAnswer } from "../common/answer.js";
import { answerProblem, type AnswerProblem, type ForwardFailure } from "../common/forward.js";
import { RESERVE_SHARE, scrapeDeadlineMs } from "../common/deadline.js";
import type { Caller } from "./caller.js";

/** Why Node's HTTP server could not write this upstream response as it is, or undefined if it can. */
export function invalidResponse(pres: http.IncomingMessage): string | undefined {
  const p = answerProblem(pres.statusCode, pres.statusMessage, pres.rawHeaders);
  return p && problemText(p);
}

/** An answer that cannot be passed on, in the bind's words (after "upstream <url> answered "). */
export function problemText(p: AnswerProblem): string {
  switch (p.kind) {
    case "status":
      return `an invalid status line (status ${p.status ?? 0} ${JSON.stringify(p.reason)}: a final status is 200-999)`;
    case "reason":
      return `an invalid status line (status ${p.status} ${JSON.stringify(p.reason)}: control byte in the reason phrase)`;
    case "header-name":
    case "header-value":
      return `an invalid header (${JSON.stringify(p.name.slice(0, 64))})`;
    case "upgrade":
      return "101 Switching Protocols to a request that asked for no upgrade";
    case "no-answer":
      return "nothing (the connection closed without an answer)";
    case "unwritable":
      return `a response Node cannot forward (${p.message})`;
  }
}

/** The bind's own answer to a forward that failed, and the upstream-error kind it counts (if any). */
export function forwardFailure(
  f: ForwardFailure,
  t: { service: string; upstream: string },
  timeoutMs: number,
): { status: number; text: string; kind?: string } {
  const upstream = `scrapez bind: service "${t.service}": upstream ${t.upstream}`;
  switch (f.kind) {
    case "request":
      return {
        status: 400,
        text: `scrapez bind: service "${t.service}": cannot forward this request: ${f.err.message}`,
      };
    case "timeout":
      return {
        status: 504,
        text: `${upstream} did not answer within ${(timeoutMs / 1000).toFixed(1)}s`,
        kind: "timeout",
      };
    case "invalid":
      return { status: 502, text: `${upstream} answered ${problemText(f.problem)}`, kind: "invalid" };
    case "error": {
      const code = f.err.code ?? "error";
      const parse = code.startsWith("HPE_");
      const what =
        code === "ECONNREFUSED"
          ? "refused the connection (is the exporter running?)"
          : code === "ECONNRESET"
            ? "closed the connection"
            : parse
              ? `answered something that is not valid HTTP: ${f.err.message}`
              : f.err.message;
      return {
        status: 502,
        text: `${upstream} ${what} (${code})`,
        kind: code === "ECONNREFUSED" ? "refused" : parse ? "invalid" : "other",
      };
    }
  }
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
