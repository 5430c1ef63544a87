/**
 * One keep-alive http.Agent per (identity, service, replica) whose sockets are overlay dials, so steady scraping
 * reuses connections instead of dialing per scrape. The pool is bounded by `agent.maxSocketsPerService`; idle
 * connections close after `agent.keepAliveSeconds`.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import type { ProxyMetrics } from "./metrics.js";
import type { DialOverlay, TargetName } from "./types.js";

/** Request option read by OverlayAgent.createConnection: the dial's time limit. */
export interface OverlayRequestOptions extends http.RequestOptions {
  dialTimeoutMs?: number;
}

type SocketLike = Duplex & {
  setKeepAlive?: (...a: unknown[]) => unknown;
  setNoDelay?: (...a: unknown[]) => unknown;
  setTimeout?: (...a: unknown[]) => unknown;
  ref?: () => unknown;
  unref?: () => unknown;
};

/**
 * http.Agent and ClientRequest call a few net.Socket methods on pooled sockets. The SDK's ZitiConnection has them;
 * for any other Duplex, add no-ops (idle sockets then close only when the far end closes them).
 */
export function asSocket(d: Duplex): Duplex {
  const s = d as SocketLike;
  const self = function (this: unknown) {
    return this;
  };
  s.setKeepAlive ??= self;
  s.setNoDelay ??= self;
  s.setTimeout ??= self;
  s.ref ??= self;
  s.unref ??= self;
  return d;
}

/** Node's http.Agent#addRequest: real and stable since Node 0.x, but absent from @types/node. */
const baseAddRequest = (
  http.Agent.prototype as unknown as {
    addRequest(this: http.Agent, req: http.ClientRequest, options: http.RequestOptions): void;
  }
).addRequest;

export class OverlayAgent extends http.Agent {
  readonly #ctx: DialOverlay;
  readonly #target: TargetName;
  readonly #metrics: ProxyMetrics;
  readonly #defaultDialMs: number;
  #pending = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(
    ctx: DialOverlay,
    target: TargetName,
    metrics: ProxyMetrics,
    opts: { maxSockets: number; keepAliveMs: number; dialTimeoutMs: number },
  ) {
    super({
      keepAlive: true,
      maxSockets: opts.maxSockets,
      maxFreeSockets: opts.maxSockets,
      timeout: opts.keepAliveMs,
      scheduling: "lifo", // keep using the most recent connection; spare ones idle out
    });
    this.#ctx = ctx;
    this.#target = target;
    this.#metrics = metrics;
    this.#defaultDialMs = opts.dialTimeoutMs;
  }

  /**
   * http.Agent counts a socket towards maxSockets only once createConnection has called back, so with an
   * asynchronous dial a burst of requests would each start a dial. While dials are under way and the pool is full
   * counting them, a request waits here until one completes, then goes through the usual Agent logic (reuse a free
   * connection, open one, or queue).
   */
  addRequest(req: http.ClientRequest, options: http.RequestOptions): void {
    const count = (d: NodeJS.ReadOnlyDict<unknown[]>) => Object.values(d).reduce((n, l) => n + (l?.length ?? 0), 0);
    if (this.#pending > 0 && count(this.freeSockets) === 0 && count(this.sockets) + this.#pending >= this.maxSockets) {
      this.#waiting.push(() => this.addRequest(req, options));
      return;
    }
    baseAddRequest.call(this, req, options);
  }

  #dialDone(): void {
    this.#pending--;
    for (const next of this.#waiting.splice(0)) next();
  }

  /** A reloaded config's pool settings: they apply to the next request and to connections as they go idle. */
  configure(opts: { maxSockets: number; keepAliveMs: number }): void {
    this.maxSockets = opts.maxSockets;
    this.maxFreeSockets = opts.maxSockets;
    // http.Agent arms a free socket's idle timer from options.timeout (real since Node 0.x, absent from @types/node).
    (this as unknown as { options: { timeout?: number } }).options.timeout = opts.keepAliveMs;
  }

  get target(): TargetName {
    return this.#target;
  }

  override createConnection(
    options: http.ClientRequestArgs,
    cb?: (err: Error | null, socket: Duplex) => void,
  ): undefined {
    const timeoutMs = (options as OverlayRequestOptions).dialTimeoutMs ?? this.#defaultDialMs;
    const { service, identity } = this.#target;
    this.#pending++;
    this.#metrics
      .timeDial(service, () => this.#ctx.dial(service, { timeoutMs, ...(identity !== undefined ? { identity } : {}) }))
      .then(
        (c) => {
          this.#metrics.active.inc();
          c.once("close", () => this.#metrics.active.dec());
          cb?.(null, asSocket(c));
          this.#dialDone();
        },
        (err: Error) => {
          cb?.(err, undefined as unknown as Duplex);
          this.#dialDone();
        },
      );
    return undefined;
  }
}
