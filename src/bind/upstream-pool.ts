/**
 * A bound target's keep-alive connections to its exporter, for the relay (./relay.ts): plain TCP or TLS sockets,
 * at most `max` open, the most recently used idle one taken first, callers waiting in turn when all are busy. A
 * socket goes back to the pool only when its answer ended cleanly (the relay says so); an idle one the exporter
 * closes is dropped when it does. What http.Agent did for the bind, without an HTTP client on top.
 */
import net from "node:net";
import tls from "node:tls";

export interface UpstreamSocketOptions {
  hostname: string;
  port: number;
  /** TLS to the exporter, with these options (CA, client certificate, verification, server name). */
  tls?: tls.ConnectionOptions;
}

/** A socket from the pool; `reused` when it served an answer before (so it may have died quietly while idle). */
export interface Lease {
  socket: net.Socket;
  reused: boolean;
}

interface Waiter {
  grant: (lease: Lease) => void;
}

export class UpstreamPool {
  readonly #opts: UpstreamSocketOptions;
  readonly #max: number;
  readonly #idle: net.Socket[] = [];
  /** Each idle socket's own listeners (removed when it is taken; Node's own listeners are never touched). */
  readonly #idleListeners = new WeakMap<net.Socket, { close: () => void; drop: () => void }>();
  readonly #waiting: Waiter[] = [];
  /** Sockets open or being opened, idle ones included. */
  #open = 0;
  #closed = false;

  constructor(opts: UpstreamSocketOptions, max = 4) {
    this.#opts = opts;
    this.#max = max;
  }

  /**
   * A socket for one request: an idle one, a new one while fewer than `max` are open, or the next one released.
   * `cancel()` withdraws a request still waiting (its scrape ended first).
   */
  acquire(grant: (lease: Lease) => void): { cancel: () => void } {
    const idle = this.#idle.pop();
    if (idle) {
      const l = this.#idleListeners.get(idle);
      if (l) {
        idle.off("close", l.close);
        idle.off("error", l.drop);
        idle.off("data", l.drop);
      }
      grant({ socket: idle, reused: true });
      return { cancel: () => undefined };
    }
    if (this.#open < this.#max) {
      grant({ socket: this.#connect(), reused: false });
      return { cancel: () => undefined };
    }
    const w: Waiter = { grant };
    this.#waiting.push(w);
    return {
      cancel: () => {
        const i = this.#waiting.indexOf(w);
        if (i >= 0) this.#waiting.splice(i, 1);
      },
    };
  }

  /** Gives back a socket whose answer ended cleanly: to a waiting caller, or idle. */
  release(socket: net.Socket): void {
    if (this.#closed || socket.destroyed || !socket.writable) return void socket.destroy();
    const w = this.#waiting.shift();
    if (w) return w.grant({ socket, reused: true });
    // An error, or bytes from an exporter with no request in flight (an answer to nothing): the socket goes.
    const drop = () => socket.destroy();
    const close = () => {
      const i = this.#idle.indexOf(socket);
      if (i >= 0) this.#idle.splice(i, 1);
    };
    this.#idleListeners.set(socket, { close, drop });
    socket.on("error", drop);
    socket.on("data", drop);
    socket.once("close", close);
    socket.setTimeout(0);
    this.#idle.push(socket);
  }

  /** Closes every socket; waiting callers are never granted one. */
  destroy(): void {
    this.#closed = true;
    this.#waiting.length = 0;
    for (const s of this.#idle.splice(0)) s.destroy();
  }

  #connect(): net.Socket {
    const { hostname, port } = this.#opts;
    const sni = this.#opts.tls?.servername ?? servername(hostname);
    const socket = this.#opts.tls
      ? tls.connect({ ...this.#opts.tls, host: hostname, port, ...(sni ? { servername: sni } : {}) })
      : net.connect({ host: hostname, port });
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    this.#open++;
    socket.once("close", () => {
      this.#open--;
      // A slot freed: the next waiting caller gets a new socket.
      const w = !this.#closed && this.#open < this.#max ? this.#waiting.shift() : undefined;
      if (w) w.grant({ socket: this.#connect(), reused: false });
    });
    return socket;
  }
}

/** SNI is sent for names, never for IP literals (RFC 6066 3). */
function servername(hostname: string): string | undefined {
  return net.isIP(hostname) ? undefined : hostname;
}
