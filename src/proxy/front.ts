/**
 * The proxy's front for scrapes: on a plain-HTTP listener, each new connection's requests are read with
 * src/common/http1.ts before Node's HTTP server sees them. A scrape (a GET or HEAD in absolute form, HTTP/1.1,
 * without a body) is answered here, through a FrontResponse, so Node builds no IncomingMessage or ServerResponse
 * for it. Anything else, a head that does not parse included, hands the connection to Node's server for good, with
 * the bytes read so far put back: it is then answered exactly as before (auth, /sd, /status, CONNECT, 400, 431).
 * Prometheus's connections to its proxy_url carry scrapes only, so they stay here.
 */
import type http from "node:http";
import type net from "node:net";
import { keepsAlive } from "../common/forward.js";
import { HeadReader, Http1Error, parseRequestHead, requestFraming, type RequestHead } from "../common/http1.js";
import { FrontResponse, headerObject, type FrontRequest } from "./front-response.js";

export interface FrontOptions {
  /** Node's headersTimeout: a head must be complete this long after its first byte (read when needed). */
  headersTimeoutMs(): number;
  /** Node's keepAliveTimeout: an idle connection closes after this long (read when needed). */
  keepAliveTimeoutMs(): number;
  /** The scrape handler for this request, or undefined to hand the connection to Node. */
  route(head: RequestHead, req: FrontRequest): Handler | undefined;
  /** Node's own connection handling (the http.Server's 'connection' listener). */
  handover(socket: net.Socket): void;
}

/**
 * Puts a front before `server`'s own connection handling: scrapes go to `route`, and every other connection to
 * Node's listener with its bytes. Undefined (nothing changed) when the server has listeners it does not expect.
 */
export function installFront(
  server: http.Server,
  route: (req: FrontRequest) => Handler | undefined,
): ScrapeFront | undefined {
  const listeners = server.listeners("connection") as ((socket: net.Socket) => void)[];
  if (listeners.length !== 1) return undefined;
  const node = listeners[0]!;
  const front = new ScrapeFront({
    headersTimeoutMs: () => server.headersTimeout,
    keepAliveTimeoutMs: () => server.keepAliveTimeout,
    route: (_head, req) => route(req),
    handover: (socket) => node.call(server, socket),
  });
  server.removeListener("connection", node);
  server.on("connection", (socket: net.Socket) => {
    try {
      front.accept(socket);
    } catch {
      socket.destroy(); // a bug, not the client's: this connection only
    }
  });
  return front;
}

type Handler = (req: FrontRequest, res: FrontResponse) => void;

export class ScrapeFront {
  readonly #opts: FrontOptions;
  readonly #conns = new Set<FrontConnection>();

  constructor(opts: FrontOptions) {
    this.#opts = opts;
  }

  accept(socket: net.Socket): void {
    const c = new FrontConnection(socket, this.#opts, () => this.#conns.delete(c));
    this.#conns.add(c);
  }

  /** Connections still read by the front (not handed over). */
  get size(): number {
    return this.#conns.size;
  }

  /** Closes the connections with no answer in flight (a graceful stop); the others close after their answer. */
  closeIdle(): void {
    for (const c of this.#conns) c.closeIfIdle();
  }

  closeAll(): void {
    for (const c of this.#conns) c.destroy();
  }
}

class FrontConnection {
  readonly #socket: net.Socket;
  readonly #opts: FrontOptions;
  readonly #gone: () => void;
  #reader = new HeadReader();
  /** The bytes of the head being read (to hand them to Node as they came). */
  #partial: Buffer[] = [];
  /** Bytes that came while an answer was in flight. */
  #held: Buffer[] = [];
  #busy: FrontResponse | undefined;
  /** The client half-closed: the connection ends after the answer in flight. */
  #ended = false;
  /** No new request is taken (a graceful stop): the connection closes once idle. */
  #closing = false;
  #done = false;
  /** One timer per connection, re-armed only when it fires: no timer work per request. */
  #timer: NodeJS.Timeout | undefined;
  /** Date.now() when the current phase began: the head's first byte, or the last answer's end. */
  #since = Date.now();

  constructor(socket: net.Socket, opts: FrontOptions, gone: () => void) {
    this.#socket = socket;
    this.#opts = opts;
    this.#gone = gone;
    socket.setNoDelay(true);
    socket.on("data", this.#onData);
    socket.on("end", this.#onEnd);
    socket.on("error", this.#onError);
    socket.on("close", this.#onClose);
    socket.on("drain", this.#onDrain);
    this.#arm(opts.headersTimeoutMs());
  }

  closeIfIdle(): void {
    this.#closing = true;
    if (!this.#busy) this.destroy();
    // The answer in flight says Connection: close if its head is not written yet; the connection ends after it.
    else if (!this.#busy.headersSent) this.#busy.shouldKeepAlive = false;
  }

  destroy(): void {
    this.#socket.destroy();
  }

  readonly #onData = (chunk: Buffer): void => {
    if (this.#busy) {
      // A pipelined request: read once this answer is done (Prometheus does not pipeline; a client that does waits).
      this.#held.push(chunk);
      this.#socket.pause();
      return;
    }
    this.#readOrClose(chunk);
  };

  #readOrClose(chunk: Buffer): void {
    try {
      this.#read(chunk);
    } catch {
      // A bug, not the client's bytes (those are Node's to judge once handed over): this connection only.
      this.#socket.destroy();
    }
  }

  #read(chunk: Buffer): void {
    if (this.#partial.length === 0) this.#since = Date.now();
    this.#partial.push(chunk);
    let found: { head: Buffer; rest: Buffer } | undefined;
    let head: RequestHead;
    try {
      found = this.#reader.push(chunk);
      if (!found) return;
      head = parseRequestHead(found.head);
    } catch (err) {
      if (err instanceof Http1Error) return this.#handover(); // Node's parser answers it, as it did
      throw err;
    }
    const req: FrontRequest = {
      method: head.method,
      url: head.target,
      httpVersion: head.minor === 1 ? "1.1" : "1.0",
      headers: headerObject(head.headers),
      rawHeaders: head.headers,
      socket: this.#socket,
    };
    const handle = this.#closing || !this.#hot(head) ? undefined : this.#opts.route(head, req);
    if (!handle) return this.#handover();
    this.#partial = [];
    if (found.rest.length > 0) this.#held.push(found.rest);
    const res = new FrontResponse(
      this.#socket,
      head.method,
      Math.floor(this.#opts.keepAliveTimeoutMs() / 1000),
      (keepAlive) => this.#finished(res, keepAlive),
    );
    // A client that asked to close (Connection: close) gets its answer with Connection: close, as from Node.
    if (this.#closing || !keepsAlive(head.minor, head.headers)) {
      res.shouldKeepAlive = false;
    }
    this.#busy = res;
    handle(req, res);
  }

  /** A request the front answers itself: everything else is Node's. */
  #hot(head: RequestHead): boolean {
    if (head.minor !== 1 || (head.method !== "GET" && head.method !== "HEAD")) return false;
    if (!/^http:\/\//i.test(head.target)) return false;
    for (let i = 0; i + 1 < head.headers.length; i += 2) {
      const n = head.headers[i]!.toLowerCase();
      if (n === "expect" || n === "upgrade") return false;
    }
    try {
      return requestFraming(head.headers).kind === "none";
    } catch {
      return false;
    }
  }

  #finished(res: FrontResponse, keepAlive: boolean): void {
    if (this.#busy !== res) return;
    this.#busy = undefined;
    this.#since = Date.now();
    if (!keepAlive || this.#ended || this.#closing) {
      this.#socket.end();
      return;
    }
    const held = this.#held;
    this.#held = [];
    this.#socket.resume();
    // What came meanwhile, read as one piece: a head in it is answered (or handed over with all of it).
    if (held.length > 0) this.#readOrClose(held.length === 1 ? held[0]! : Buffer.concat(held));
  }

  /** Node's server takes the connection, with the bytes of the request it is about to read put back. */
  #handover(): void {
    this.#detach();
    const bytes = [...this.#partial, ...this.#held];
    this.#partial = [];
    this.#held = [];
    if (bytes.length > 0) this.#socket.unshift(bytes.length === 1 ? bytes[0]! : Buffer.concat(bytes));
    this.#opts.handover(this.#socket);
    // Paused for a pipelined request: Node's server reads it now (its listener is on, so nothing is lost).
    if (this.#socket.isPaused()) this.#socket.resume();
  }

  #detach(): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#timer);
    this.#socket.off("data", this.#onData);
    this.#socket.off("end", this.#onEnd);
    this.#socket.off("error", this.#onError);
    this.#socket.off("close", this.#onClose);
    this.#socket.off("drain", this.#onDrain);
    this.#gone();
  }

  readonly #onEnd = (): void => {
    this.#ended = true;
    if (!this.#busy) this.#socket.end();
  };

  readonly #onError = (): void => {
    this.#socket.destroy();
  };

  readonly #onClose = (): void => {
    const res = this.#busy;
    this.#busy = undefined;
    this.#detach();
    res?.closed();
  };

  readonly #onDrain = (): void => {
    this.#busy?.emit("drain");
  };

  /**
   * Node's server timeouts for this connection: a head not complete headersTimeout after its first byte, or a
   * connection idle for keepAliveTimeout, is closed.
   */
  #arm(ms: number): void {
    this.#timer = setTimeout(() => this.#tick(), ms);
    this.#timer.unref();
  }

  #tick(): void {
    if (this.#done) return;
    const headersMs = this.#opts.headersTimeoutMs();
    if (this.#busy) return this.#arm(headersMs);
    const limit = this.#partial.length > 0 ? headersMs : this.#opts.keepAliveTimeoutMs();
    const left = limit - (Date.now() - this.#since);
    if (left > 0) return this.#arm(Math.min(left, headersMs));
    // As Node's server does here: its timeout is a client error, and the proxy's clientError handler closes.
    this.#socket.destroy();
  }
}
