/**
 * One keep-alive http.Agent per (identity, service, replica) whose sockets are overlay dials, so steady scraping
 * reuses connections instead of dialing per scrape. The pool is bounded by `agent.maxSocketsPerService`; idle
 * connections close after `agent.keepAliveSeconds`. How many agents exist at once is bounded by AgentCache.
 */
import type http from "node:http";
import type { Duplex } from "node:stream";
import type { ProxyMetrics } from "./metrics.js";
import { OverlayHttpAgent, type DialOverlay, type TargetName } from "../overlay/types.js";

export { asSocket, type OverlayRequestOptions } from "../overlay/types.js";

/**
 * One target's pool: the SDK's overlay agent (src/ziti/api/agent.ts, through src/overlay), with the proxy's dial
 * metrics, a last-used time for the cache, reloadable pool settings, and retirement.
 */
export class OverlayAgent extends OverlayHttpAgent {
  readonly #target: TargetName;
  readonly #metrics: ProxyMetrics;
  /** Date.now() of the last request. */
  lastUsed = Date.now();

  constructor(
    ctx: DialOverlay,
    target: TargetName,
    metrics: ProxyMetrics,
    opts: { maxSockets: number; keepAliveMs: number; dialTimeoutMs: number },
  ) {
    super(ctx, {
      keepAlive: true,
      maxSockets: opts.maxSockets,
      maxFreeSockets: opts.maxSockets,
      timeout: opts.keepAliveMs,
      scheduling: "lifo", // keep using the most recent connection; spare ones idle out
      resolve: () => target,
      dialTimeoutMs: opts.dialTimeoutMs,
    });
    this.#target = target;
    this.#metrics = metrics;
  }

  override addRequest(req: http.ClientRequest, options: http.RequestOptions): void {
    this.lastUsed = Date.now();
    super.addRequest(req, options);
  }

  /** The SDK agent's dial, timed and counted (scrapez_dial_duration_seconds, active connections). */
  protected override dial(target: TargetName, timeoutMs: number | undefined): Promise<Duplex> {
    return this.#metrics
      .timeDial(target.service, () => super.dial(target, timeoutMs))
      .then((c) => {
        this.#metrics.active.inc();
        c.once("close", () => this.#metrics.active.dec());
        return c;
      });
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
      this.dialsInProgress === 0 &&
      this.requestsWaiting === 0 &&
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
      // Already there: only its place in the recency order changes (the size gauge does not).
      this.#agents.delete(key);
      this.#agents.set(key, a);
      return a;
    }
    a = make();
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
