/**
 * Deadlines for overlay connections handed to an http.Server that never listens. Node arms its own header, request
 * and keep-alive timeouts only for a server that listens (and only on sockets with working timers), so the bind side
 * enforces its own, per connection:
 *
 * - headers: the request head must be complete within `headersTimeoutMs` of its first byte (on a new connection or
 *   after an idle spell); otherwise the dialer gets a 408 and the connection is closed;
 * - request: each exchange (head received to last response byte) must end within `requestTimeoutMs`;
 * - idle: a connection with nothing in flight is closed after `idleTimeoutMs`: a kept-alive one, and a new one that
 *   has sent nothing yet (a proxy dials ahead of a target's first scrape and holds the connection until it comes);
 * - at most MAX_IN_FLIGHT pipelined requests per connection.
 */
import { rawAnswer } from "../common/answer.js";
import type http from "node:http";
import type { Duplex } from "node:stream";

export interface ConnLimits {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  idleTimeoutMs: number;
}

export type Expiry = "headers_timeout" | "request_timeout" | "idle_timeout" | "too_many_pipelined";

/** Pipelined requests one connection may have in flight (Prometheus sends one at a time). */
export const MAX_IN_FLIGHT = 8;

/** Grace for a 408 to leave before the connection is destroyed regardless. */
const CLOSE_GRACE_MS = 1_000;

interface State {
  conn: Duplex;
  timer: NodeJS.Timeout | undefined;
  phase: "head" | "idle" | "busy";
  inFlight: number;
  done: boolean;
}

export class ConnGuard {
  readonly #states = new WeakMap<object, State>();
  readonly #limits: () => ConnLimits;
  readonly #onExpire: (kind: Expiry, conn: Duplex) => void;
  readonly #describe: () => string;

  /**
   * @param limits read at each arming, so a reload applies to connections already open
   * @param describe names the service in the 408 body
   */
  constructor(
    server: http.Server,
    limits: () => ConnLimits,
    onExpire: (kind: Expiry, conn: Duplex) => void,
    describe: () => string,
  ) {
    this.#limits = limits;
    this.#onExpire = onExpire;
    this.#describe = describe;
    server.prependListener("request", (req: http.IncomingMessage, res: http.ServerResponse) => this.#request(req, res));
  }

  /** Starts watching a connection; call right after handing it to the server. */
  add(conn: Duplex): void {
    const s: State = { conn, timer: undefined, phase: "idle", inFlight: 0, done: false };
    this.#states.set(conn, s);
    this.#arm(s, "idle");
    conn.on("data", () => {
      if (s.phase === "idle") this.#arm(s, "head");
    });
    conn.once("close", () => {
      s.done = true;
      clearTimeout(s.timer);
    });
  }

  #arm(s: State, phase: "head" | "idle" | "busy"): void {
    clearTimeout(s.timer);
    s.timer = undefined;
    s.phase = phase;
    if (s.done || phase === "busy") return;
    const l = this.#limits();
    s.timer =
      phase === "head"
        ? setTimeout(() => this.#headTimeout(s, l.headersTimeoutMs), l.headersTimeoutMs)
        : setTimeout(() => this.#expire(s, "idle_timeout"), l.idleTimeoutMs);
    s.timer.unref();
  }

  #request(req: http.IncomingMessage, res: http.ServerResponse): void {
    const s = this.#states.get(req.socket);
    if (!s || s.done) return;
    s.inFlight++;
    if (s.inFlight > MAX_IN_FLIGHT) return this.#expire(s, "too_many_pipelined");
    this.#arm(s, "busy");
    const ms = this.#limits().requestTimeoutMs;
    const t = setTimeout(() => this.#expire(s, "request_timeout"), ms);
    t.unref();
    res.once("close", () => {
      clearTimeout(t);
      s.inFlight--;
      if (s.inFlight === 0 && !s.done) this.#arm(s, "idle");
    });
  }

  #headTimeout(s: State, ms: number): void {
    if (s.done) return;
    const text = `scrapez bind: ${this.#describe()}: the request head was not complete within ${ms / 1000}s`;
    const c = s.conn;
    this.#expire(s, "headers_timeout", () => {
      c.end(rawAnswer(408, text));
      setTimeout(() => c.destroy(), CLOSE_GRACE_MS).unref();
    });
  }

  #expire(s: State, kind: Expiry, close: () => void = () => s.conn.destroy()): void {
    if (s.done) return;
    s.done = true;
    clearTimeout(s.timer);
    try {
      this.#onExpire(kind, s.conn);
    } finally {
      close();
    }
  }
}
