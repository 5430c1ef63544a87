/**
 * One target's keep-alive overlay connections, for the proxy's forwards (./overlay-forward.ts): at most
 * `maxSockets` open or being dialed, the most recently used idle one taken first (spare ones idle out after
 * `keepAliveMs`), callers waiting in turn when all are busy. A connection goes back only when its answer ended
 * cleanly (the forward says so); an idle one the far end closes, or sends bytes on, is dropped. What the SDK's
 * http.Agent did for the proxy, without an HTTP client on top; the proxy's cache of pools is ./agent.ts.
 */
import type { Duplex } from "node:stream";
import { DIALED_AHEAD } from "../common/forward.js";

/** A connection for one request; `reused` when it may have died quietly while idle (pooled, or dialed ahead). */
export interface Lease {
  conn: Duplex;
  reused: boolean;
}

/** Called once: with a connection, or with the dial's error. */
export type Grant = (err: Error | undefined, lease?: Lease) => void;

interface Waiter {
  grant: Grant;
  /** The dial's time limit if one is made for this caller (its time left, measured when the dial starts). */
  dialTimeoutMs: () => number;
}

interface IdleState {
  since: number;
  drop: () => void;
  gone: () => void;
}

export interface OverlayPoolOptions {
  maxSockets: number;
  keepAliveMs: number;
}

export class OverlayPool {
  readonly #dial: (timeoutMs: number) => Promise<Duplex>;
  #max: number;
  #keepAliveMs: number;
  /** Idle connections, the most recently released last. */
  readonly #idle: Duplex[] = [];
  readonly #idleState = new WeakMap<Duplex, IdleState>();
  readonly #waiting: Waiter[] = [];
  /** Every open connection, busy or idle (destroy() closes them all). */
  readonly #all = new Set<Duplex>();
  /** Connections open or being dialed, idle ones included. */
  #open = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Retired (out of the proxy's cache): nothing more is kept idle. */
  #retired = false;
  #closed = false;
  /** Date.now() of the last request (the cache drops pools unused for long). */
  lastUsed = Date.now();

  /** `dial` opens one connection to the target within `timeoutMs`. */
  constructor(dial: (timeoutMs: number) => Promise<Duplex>, opts: OverlayPoolOptions) {
    this.#dial = dial;
    this.#max = opts.maxSockets;
    this.#keepAliveMs = opts.keepAliveMs;
  }

  /**
   * A connection for one request: an idle one, a new dial while fewer than `maxSockets` are open, or the next one
   * released. `cancel()` withdraws a caller still waiting (its scrape ended first); a dial already made for it still
   * completes, and its connection is released to the pool by the caller's grant.
   */
  acquire(dialTimeoutMs: () => number, grant: Grant): { cancel: () => void } {
    this.lastUsed = Date.now();
    if (this.#closed) {
      grant(poolClosed());
      return { cancel: () => undefined };
    }
    const idle = this.#takeIdle();
    if (idle) {
      grant(undefined, { conn: idle, reused: true });
      return { cancel: () => undefined };
    }
    const w: Waiter = { grant, dialTimeoutMs };
    if (this.#open < this.#max) {
      this.#connect(w);
      return { cancel: () => undefined };
    }
    this.#waiting.push(w);
    return {
      cancel: () => {
        const i = this.#waiting.indexOf(w);
        if (i >= 0) this.#waiting.splice(i, 1);
      },
    };
  }

  /** Gives back a connection whose answer ended cleanly: to a waiting caller, or idle. */
  release(conn: Duplex): void {
    if (this.#closed || this.#retired || conn.destroyed || !conn.writable || conn.readableEnded) {
      return void conn.destroy();
    }
    const w = this.#waiting.shift();
    if (w) return w.grant(undefined, { conn, reused: true });
    // Bytes nobody asked for, a half-close or an error while idle: the connection goes.
    const drop = () => conn.destroy();
    const gone = () => this.#forget(conn);
    this.#idleState.set(conn, { since: Date.now(), drop, gone });
    conn.on("data", drop);
    conn.on("end", drop);
    conn.on("error", drop);
    conn.once("close", gone);
    // Read while idle (a forward may have paused it for a slow client): so its close or stray bytes are seen now.
    conn.resume();
    this.#idle.push(conn);
    this.#arm();
  }

  /** Nothing open, being dialed or waiting: dropping this pool loses nothing. */
  get idle(): boolean {
    return this.#open === 0 && this.#waiting.length === 0;
  }

  /** Connections open or being dialed, and how many of them are idle. */
  get counts(): { open: number; idle: number; waiting: number } {
    return { open: this.#open, idle: this.#idle.length, waiting: this.#waiting.length };
  }

  /** A reloaded config's pool settings: they apply to the next request and to connections as they go idle. */
  configure(opts: OverlayPoolOptions): void {
    this.#max = opts.maxSockets;
    this.#keepAliveMs = opts.keepAliveMs;
    while (this.#waiting.length > 0 && this.#open < this.#max) this.#connect(this.#waiting.shift()!);
  }

  /**
   * Out of the cache while requests still use it: its idle connections close now, and each busy one when its
   * answer ends, so nothing is left behind once the last request is done.
   */
  retire(): void {
    this.#retired = true;
    for (const c of this.#idle.splice(0)) this.#destroyIdle(c);
  }

  /**
   * Closes every connection, idle or busy (a request on one fails as it would on a reset); waiting callers get an
   * error.
   */
  destroy(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const w of this.#waiting.splice(0)) w.grant(poolClosed());
    for (const c of this.#idle.splice(0)) this.#destroyIdle(c);
    for (const c of this.#all) c.destroy();
  }

  #takeIdle(): Duplex | undefined {
    for (;;) {
      const c = this.#idle.pop();
      if (!c) return undefined;
      const st = this.#idleState.get(c);
      if (st) {
        c.off("data", st.drop);
        c.off("end", st.drop);
        c.off("error", st.drop);
        c.off("close", st.gone);
        this.#idleState.delete(c);
      }
      if (!c.destroyed && c.writable && !c.readableEnded) return c;
      c.destroy();
    }
  }

  #destroyIdle(c: Duplex): void {
    const st = this.#idleState.get(c);
    if (st) c.off("close", st.gone);
    this.#idleState.delete(c);
    c.destroy();
  }

  #forget(c: Duplex): void {
    const i = this.#idle.indexOf(c);
    if (i >= 0) this.#idle.splice(i, 1);
    this.#idleState.delete(c);
  }

  /** One timer per pool, for its oldest idle connection (the first in #idle): no timer per request. */
  #arm(): void {
    if (this.#timer !== undefined || this.#idle.length === 0) return;
    const oldest = this.#idleState.get(this.#idle[0]!)?.since ?? Date.now();
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        const now = Date.now();
        while (this.#idle.length > 0) {
          const c = this.#idle[0]!;
          if (now - (this.#idleState.get(c)?.since ?? 0) < this.#keepAliveMs) break;
          this.#idle.shift();
          this.#destroyIdle(c);
        }
        this.#arm();
      },
      Math.max(1, oldest + this.#keepAliveMs - Date.now()),
    );
    this.#timer.unref();
  }

  #connect(w: Waiter): void {
    this.#open++;
    let counted = true;
    let conn: Duplex | undefined;
    const free = () => {
      if (!counted) return;
      counted = false;
      if (conn) this.#all.delete(conn);
      this.#open--;
      // A place freed: the next waiting caller gets a new dial.
      const next = !this.#closed && this.#open < this.#max ? this.#waiting.shift() : undefined;
      if (next) this.#connect(next);
    };
    this.#dial(Math.max(1, w.dialTimeoutMs())).then(
      (c) => {
        conn = c;
        if (this.#closed) {
          c.destroy();
          free();
          return w.grant(poolClosed());
        }
        this.#all.add(c);
        c.once("close", free);
        if (c.destroyed) free();
        const ahead = (c as Duplex & { [DIALED_AHEAD]?: boolean })[DIALED_AHEAD] === true;
        w.grant(undefined, { conn: c, reused: ahead });
      },
      (err: Error) => {
        free();
        w.grant(err);
      },
    );
  }
}

/** What a caller gets from a closed pool: an error a request treats as it would a reset. */
function poolClosed(): Error & { code: string } {
  return Object.assign(new Error("the connection pool is closed"), { code: "ECONNRESET" });
}
