/**
 * The one-line plain-text answer both sides give instead of a page: a status and one line saying which service and
 * what went wrong ("scrapez bind: service "x": upstream ... refused the connection"). Prometheus shows that line as
 * the target's lastError, so it is written for a human reading that column. Two forms: on an `http.ServerResponse`,
 * and as raw bytes for a socket that Node's HTTP server no longer (or never) handles (a refused CONNECT, a request
 * head the parser rejected, a head that never completed).
 */
import http from "node:http";
import type { AnswerTarget } from "./http-like.js";

/** The body: the text on one line (whitespace runs folded), ending in a newline. */
export function oneLineBody(text: string): string {
  return `${text.replace(/\s+/g, " ").trim()}\n`;
}

/**
 * Answers `status` with `text` on one line. Headers set earlier on `res` (an upstream's, say) are dropped, except
 * those named in `keep`; `extra` adds our own. When an answer has already begun, the only honest signal left is to
 * cut the connection, so `res` is destroyed.
 */
export function answerPlain(
  res: AnswerTarget,
  status: number,
  text: string,
  extra: http.OutgoingHttpHeaders = {},
  keep: readonly string[] = [],
): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const body = oneLineBody(text);
  for (const h of res.getHeaderNames()) if (!keep.includes(h)) res.removeHeader(h);
  res.writeHead(status, http.STATUS_CODES[status] ?? "Error", {
    "content-type": "text/plain; charset=utf-8",
    "content-length": Buffer.byteLength(body),
    ...extra,
  });
  res.end(body);
}

/** The same answer as raw HTTP/1.1 bytes, with `Connection: close` (the caller ends the socket with it) unless `extra` sets it. */
export function rawAnswer(status: number, text: string, extra: Record<string, string> = {}): string {
  const body = oneLineBody(text);
  const headers = Object.entries({
    connection: "close",
    "content-type": "text/plain; charset=utf-8",
    "content-length": String(Buffer.byteLength(body)),
    ...extra,
  })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join("");
  return `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? "Error"}\r\n${headers}\r\n${body}`;
}
