/**
 * One scrape forwarded over the overlay under a deadline, as a relay: the request head is written on a pooled
 * overlay connection (./overlay-pool.ts) as bytes, and the answer's head is read and checked by src/common/http1.ts
 * and written to Prometheus through the ServerResponse, its body's bytes passed on as they came (chunk framing
 * included): no ClientRequest, http.Agent or IncomingMessage, and no re-chunking in between. The proxy's Node
 * server still parses what Prometheus sends (auth, the deadline header, keep-alive, drain).
 *
 * What a Forward promises (the proxy's scrapes and its tests rely on each):
 * - one retry, on a fresh connection, when a pooled (or dialed-ahead) connection turns out to have died while idle;
 * - a deadline: before an answer began, the side answers the timeout; while one is passing, it is cut;
 * - a scrape that ends before its answer did (the deadline, or Prometheus left) spares the connection: the late
 *   answer is read to its end and discarded within LATE_ANSWER_MS, and the connection goes back to the pool
 *   (src/common/forward.ts LATE_ANSWER_MS says why);
 * - an answer that cannot be passed on is the side's 502, and its connection never goes back to the pool.
 */
import type { Duplex } from "node:stream";
import { onClientGone } from "../common/client-gone.js";
import {
  LATE_ANSWER_MS,
  answerProblem,
  hopByHopRaw,
  isStaleSocket,
  keepsAlive,
  type AnswerProblem,
  type ForwardFailure,
} from "../common/forward.js";
import {
  BodyScanner,
  HeadReader,
  Http1Error,
  checkAnswerStart,
  fieldValues,
  parseResponseHead,
  responseFraming,
  type Framing,
  type ResponseHead,
} from "../common/http1.js";
import type { RequestLike, ResponseLike } from "../common/http-like.js";
import type { Logger } from "../common/log.js";
import type { Lease, OverlayPool } from "./overlay-pool.js";

/** What a side supplies to a Forward. */
export interface ForwardSide {
  /** Answers the scrape itself (at most once, only before an answer began, never after the client left). */
  fail(failure: ForwardFailure, elapsedMs: number): void;
  /** A valid answer's head is about to be written; may return a sink for the body's data as it passes. */
  passing?(head: ResponseHead): ((data: Buffer) => void) | undefined;
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
  /** A dial's own limit (the time left until the deadline, when shorter, is used instead). */
  dialTimeoutMs: number;
  /** Error codes besides ECONNRESET and EPIPE that mean a stale pooled connection (see isStaleSocket). */
  staleCodes?: readonly string[];
  /** Where a throw on the answer path is logged (it ends this exchange only). */
  log?: Logger;
}

/** Interim (1xx) answers skipped before the final one, at most (Node's client skipped any number). */
const MAX_INTERIM = 8;

/**
 * One GET (or HEAD) forwarded: `start()` sends it, the side's hooks hear how it ends. At most two requests are
 * sent: the second only when the first met a stale pooled connection with time left.
 */
export class Forward {
  readonly #req: RequestLike;
  readonly #res: ResponseLike;
  readonly #pool: OverlayPool;
  readonly #request: Buffer;
  readonly #opts: ForwardOptions;
  readonly #side: ForwardSide;
  readonly #started: number;
  #timer: NodeJS.Timeout | undefined;
  #cancelWait: (() => void) | undefined;
  /** The connection of the attempt under way, and what stops listening to it. */
  #conn: Duplex | undefined;
  #detach: (() => void) | undefined;
  /** An answer (the upstream's or the side's) has begun: nothing else may be written. */
  #settled = false;
  /** The upstream's answer is being passed on (its head written). */
  #passing = false;
  /** The client left before its answer was finished: nothing is answered, and no request starts. */
  #gone = false;
  /** The scrape no longer needs the answer: it is read to its end and discarded (the connection spared). */
  #abandoned = false;
  #late: NodeJS.Timeout | undefined;
  /** Resumes a connection paused for a client that reads slowly (the answer is no longer passed on). */
  #unpause: (() => void) | undefined;

  /** `request` is the request head as the overlay gets it (src/common/forward.ts requestHead). */
  constructor(
    req: RequestLike,
    res: ResponseLike,
    pool: OverlayPool,
    request: Buffer,
    opts: ForwardOptions,
    side: ForwardSide,
  ) {
    this.#req = req;
    this.#res = res;
    this.#pool = pool;
    this.#request = request;
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
    if (this.#gone) return;
    const wait = this.#pool.acquire(
      () => Math.min(this.#opts.dialTimeoutMs, this.remainingMs),
      (err, lease) => {
        this.#cancelWait = undefined;
        if (err || !lease) return this.#fail({ kind: "error", err: err ?? new Error("no connection") });
        // The scrape ended while this connection was being dialed or waited for: unused, it goes to the pool.
        if (this.#settled || this.#gone) return this.#pool.release(lease.conn);
        try {
          this.#relay(lease, attempt);
        } catch (e) {
          // A bug, not a peer's bytes (the dial's promise would otherwise carry the throw away): this scrape only.
          this.#opts.log?.error("forward failed; connection closed", { what: "request", reason: String(e) });
          lease.conn.destroy();
          this.#res.destroy();
        }
      },
    );
    if (!this.#conn) this.#cancelWait = wait.cancel;
  }

  #relay(lease: Lease, attempt: number): void {
    const conn = lease.conn;
    const res = this.#res;
    this.#conn = conn;
    let reader = new HeadReader();
    let scanner: BodyScanner | undefined;
    let sink: ((data: Buffer) => void) | undefined;
    /** The body goes on as its bytes came (chunk framing included); else as its data, framed by Node. */
    let raw = true;
    let reusable = true;
    let got = 0;
    let checked = 0;
    let interim = 0;
    let paused = false;
    const resume = () => {
      paused = false;
      conn.resume();
    };
    this.#unpause = () => {
      res.off("drain", resume);
      if (paused) resume();
    };
    const write = (b: Buffer) => {
      if (this.#abandoned || res.write(b) || paused) return;
      paused = true;
      conn.pause();
      res.once("drain", resume);
    };
    const finish = () => {
      detach();
      if (reusable) this.#pool.release(conn);
      else conn.destroy();
      if (!this.#abandoned) res.end();
    };
    const stale = () =>
      !this.#passing && !this.#abandoned && attempt === 0 && lease.reused && got === 0 && this.remainingMs > 0;
    const onError = (err: Error & { code?: string }) => {
      detach();
      conn.destroy();
      if (stale() && isStaleSocket(err, this.#opts.staleCodes)) {
        this.#side.retrying?.(err);
        return this.#send(1);
      }
      if (this.#passing) return void (res.writableEnded || res.destroy());
      this.#fail({ kind: "error", err });
    };
    const onEnd = () => {
      if (scanner?.framing.kind === "close") {
        reusable = false;
        return finish();
      }
      if (stale()) {
        detach();
        conn.destroy();
        this.#side.retrying?.(new Error("the pooled connection was closed"));
        return this.#send(1);
      }
      const why = got === 0 ? "the connection closed before an answer" : "the connection closed mid-answer";
      onError(Object.assign(new Error(why), { code: "ECONNRESET" }));
    };
    const onData = (piece: Buffer) => {
      got += piece.length;
      try {
        if (!scanner) {
          let found: { head: Buffer; rest: Buffer } | undefined;
          let head: ResponseHead | undefined;
          for (;;) {
            if (checked < 5) checked = checkAnswerStart(piece, checked);
            found = reader.push(piece);
            if (!found) return;
            head = parseResponseHead(found.head);
            // An interim answer (100 Continue, 103 Early Hints) precedes the final one: skipped, as Node's client did.
            if (head.status < 100 || head.status >= 200 || head.status === 101 || ++interim > MAX_INTERIM) break;
            reader = new HeadReader();
            checked = 0;
            piece = found.rest;
            if (piece.length === 0) return;
          }
          const problem = answerCheck(head);
          if (problem) return this.#invalid(problem);
          const framing = responseFraming(this.#req.method ?? "GET", head.status, head.headers);
          scanner = new BodyScanner(framing);
          if (framing.kind === "close" || !keepsAlive(head.minor, head.headers)) reusable = false;
          if (!this.#abandoned) {
            // An HTTP/1.0 client cannot read chunks: it gets the data, framed by Node (by the close).
            raw = framing.kind !== "chunked" || this.#req.httpVersion === "1.1";
            if (!this.#writeHead(head, framing, raw)) return;
            const status = this.#side.passing?.(head);
            sink = raw ? status : status ? (d) => (status(d), write(d)) : write;
          }
          piece = found.rest;
        }
        const n = scanner.scan(piece, this.#abandoned ? undefined : sink);
        if (raw && n > 0) write(n === piece.length ? piece : piece.subarray(0, n));
        if (n < piece.length) reusable = false; // bytes after the answer: not HTTP we understand
        if (scanner.done) finish();
      } catch (err) {
        if (err instanceof Http1Error) return onError(Object.assign(new Error(err.message), { code: err.code }));
        // A bug, or input we failed to foresee: it ends this exchange only.
        this.#opts.log?.error("answer path failed; connection closed", {
          what: "overlay answer",
          reason: (err as Error).message,
        });
        detach();
        conn.destroy();
        res.destroy();
      }
    };
    const detach = () => {
      conn.off("data", onData);
      conn.off("error", onError);
      conn.off("end", onEnd);
      conn.off("close", onEnd);
      res.off("drain", resume);
      clearTimeout(this.#late);
      if (this.#conn === conn) {
        this.#conn = undefined;
        this.#detach = undefined;
        this.#unpause = undefined;
      }
    };
    this.#detach = detach;
    conn.on("data", onData);
    conn.on("error", onError);
    conn.on("end", onEnd);
    conn.on("close", onEnd);
    // Closed by the far end while it waited (our writing side ends at once, its end of stream only when read): as
    // stale as a reset, and found before a write that would go nowhere.
    if (!conn.writable) return onEnd();
    conn.write(this.#request);
    conn.resume();
  }

  /** Writes the answer's head (hop-by-hop headers out, our framing in); false (and the side's 502) if Node refuses. */
  #writeHead(head: ResponseHead, framing: Framing, raw: boolean): boolean {
    const res = this.#res;
    const drop = hopByHopRaw(head.headers);
    const out: string[] = [];
    const h = head.headers;
    for (let i = 0; i + 1 < h.length; i += 2) if (!drop.has(h[i]!.toLowerCase())) out.push(h[i]!, h[i + 1]!);
    const chunks = framing.kind === "chunked" && raw;
    if (chunks) out.push("Transfer-Encoding", "chunked");
    try {
      res.writeHead(head.status, head.reason, out);
    } catch (err) {
      // answerProblem should have caught it; if Node still refuses, the side answers without any of it.
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      res.statusMessage = "";
      this.#invalid({ kind: "unwritable", message: (err as Error).message });
      return false;
    }
    // The body's own chunk framing goes on as it came: Node must not frame it again (it set chunkedEncoding for
    // the header above; its end() then writes no terminator of its own, the body's is in the bytes).
    if (chunks) (res as unknown as { chunkedEncoding: boolean }).chunkedEncoding = false;
    this.#settled = true; // the deadline still runs: a body that trickles past it is cut
    this.#passing = true;
    return true;
  }

  #invalid(problem: AnswerProblem): void {
    this.#dropConn(); // never back into the pool: what follows is not HTTP we understand
    this.#fail({ kind: "invalid", problem });
  }

  /** Lets the current connection go, unheard. */
  #dropConn(): void {
    const conn = this.#conn;
    this.#detach?.();
    conn?.destroy();
  }

  #deadline(): void {
    if (this.#passing) {
      // An answer already passing is cut (its connection with it); the side's own answer is complete by now.
      this.#dropConn();
      this.#side.cut?.();
      if (!this.#res.writableEnded) this.#res.destroy();
      return;
    }
    this.#abandon();
    this.#fail({ kind: "timeout" });
  }

  #leave(): void {
    this.#gone = true;
    clearTimeout(this.#timer);
    this.#abandon();
  }

  /** The scrape no longer needs the answer: a wait for a connection is withdrawn, a late answer read and dropped. */
  #abandon(): void {
    if (this.#abandoned) return;
    this.#abandoned = true;
    this.#cancelWait?.();
    const conn = this.#conn;
    if (!conn) return;
    this.#unpause?.();
    this.#late = setTimeout(() => this.#dropConn(), LATE_ANSWER_MS);
    this.#late.unref();
  }

  #fail(failure: ForwardFailure): void {
    if (this.#settled || this.#gone) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#side.fail(failure, Date.now() - this.#started);
  }
}

/** Why an answer cannot be passed on (answerProblem, and a 101 with Upgrade to a GET that asked for none). */
function answerCheck(head: ResponseHead): AnswerProblem | undefined {
  if (head.status === 101 && fieldValues(head.headers, "upgrade").length > 0) return { kind: "upgrade" };
  return answerProblem(head.status, head.reason, head.headers);
}
