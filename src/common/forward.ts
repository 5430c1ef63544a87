/**
 * Forwarding one GET (or HEAD) under a deadline with Node's HTTP client and server: the proxy forwards a scrape over
 * the overlay this way. Both scrapez servers share the rules written here: the hop-by-hop headers neither passes
 * on and the check of an answer that cannot be passed on (the bind's relay, src/bind/relay-exchange.ts, applies
 * them to the heads it reads itself); the one retry on a stale pooled connection, and what the deadline and a client
 * that leaves do to the upstream request.
 *
 * A `Forward` is one request's state, held in fields rather than closure flags. The side supplies what differs
 * (`ForwardSide`): how the upstream request is made, and how a failure is answered (its wording, its error header,
 * its metrics and logs). What happens to an upstream request the scrape no longer needs is its choice too
 * (`abandon`): "spare" keeps a pooled overlay connection (see spareUpstream), "destroy" closes it.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import { onClientGone } from "./client-gone.js";
import { AppErrorCodes, ScrapezError } from "./errors.js";
import type { Logger } from "./log.js";

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

/**
 * The headers of a client's GET as they go upstream: hop-by-hop ones, `content-length` (no body is forwarded) and
 * those named in `drop` (lower-case) left out, `host` set to `host`.
 */
export function upstreamHeaders(
  headers: http.IncomingHttpHeaders,
  host: string,
  drop: readonly string[] = [],
): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  const skip = hopByHop(headers);
  // Node's IncomingHttpHeaders is a plain object with lower-case keys; for-in over it allocates nothing.
  for (const k in headers) {
    const v = headers[k];
    if (v === undefined || k === "content-length" || skip.has(k) || (drop.length > 0 && drop.includes(k))) continue;
    out[k] = v;
  }
  out.host = host;
  return out;
}

/** An upstream answer's headers as writeHead takes them (flat name, value list), hop-by-hop ones left out. */
export function passedHeaders(ur: http.IncomingMessage): string[] {
  const drop = hopByHop(ur.headers);
  const raw = ur.rawHeaders;
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    if (!drop.has(name.toLowerCase())) out.push(name, raw[i + 1]!);
  }
  return out;
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

/** How long a late answer (after the scrape was answered or abandoned) may take to finish before its connection closes. */
export const LATE_ANSWER_MS = 10_000;

/**
 * A scrape ended before its answer was passed on: the deadline passed or the client left. The connection under
 * `upstream` is not torn down. A request not yet on a connection is destroyed (Node then pools a connection still
 * being dialed, unused). One already written has its answer, not begun (`answer` undefined) or half passed on, read
 * to the end and discarded within LATE_ANSWER_MS (then the connection is closed), and the connection goes back to
 * the keep-alive pool.
 *
 * The proxy's overlay connections are shared by every job scraping the service. While the controller is unreachable
 * no new circuit can be made, so closing one because a 1 s job timed out would fail the 5 s job's next scrape too
 * (the Go tunnelers give each Prometheus connection its own circuit). Under load (many targets starting at once, a
 * slow controller) the new dials are what make the next scrapes late, which would then close theirs: a loop that
 * never settles.
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

/**
 * Passes an answer's body on to the client, as `ur.pipe(res)` would (backpressure included). An answer with a
 * Content-Length is passed chunk by chunk, as it arrives (Node writes it as it is). One without (the client's copy is
 * then chunked by Node, whatever the upstream's framing was) is passed in batches: the chunks that arrive together
 * (in one event-loop turn: typically one read of the upstream's socket, which an exporter's many small chunks share)
 * leave as one chunk, and each batch is held until the next one arrives or the answer ends, so the last batch and
 * the chunked terminator leave in one write. Piped, every upstream chunk became a chunk of its own, each with its
 * own framing and events on every hop after it, and the terminator followed alone one turn later: one more overlay
 * frame or socket write per scrape. The bytes of the body are the same either way; only their chunking differs,
 * which HTTP leaves to each hop. Returns what stops passing (the answer is then left as it is, with its other
 * listeners).
 */
export function passBody(ur: http.IncomingMessage, res: http.ServerResponse): () => void {
  const onDrain = () => ur.resume();
  res.on("drain", onDrain);
  if (ur.headers["content-length"] !== undefined) {
    const onData = (chunk: Buffer) => void (res.write(chunk) || ur.pause());
    const onEnd = () => void res.end();
    ur.on("data", onData);
    ur.once("end", onEnd);
    return () => {
      ur.off("data", onData);
      ur.off("end", onEnd);
      res.off("drain", onDrain);
    };
  }
  let batch: Buffer[] = [];
  let size = 0;
  /** The batch is from an earlier turn: the next chunk sends it first. */
  let older = false;
  let turn: NodeJS.Immediate | undefined;
  const take = (): Buffer | undefined => {
    const out = batch.length > 1 ? Buffer.concat(batch, size) : batch[0];
    batch = [];
    size = 0;
    return out;
  };
  const onData = (chunk: Buffer) => {
    if (older) {
      older = false;
      if (!res.write(take()!)) ur.pause();
    }
    batch.push(chunk);
    size += chunk.length;
    turn ??= setImmediate(() => {
      turn = undefined;
      older = batch.length > 0;
    });
  };
  const onEnd = () => {
    clearImmediate(turn);
    turn = undefined;
    const last = take();
    if (last !== undefined) res.end(last);
    else res.end();
  };
  ur.on("data", onData);
  ur.once("end", onEnd);
  return () => {
    clearImmediate(turn);
    batch = [];
    ur.off("data", onData);
    ur.off("end", onEnd);
    res.off("drain", onDrain);
  };
}

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

// --- one forwarded request ---------------------------------------------------------------------------------------

/** Why the side answers a scrape itself. */
export type ForwardFailure =
  /** Node refused to write the upstream request (a header value or path it does not allow). */
  | { kind: "request"; err: Error }
  /** The dial or the request failed before an answer began. */
  | { kind: "error"; err: Error & { code?: string } }
  /** The deadline passed before an answer began. */
  | { kind: "timeout" }
  /** The upstream answered something that cannot be passed on. */
  | { kind: "invalid"; problem: AnswerProblem };

/** What a side supplies to a Forward. */
export interface ForwardSide {
  /** Makes the upstream request of attempt 0, or 1 after a stale pooled connection; `remainingMs` of the deadline. */
  open(attempt: number, remainingMs: number): http.ClientRequest;
  /** Answers the scrape itself (at most once, only before an answer began, never after the client left). */
  fail(failure: ForwardFailure, elapsedMs: number): void;
  /** The upstream's answer is valid and its head written; its body is about to be piped to the client. */
  passing?(ur: http.IncomingMessage): void;
  /** The deadline passed while an answer was being passed on: the answer is cut (the client sees a reset). */
  cut?(): void;
  /** The first attempt met a stale pooled connection; a second one follows. */
  retrying?(err: Error): void;
}

export interface ForwardOptions {
  /** How long the whole forward may take, from `started`. */
  deadlineMs: number;
  /** Date.now() when the scrape began (default: now). */
  started?: number;
  /**
   * An upstream request the scrape no longer needs (the deadline passed before its answer began, or the client
   * left): "spare" keeps its pooled connection (spareUpstream), "destroy" closes it.
   */
  abandon: "spare" | "destroy";
  /** Error codes besides ECONNRESET and EPIPE that mean a stale pooled connection (see isStaleSocket). */
  staleCodes?: readonly string[];
  /** Where a throw on the response path is logged (it ends this exchange only). */
  log?: Logger;
}

/**
 * One GET forwarded under a deadline. `start()` sends it; the side's hooks hear how it ends. At most two upstream
 * requests are made: the second only when the first met a stale pooled connection with time left.
 */
export class Forward {
  readonly #req: http.IncomingMessage;
  readonly #res: http.ServerResponse;
  readonly #opts: ForwardOptions;
  readonly #side: ForwardSide;
  readonly #started: number;
  #timer: NodeJS.Timeout | undefined;
  /** The upstream request of the latest attempt. */
  #upstream: http.ClientRequest | undefined;
  /** Its answer, once it is being passed on. */
  #answer: http.IncomingMessage | undefined;
  /** Stops passing the answer's body on (passBody). */
  #unpass: (() => void) | undefined;
  /** An answer (the upstream's or the side's) has begun: nothing else may be written. */
  #settled = false;
  /** The client left before its answer was finished: nothing is answered, and no request starts. */
  #gone = false;
  /** The upstream request was let go (spared or destroyed) because the scrape no longer needs it. */
  #abandoned = false;

  constructor(req: http.IncomingMessage, res: http.ServerResponse, opts: ForwardOptions, side: ForwardSide) {
    this.#req = req;
    this.#res = res;
    this.#opts = opts;
    this.#side = side;
    this.#started = opts.started ?? Date.now();
  }

  /** Time left until the deadline (ms; negative when it has passed). */
  get remainingMs(): number {
    return this.#opts.deadlineMs - (Date.now() - this.#started);
  }

  /** Arms the deadline and the client-gone watch, and sends the first attempt (nothing if the client already left). */
  start(): void {
    if (this.#res.destroyed || this.#req.socket.destroyed) return;
    onClientGone(this.#req, this.#res, () => this.#leave());
    this.#timer = setTimeout(() => this.#deadline(), this.remainingMs);
    this.#res.once("close", () => clearTimeout(this.#timer));
    this.#send(0);
  }

  #send(attempt: number): void {
    if (this.#gone) return; // a retry after the client left: nothing to answer, nothing to hold
    let upstream: http.ClientRequest;
    try {
      upstream = this.#side.open(attempt, this.remainingMs);
    } catch (err) {
      return this.#fail({ kind: "request", err: err as Error });
    }
    this.#upstream = upstream;
    let retrying = false;
    upstream.on("response", (ur) => {
      try {
        this.#response(upstream, ur);
      } catch (err) {
        // A bug, or input we failed to foresee: it ends this exchange only.
        this.#opts.log?.error("response path failed; connection closed", {
          what: "upstream response",
          reason: (err as Error).message,
        });
        upstream.destroy();
        this.#res.destroy();
      }
    });
    // Never asked for: a 101 with Upgrade is not an answer to a scrape (without a listener Node would just close).
    upstream.on("upgrade", (_ur, socket: Duplex) => {
      socket.destroy();
      this.#fail({ kind: "invalid", problem: { kind: "upgrade" } });
    });
    upstream.on("error", (err: Error & { code?: string }) => {
      const idleBefore =
        upstream.reusedSocket || (upstream.socket as { [DIALED_AHEAD]?: boolean } | null)?.[DIALED_AHEAD] === true;
      const stale = idleBefore && isStaleSocket(err, this.#opts.staleCodes);
      if (!this.#settled && attempt === 0 && stale && this.remainingMs > 0) {
        retrying = true;
        this.#side.retrying?.(err);
        return this.#send(1);
      }
      if (this.#settled) {
        if (!this.#res.writableEnded) this.#res.destroy();
        return;
      }
      this.#fail({ kind: "error", err });
    });
    upstream.on("close", () => {
      // Closed with neither an answer nor an error (Node does that after an unexpected upgrade): never hang.
      if (!retrying && this.#upstream === upstream) this.#fail({ kind: "invalid", problem: { kind: "no-answer" } });
    });
    upstream.end();
  }

  #response(upstream: http.ClientRequest, ur: http.IncomingMessage): void {
    const res = this.#res;
    // Cut short mid-body: the client must see the answer was incomplete. (Not after the side's own answer ended.)
    const cut = () => void (res.writableEnded || res.destroy());
    ur.on("error", cut);
    ur.on("aborted", cut);
    if (this.#settled || this.#gone) {
      // A late answer after the deadline or the client's leaving: spareUpstream drains it, or it goes.
      if (this.#opts.abandon === "destroy") ur.destroy();
      return;
    }
    const problem = answerProblem(ur.statusCode, ur.statusMessage, ur.rawHeaders);
    if (problem) {
      this.#fail({ kind: "invalid", problem });
      return void upstream.destroy(); // never back into the pool: what follows is not HTTP we understand
    }
    try {
      res.writeHead(ur.statusCode!, ur.statusMessage, passedHeaders(ur));
    } catch (err) {
      // answerProblem should have caught it; if Node still refuses, the side answers without any of it.
      for (const h of res.getHeaderNames()) res.removeHeader(h);
      res.statusMessage = "";
      this.#fail({ kind: "invalid", problem: { kind: "unwritable", message: (err as Error).message } });
      return void upstream.destroy();
    }
    this.#settled = true; // the deadline still runs: a body that trickles past it is cut
    this.#answer = ur;
    this.#side.passing?.(ur);
    this.#unpass = passBody(ur, res);
  }

  #deadline(): void {
    const err = new ScrapezError(AppErrorCodes.SCRAPE_TIMEOUT, "scrape timeout");
    if (this.#settled) {
      // An answer already passing is cut (its connection with it); the side's own answer is complete by now.
      this.#upstream?.destroy(err);
      this.#side.cut?.();
      if (!this.#res.writableEnded) this.#res.destroy();
      return;
    }
    this.#abandon(undefined, err);
    this.#fail({ kind: "timeout" });
  }

  #leave(): void {
    this.#gone = true;
    clearTimeout(this.#timer);
    this.#abandon(this.#answer, new ScrapezError(AppErrorCodes.SCRAPE_TIMEOUT, "the client left"));
  }

  /** Lets the upstream request go, once: its connection spared or closed (ForwardOptions.abandon). */
  #abandon(answer: http.IncomingMessage | undefined, err: Error): void {
    const upstream = this.#upstream;
    if (!upstream || this.#abandoned) return;
    this.#abandoned = true;
    this.#unpass?.();
    if (this.#opts.abandon === "spare") spareUpstream(upstream, answer, err);
    else upstream.destroy(err);
  }

  #fail(failure: ForwardFailure): void {
    if (this.#settled || this.#gone) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#side.fail(failure, Date.now() - this.#started);
  }
}
