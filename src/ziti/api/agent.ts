/**
 * http.Agent over the overlay: keep-alive pooling works as usual, and each new socket is a dial (never plain TCP).
 * The request's host names the service (or a `resolve` function maps it). Used by `ZitiContext.httpAgent()` and,
 * through src/overlay, by scrapez proxy's per-target pools, which add their metrics by overriding `dial`.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import { debug } from "../debug.js";

const log = debug("http");

/** Where a request goes: a service, or one replica of it (the identity that bound its terminator). */
export interface AgentTarget {
  service: string;
  identity?: string;
}

/** What the agent dials with: a ZitiContext, or anything with the same `dial` (a test's stand-in). */
export interface AgentDialer {
  dial(service: string, opts?: { identity?: string; timeoutMs?: number }): Promise<Duplex>;
}

export interface ZitiAgentOptions extends http.AgentOptions {
  /** Maps a request's host to its target (default: the host is the service name). */
  resolve?: (host: string) => AgentTarget;
  /**
   * A dial's time limit when the request sets none (`dialTimeoutMs`, else `timeout`, on the request options);
   * without any, the dialer's own default (ContextOptions.dialTimeoutMs).
   */
  dialTimeoutMs?: number;
}

/** Request options the agent reads: the dial's own time limit. */
export interface ZitiRequestOptions extends http.RequestOptions {
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

export class ZitiAgent extends http.Agent {
  readonly #dialer: AgentDialer;
  readonly #resolve: (host: string) => AgentTarget;
  readonly #dialMs: number | undefined;
  #pending = 0;
  readonly #waiting: (() => void)[] = [];

  constructor(dialer: AgentDialer, opts: ZitiAgentOptions = {}) {
    const { resolve, dialTimeoutMs, ...agentOpts } = opts;
    super({ keepAlive: true, maxSockets: 8, ...agentOpts });
    this.#dialer = dialer;
    this.#resolve = resolve ?? ((host) => ({ service: host }));
    this.#dialMs = dialTimeoutMs;
  }

  /** Dials under way. */
  protected get dialsInProgress(): number {
    return this.#pending;
  }

  /** Requests held back until a dial under way completes (see addRequest). */
  protected get requestsWaiting(): number {
    return this.#waiting.length;
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

  /** Opens one connection to `target`. Subclasses wrap it (metrics, logging). */
  protected dial(target: AgentTarget, timeoutMs: number | undefined): Promise<Duplex> {
    return this.#dialer.dial(target.service, {
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
      ...(target.identity !== undefined ? { identity: target.identity } : {}),
    });
  }

  override createConnection(
    options: http.ClientRequestArgs,
    cb?: (err: Error | null, socket: Duplex) => void,
  ): undefined {
    const o = options as ZitiRequestOptions;
    const timeoutMs = o.dialTimeoutMs ?? (o.timeout || undefined) ?? this.#dialMs;
    const target = this.#resolve(String(options.host ?? options.hostname ?? ""));
    this.#pending++;
    const done = () => {
      this.#pending--;
      for (const next of this.#waiting.splice(0)) next();
    };
    this.dial(target, timeoutMs)
      .then(
        (c) => {
          try {
            cb?.(null, asSocket(c));
          } finally {
            done();
          }
        },
        (err: Error) => {
          try {
            cb?.(err, undefined as unknown as Duplex);
          } finally {
            done();
          }
        },
      )
      // Only Node's own callback could throw here (a bug, not a peer's bytes): note it, keep serving the others.
      .catch((err: unknown) => log("connection callback for %s failed: %s", target.service, String(err)));
    return undefined;
  }
}
