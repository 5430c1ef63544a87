/**
 * One keep-alive http.Agent per (identity, service, replica) whose sockets are overlay dials, so steady scraping
 * reuses connections instead of dialing per scrape. The pool is bounded by `agent.maxSocketsPerService`; idle
 * connections close after `agent.keepAliveSeconds`. How many agents exist at once is bounded by AgentCache.
 */
import http from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "../common/log.js";
import type { ProxyMetrics } from "./metrics.js";
import type { DialOverlay, TargetName } from "../overlay/types.js";

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
  readonly #log: Logger | undefined;
  #pending = 0;
  readonly #waiting: (() => void)[] = [];
  /** Date.now() of the last request. */
  lastUsed = Date.now();

  constructor(
    ctx: DialOverlay,
    target: TargetName,
    metrics: ProxyMetrics,
    opts: { maxSockets: number; keepAliveMs: number; dialTimeoutMs: number; log?: Logger },
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
    this.#log = opts.log;
  }

  /**
   * http.Agent counts a socket towards maxSockets only once createConnection has called back, so with an
   * asynchronous dial a burst of requests would each start a dial. While dials are under way and the pool is full
   * counting them, a request waits here until one completes, then goes through the usual Agent logic (reuse a free
   * connection, open one, or queue).
   */
  addRequest(req: http.ClientRequest, options: http.RequestOptions): void {
    this.lastUsed = Date.now();
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

  /** No connection open or being dialed and no request waiting: dropping this agent loses nothing. */
  get idle(): boolean {
    const n = (d: NodeJS.ReadOnlyDict<unknown[]>) => Object.values(d).some((l) => (l?.length ?? 0) > 0);
    return (
      this.#pending === 0 &&
      this.#waiting.length === 0 &&
      !n(this.sockets) &&
      !n(this.freeSockets) &&
      !n(this.requests as NodeJS.ReadOnlyDict<unknown[]>)
    );
  }

  /**
   * Out of the cache while requests still use it: close its idle connections now, and each busy one when its
   * request ends (keepAlive off), so nothing is left behind once the last request is done.
   */
  retire(): void {
    (this as unknown as { keepAlive: boolean }).keepAlive = false;
    for (const list of Object.values(this.freeSockets)) for (const s of list ?? []) s.destroy();
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
          try {
            cb?.(null, asSocket(c));
          } finally {
            this.#dialDone();
          }
        },
        (err: Error) => {
          try {
            cb?.(err, undefined as unknown as Duplex);
          } finally {
            this.#dialDone();
          }
        },
      )
      // Only Node's own callback could throw here (a bug, not a peer's bytes): log it, keep serving the others.
      .catch((err: unknown) => this.#log?.error("overlay connection callback failed", { reason: String(err) }));
    return undefined;
  }
}

/**
 * The agents by (identity, service, replica), bounded: at most `max` (least recently used goes first; one still in
 * use is retired, so its requests finish and its connections close after them), and an agent with no connection
 * left is dropped once it has been unused for `idleMs` (its pooled connections close after keepAlive by themselves).
 * Only targets the catalog resolved get an agent, and the cap holds whatever names clients send.
 */
export class AgentCache {
  readonly #agents = new Map<string, OverlayAgent>();
  readonly #max: number;
  readonly #idleMs: number;
  readonly #onSize: (n: number) => void;
  readonly #onEvict: () => void;
  readonly #timer: NodeJS.Timeout;

  /**
   * `onEvict` runs when a pool goes because `max` were open (not when an idle one expires): with more targets than
   * `max`, scrapes in turn evict each other's pools and every scrape dials anew, which the operator must hear of.
   */
  constructor(opts: { max: number; idleMs: number; onSize?: (n: number) => void; onEvict?: () => void }) {
    this.#max = opts.max;
    this.#idleMs = opts.idleMs;
    this.#onSize = opts.onSize ?? (() => undefined);
    this.#onEvict = opts.onEvict ?? (() => undefined);
    this.#timer = setInterval(() => this.sweep(), Math.min(60_000, Math.max(100, opts.idleMs)));
    this.#timer.unref();
  }

  get size(): number {
    return this.#agents.size;
  }

  /** The agents in the cache now (to apply a reloaded config to them). */
  values(): IterableIterator<OverlayAgent> {
    return this.#agents.values();
  }

  /** The agent for `key` (made by `make` when there is none), now the most recently used. */
  get(key: string, make: () => OverlayAgent): OverlayAgent {
    let a = this.#agents.get(key);
    if (a) {
      this.#agents.delete(key);
    } else {
      a = make();
    }
    this.#agents.set(key, a);
    while (this.#agents.size > this.#max) {
      const [oldest, agent] = this.#agents.entries().next().value as [string, OverlayAgent];
      this.#agents.delete(oldest);
      if (agent.idle) agent.destroy();
      else agent.retire();
      this.#onEvict();
    }
    this.#onSize(this.#agents.size);
    return a;
  }

  /** Drops agents that have no connection and were not used for idleMs. */
  sweep(now = Date.now()): void {
    for (const [key, a] of this.#agents) {
      if (a.idle && now - a.lastUsed >= this.#idleMs) {
        this.#agents.delete(key);
        a.destroy();
      }
    }
    this.#onSize(this.#agents.size);
  }

  close(): void {
    clearInterval(this.#timer);
    for (const a of this.#agents.values()) a.destroy();
    this.#agents.clear();
    this.#onSize(0);
  }
}
