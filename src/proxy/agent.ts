/**
 * The proxy's keep-alive pools of overlay connections, one per (identity, service, replica), so steady scraping
 * reuses connections instead of dialing per scrape. Each pool (./overlay-pool.ts) is bounded by
 * `agent.maxSocketsPerService`; idle connections close after `agent.keepAliveSeconds`. How many pools exist at once
 * is bounded by AgentCache.
 */
import type { Duplex } from "node:stream";
import type { DialOverlay, TargetName } from "../overlay/types.js";
import type { ProxyMetrics } from "./metrics.js";
import { OverlayPool } from "./overlay-pool.js";

/**
 * One target's pool: dials through the target's identity (warm-up included: see ./warmup.ts), timed and counted
 * (scrapez_dial_duration_seconds, active connections), with the target it serves.
 */
export class OverlayAgent extends OverlayPool {
  readonly target: TargetName;

  constructor(
    ctx: DialOverlay,
    target: TargetName,
    metrics: ProxyMetrics,
    opts: { maxSockets: number; keepAliveMs: number },
  ) {
    const dial = (timeoutMs: number): Promise<Duplex> =>
      metrics
        .timeDial(target.service, () =>
          ctx.dial(target.service, {
            timeoutMs,
            ...(target.identity !== undefined ? { identity: target.identity } : {}),
          }),
        )
        .then((c) => {
          metrics.active.inc();
          c.once("close", () => metrics.active.dec());
          return c;
        });
    super(dial, opts);
    this.target = target;
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
