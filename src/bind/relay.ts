/**
 * The bind's relay: an overlay connection's HTTP/1.1 requests read by src/common/http1.ts, one at a time, each
 * answered by a RelayExchange (./relay-exchange.ts), in place of an http.Server that never listens. Its deadlines
 * are ./guard.ts's: the head within headersTimeoutMs of its first byte (else 408), each exchange within
 * requestTimeoutMs, an idle connection closed after idleTimeoutMs. Requests arriving while one is answered
 * (pipelined) wait their turn, at most MAX_IN_FLIGHT with it (more close the connection); a request with a body is
 * refused, as a scrape has none.
 */
import { rawAnswer } from "../common/answer.js";
import { HeadReader, Http1Error, parseRequestHead, requestFraming, type RequestHead } from "../common/http1.js";
import type { OverlayConnection } from "../overlay/types.js";
import { MAX_IN_FLIGHT, type ConnLimits, type Expiry } from "./guard.js";
import { RelayExchange, type RelayExchangeDeps, type RelayTarget } from "./relay-exchange.js";

export interface RelayConnectionDeps extends RelayExchangeDeps {
  limits: () => ConnLimits;
  expired: (kind: Expiry) => void;
  /** The exchange began (its head is complete) and when it ends: for slots, in-flight tracking and a graceful stop. */
  started: (ex: RelayExchange) => void;
  /** Names the service in our answers. */
  describe: () => string;
}

const enum Phase {
  /** Nothing in flight, no byte of a next request yet: the idle deadline runs. */
  Idle,
  /** A request head has begun: the headers deadline runs. */
  Head,
  /** A request is being answered: the request deadline runs; reading is paused. */
  Busy,
  Closed,
}

/** Grace for a last answer to leave before the connection is destroyed regardless. */
const CLOSE_GRACE_MS = 1_000;

export class RelayConnection {
  readonly #conn: OverlayConnection;
  readonly #rt: () => RelayTarget;
  readonly #deps: RelayConnectionDeps;
  readonly #reader = new HeadReader();
  #phase = Phase.Idle;
  #timer: NodeJS.Timeout | undefined;
  #exchange: RelayExchange | undefined;
  /** Requests read while one is answered (pipelined), at most MAX_IN_FLIGHT with it. */
  readonly #queue: RequestHead[] = [];
  /** The dialer ended its side: no request follows those already read. */
  #ending = false;

  constructor(conn: OverlayConnection, rt: () => RelayTarget, deps: RelayConnectionDeps) {
    this.#conn = conn;
    this.#rt = rt;
    this.#deps = deps;
    conn.on("data", (d: Buffer) => this.#onData(d));
    conn.once("end", () => this.#onEnd());
    conn.once("close", () => this.#closed());
    this.#arm(Phase.Idle);
  }

  #onData(d: Buffer): void {
    if (this.#phase === Phase.Closed) return;
    if (this.#phase === Phase.Idle) this.#arm(Phase.Head);
    try {
      let piece: Buffer | undefined = d;
      while (piece) {
        const found = this.#reader.push(piece);
        if (!found) break;
        const req = parseRequestHead(found.head);
        const framing = requestFraming(req.headers);
        if (framing.kind !== "none" && !(framing.kind === "length" && framing.length === 0)) {
          throw new Http1Error("framing", "HPE_UNEXPECTED_CONTENT_LENGTH", "the request has a body");
        }
        this.#queue.push(req);
        if (this.#queue.length + (this.#exchange ? 1 : 0) > MAX_IN_FLIGHT) return this.#expire("too_many_pipelined");
        piece = found.rest.length > 0 ? found.rest : undefined;
      }
    } catch (err) {
      if (!(err instanceof Http1Error)) {
        // A bug, or input we failed to foresee: it ends this connection only.
        this.#deps.log.error("relay failed; connection closed", { what: "request", reason: String(err) });
        return void this.#conn.destroy();
      }
      // While an answer is under way a one-line answer cannot follow it: the connection just closes.
      if (this.#exchange) return void this.#conn.destroy();
      const status = err.reason === "head-too-large" ? 431 : 400;
      return this.#refuse(
        status,
        err.reason === "framing"
          ? `scrapez bind: ${err.message}: a scrape is a GET or HEAD without a body (${err.code})`
          : `scrapez bind: malformed HTTP request (${err.code})`,
      );
    }
    this.#next();
  }

  /**
   * The dialer sent all it will: a head it left unfinished is answered 400 (as Node's parser did); requests
   * already read are answered, then the connection closes.
   */
  #onEnd(): void {
    this.#ending = true;
    if (this.#phase === Phase.Closed) return;
    if (this.#reader.buffered > 0) {
      if (this.#exchange) return void this.#conn.destroy();
      return this.#refuse(400, "scrapez bind: malformed HTTP request (HPE_INVALID_EOF_STATE)");
    }
    if (!this.#exchange && this.#queue.length === 0) this.#close();
  }

  /**
   * Ends our side after what was written (an answer may still be on its way to a slow dialer, so it is not cut);
   * a dialer that never ends its side is closed after the idle deadline.
   */
  #close(): void {
    this.#phase = Phase.Closed;
    clearTimeout(this.#timer);
    this.#conn.end();
    // Cleared when the connection closes (#closed), so closed connections hold no timer.
    this.#timer = setTimeout(() => this.#conn.destroy(), this.#deps.limits().idleTimeoutMs);
    this.#timer.unref();
  }

  /** Starts the next queued request when none is being answered. */
  #next(): void {
    if (this.#exchange || this.#phase === Phase.Closed) return;
    const req = this.#queue.shift();
    if (!req) {
      if (this.#reader.buffered === 0) this.#arm(Phase.Idle);
      return;
    }
    this.#begin(new RelayExchange(this.#conn, this.#rt(), req, this.#deps));
  }

  #begin(ex: RelayExchange): void {
    this.#exchange = ex;
    clearTimeout(this.#timer);
    this.#phase = Phase.Busy;
    const ms = this.#deps.limits().requestTimeoutMs;
    this.#timer = setTimeout(() => this.#expire("request_timeout"), ms);
    this.#timer.unref();
    ex.once("close", () => this.#ended(ex));
    this.#deps.started(ex);
    try {
      ex.start();
    } catch (err) {
      this.#deps.log.error("relay failed; connection closed", { what: "exchange", reason: String(err) });
      this.#conn.destroy();
    }
  }

  #ended(ex: RelayExchange): void {
    if (this.#exchange !== ex) return;
    this.#exchange = undefined;
    if (this.#phase === Phase.Closed) return;
    clearTimeout(this.#timer);
    if (!ex.keepAlive || (this.#ending && this.#queue.length === 0)) return this.#close();
    this.#phase = this.#reader.buffered > 0 ? Phase.Head : Phase.Idle;
    if (this.#queue.length === 0) this.#arm(this.#phase);
    this.#next();
  }

  #arm(phase: Phase): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#phase = phase;
    if (phase === Phase.Busy || phase === Phase.Closed) return;
    const l = this.#deps.limits();
    this.#timer =
      phase === Phase.Head
        ? setTimeout(
            () =>
              this.#refuse(
                408,
                `scrapez bind: ${this.#deps.describe()}: the request head was not complete within ${l.headersTimeoutMs / 1000}s`,
                "headers_timeout",
              ),
            l.headersTimeoutMs,
          )
        : setTimeout(() => this.#expire("idle_timeout"), l.idleTimeoutMs);
    this.#timer.unref();
  }

  /** A one-line answer of ours, then the connection closes (what comes next on it cannot be read). */
  #refuse(status: number, text: string, expiry?: Expiry): void {
    if (this.#phase === Phase.Closed) return;
    this.#phase = Phase.Closed;
    clearTimeout(this.#timer);
    if (expiry) this.#deps.expired(expiry);
    this.#conn.end(rawAnswer(status, text));
    setTimeout(() => this.#conn.destroy(), CLOSE_GRACE_MS).unref();
  }

  #expire(kind: Expiry): void {
    if (this.#phase === Phase.Closed) return;
    this.#phase = Phase.Closed;
    clearTimeout(this.#timer);
    this.#deps.expired(kind);
    this.#conn.destroy();
  }

  #closed(): void {
    this.#phase = Phase.Closed;
    clearTimeout(this.#timer);
    this.#exchange?.abort();
  }
}
