/**
 * Warming the overlay before Prometheus asks (issue 23 item 4). Every target the catalog offers on `/sd` gets one
 * connection dialed ahead of its first scrape: the dial creates its service's Dial session (one per service, shared
 * by all its replicas: src/ziti/api/service-directory.ts) and a circuit to the target, and the connection is held
 * until a scrape or tunnel of that target asks for one (WarmOverlay.dial hands it over instead of dialing) or
 * HOLD_MS pass. A scrape that comes while its target's warm dial is under way waits for that dial rather than
 * starting a second one; a target a scrape dialed itself first is not warmed after.
 *
 * The dials are paced by how fast the controller answers (Pacer): a window of dials in flight that grows by one
 * per window of fast answers and shrinks by 30 % when answers get slow or fail for the controller's reasons, at
 * most once per round trip. A scrape's own dials count against the window too, so warming yields to them.
 *
 * Each target is warmed once while it is listed: a held connection that expires or that the far end closes is not
 * dialed again (its first scrape dials as before, with the Dial session already made).
 */
import type { Duplex } from "node:stream";
import { DIALED_AHEAD } from "../common/forward.js";
import type { Logger } from "../common/log.js";
import {
  ErrorCodes,
  type DialOverlay,
  type OverlayDialOptions,
  type OverlayRouterStatus,
  type OverlayService,
} from "../overlay/types.js";
import { resultLabel, type ProxyMetrics } from "./metrics.js";

/**
 * How long a connection dialed ahead is held for its target's first scrape: an http_sd refresh (Prometheus's
 * default 60 s) plus a few scrape intervals. Below the bind's default idle deadline (idleTimeoutSeconds, 300 s).
 */
export const HOLD_MS = 240_000;
/** A warm-up dial's time limit (the same as a scrape's default dial limit, timeouts.dialSeconds). */
export const WARM_DIAL_TIMEOUT_MS = 10_000;

/** One target to warm: exactly as the catalog resolves it (service name, replica identity). */
export interface WarmTarget {
  ctx: DialOverlay;
  service: string;
  identity?: string | undefined;
}

/** The key of one dial target, a pool's or a held connection's: identity, service, replica. */
export function keyOf(identityName: string, service: string, identity: string | undefined): string {
  return `${identityName}\u0000${service}\u0000${identity ?? ""}`;
}

/** Answers below this are never "slow", however fast the fastest were (a dial is several round trips). */
const SLOW_FLOOR_MS = 250;

/**
 * How many dials may be in flight: additive increase (one more per `limit` fast answers), multiplicative decrease
 * (x0.7 on a slow or failed answer, at most once per second or three baseline round trips). "Slow" is more than three
 * times the baseline: the fastest answer seen, drifting slowly up towards what is seen, so a machine or controller
 * that is slower as a whole does not keep the window at its floor.
 */
export class Pacer {
  #limit: number;
  readonly #min: number;
  readonly #max: number;
  #baseline = Infinity;
  #lastCut = 0;
  inFlight = 0;

  constructor(opts: { initial?: number; min?: number; max?: number } = {}) {
    this.#min = opts.min ?? 1;
    this.#max = opts.max ?? 32;
    this.#limit = Math.min(this.#max, Math.max(this.#min, opts.initial ?? 4));
  }

  get limit(): number {
    return Math.floor(this.#limit);
  }

  get free(): boolean {
    return this.inFlight < this.limit;
  }

  /** One dial's answer: `ok` false for a failure that says the controller or router is slow or overloaded. */
  sample(ms: number, ok: boolean, now = Date.now()): void {
    if (ok)
      this.#baseline = Math.min(ms, this.#baseline === Infinity ? ms : this.#baseline + (ms - this.#baseline) / 50);
    const slow = !ok || ms > Math.max(SLOW_FLOOR_MS, 3 * this.#baseline);
    if (!slow) {
      this.#limit = Math.min(this.#max, this.#limit + 1 / this.#limit);
      return;
    }
    if (now - this.#lastCut < Math.max(1_000, 3 * (Number.isFinite(this.#baseline) ? this.#baseline : 0))) return;
    this.#lastCut = now;
    this.#limit = Math.max(this.#min, this.#limit * 0.7);
  }
}

/** A dial failure that is the service's own answer (no terminator, no permission), not the controller's load. */
function serviceAnswer(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  const text = typeof e?.message === "string" ? e.message : "";
  if (/time(d)? ?out/i.test(text)) return false;
  return (
    e?.code === ErrorCodes.DIAL_FAILED ||
    e?.code === ErrorCodes.SERVICE_NOT_FOUND ||
    e?.code === ErrorCodes.NOT_AUTHORIZED
  );
}

interface Dialing {
  p: Promise<Duplex | undefined>;
  /** A scrape waits for this dial: the connection goes to it, not to the held set. */
  claimed: boolean;
}

interface Held {
  conn: Duplex;
  timer: NodeJS.Timeout;
  onClose: () => void;
  onError: () => void;
}

export class Warmup {
  readonly #pacer = new Pacer();
  readonly #metrics: ProxyMetrics;
  readonly #log: Logger;
  readonly #queue: WarmTarget[] = [];
  readonly #queued = new Set<string>();
  readonly #dialing = new Map<string, Dialing>();
  readonly #held = new Map<string, Held>();
  /** Targets warmed (or being warmed, or dialed by a scrape first) since they were listed: not warmed again. */
  readonly #seen = new Set<string>();
  #closed = false;
  #warmedAll = false;

  constructor(metrics: ProxyMetrics, log: Logger) {
    this.#metrics = metrics;
    this.#log = log;
    this.#metrics.warmConcurrency.set(this.#pacer.limit);
  }

  /** Connections held now. */
  get held(): number {
    return this.#held.size;
  }

  /** The catalog's targets now (what /sd lists): new ones are queued, ones no longer listed forgotten. */
  offer(targets: readonly WarmTarget[]): void {
    if (this.#closed) return;
    const listed = new Set<string>();
    let added = 0;
    for (const t of targets) {
      const k = keyOf(t.ctx.identityName, t.service, t.identity);
      listed.add(k);
      if (this.#seen.has(k)) continue;
      this.#seen.add(k);
      this.#queue.push(t);
      this.#queued.add(k);
      added++;
    }
    for (const k of [...this.#seen]) {
      if (listed.has(k)) continue;
      this.#seen.delete(k);
      this.#queued.delete(k);
      this.#release(k)?.destroy();
    }
    if (added > 0) {
      this.#warmedAll = false;
      this.#log.debug("warming targets", { added, queued: this.#queued.size });
    }
    this.#pump();
  }

  /**
   * For a dial of this target: its held connection, or the warm dial under way (resolves to undefined if that
   * failed: then dial as usual), or undefined (nothing warm: dial as usual; the target is not warmed after).
   */
  take(
    ctx: DialOverlay,
    service: string,
    identity: string | undefined,
    timeoutMs: number | undefined,
  ): Promise<Duplex | undefined> | undefined {
    const k = keyOf(ctx.identityName, service, identity);
    const conn = this.#release(k);
    if (conn) {
      // Bytes nobody asked for (an older bind's 408 at its headers deadline) or a close on the way (the far end's
      // close ends our writing side at once, while its end of stream waits unread): not usable.
      if (conn.destroyed || !conn.writable || conn.readableEnded || conn.readableLength > 0) {
        conn.destroy();
        this.#metrics.warmOutcomes.inc({ outcome: "closed" });
      } else {
        this.#metrics.warmOutcomes.inc({ outcome: "taken" });
        // Held idle until now, it may have died quietly (its circuit gone while the controller was away): the
        // first request on it is retried once on a fresh connection, as on a stale pooled one.
        (conn as Duplex & { [DIALED_AHEAD]?: boolean })[DIALED_AHEAD] = true;
        return Promise.resolve(conn);
      }
    }
    const d = this.#dialing.get(k);
    if (d && !d.claimed) {
      d.claimed = true;
      // Waited for within the asker's own dial limit: past it, the asker fails as its own dial would have, and the
      // warm connection, when it comes, is held for the next ask.
      return new Promise<Duplex | undefined>((resolve, reject) => {
        const timer =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => {
                d.claimed = false;
                reject(
                  Object.assign(new Error(`dial ${service}: not connected within ${timeoutMs} ms`), {
                    code: ErrorCodes.DIAL_TIMEOUT,
                  }),
                );
              }, timeoutMs);
        void d.p.then((c) => {
          if (!d.claimed) return; // the asker gave up: #start holds it
          clearTimeout(timer);
          if (c) this.#metrics.warmOutcomes.inc({ outcome: "taken" });
          resolve(c);
        });
      });
    }
    // A scrape dials it now: it is warm after that, so it leaves the queue.
    if (this.#queued.delete(k)) this.#seen.add(k);
    return undefined;
  }

  /** Runs a dial counted in the pacer's window (a scrape's own dials: they do not wait, warm-up dials yield). */
  async paced<T>(dial: () => Promise<T>): Promise<T> {
    this.#pacer.inFlight++;
    const started = Date.now();
    try {
      const c = await dial();
      this.#pacer.sample(Date.now() - started, true);
      return c;
    } catch (err) {
      if (!serviceAnswer(err)) this.#pacer.sample(Date.now() - started, false);
      throw err;
    } finally {
      this.#pacer.inFlight--;
      this.#metrics.warmConcurrency.set(this.#pacer.limit);
      this.#pump();
    }
  }

  #pump(): void {
    while (!this.#closed && this.#pacer.free && this.#queue.length > 0) {
      const t = this.#queue.shift()!;
      const k = keyOf(t.ctx.identityName, t.service, t.identity);
      if (!this.#queued.delete(k)) continue; // a scrape dialed it first, or it is no longer listed
      this.#start(t, k);
    }
    if (this.#queue.length === 0 && this.#dialing.size === 0 && !this.#warmedAll && !this.#closed) {
      this.#warmedAll = true;
      this.#log.debug("warm-up done", { held: this.#held.size });
    }
  }

  /**
   * Told of a dial of a replica that failed, a warm-up's or a scrape's through WarmOverlay (the catalog lists that
   * service's replicas again if the router refused).
   */
  onRefused: (ctx: DialOverlay, service: string, err: unknown) => void = () => undefined;

  #start(t: WarmTarget, k: string): void {
    const d: Dialing = { p: Promise.resolve(undefined), claimed: false };
    d.p = this.paced(() =>
      t.ctx.dial(t.service, {
        timeoutMs: WARM_DIAL_TIMEOUT_MS,
        ...(t.identity !== undefined ? { identity: t.identity } : {}),
      }),
    ).then(
      (conn) => {
        this.#metrics.warmDials.inc({ result: "ok" });
        return conn;
      },
      (err: unknown) => {
        const e = err as { code?: unknown; message?: unknown } | null;
        this.#metrics.warmDials.inc({ result: resultLabel(e?.code) });
        if (t.identity !== undefined) this.onRefused(t.ctx, t.service, err);
        this.#log.debug("warm-up dial failed", { service: t.service, replica: t.identity, reason: String(e?.message) });
        return undefined;
      },
    );
    this.#dialing.set(k, d);
    void d.p.then((conn) => {
      if (this.#dialing.get(k) === d) this.#dialing.delete(k);
      if (!conn || d.claimed) return;
      if (this.#closed || !this.#seen.has(k) || this.#held.has(k)) {
        conn.destroy();
        return;
      }
      this.#hold(k, conn);
    });
  }

  #hold(k: string, conn: Duplex): void {
    const h: Held = {
      conn,
      onClose: () => {
        if (this.#held.get(k) !== h) return;
        this.#release(k);
        this.#metrics.warmOutcomes.inc({ outcome: "closed" });
      },
      // A held connection has no other listener: its error must not go unhandled (the close that follows counts).
      onError: () => undefined,
      timer: setTimeout(() => {
        if (this.#held.get(k) !== h) return;
        this.#release(k);
        conn.destroy();
        this.#metrics.warmOutcomes.inc({ outcome: "expired" });
      }, HOLD_MS),
    };
    h.timer.unref();
    conn.once("close", h.onClose);
    conn.on("error", h.onError);
    this.#held.set(k, h);
    this.#metrics.warmHeld.set(this.#held.size);
  }

  /** Takes a held connection out of the set (its listeners and timer removed), or undefined. */
  #release(k: string): Duplex | undefined {
    const h = this.#held.get(k);
    if (!h) return undefined;
    this.#held.delete(k);
    clearTimeout(h.timer);
    h.conn.off("close", h.onClose);
    h.conn.off("error", h.onError);
    this.#metrics.warmHeld.set(this.#held.size);
    return h.conn;
  }

  /** Stops warming and closes every held connection. */
  close(): void {
    this.#closed = true;
    this.#queue.length = 0;
    this.#queued.clear();
    for (const k of [...this.#held.keys()]) this.#release(k)?.destroy();
  }
}

/**
 * The overlay as the catalog hands it to scrapes and tunnels: every member is the identity's own, except `dial`,
 * which takes the target's warm connection when there is one and counts its own dials in the warm-up's window.
 */
export class WarmOverlay implements DialOverlay {
  readonly #inner: DialOverlay;
  readonly #warmup: Warmup;

  constructor(inner: DialOverlay, warmup: Warmup) {
    this.#inner = inner;
    this.#warmup = warmup;
  }

  get identityName(): string {
    return this.#inner.identityName;
  }
  get ready(): boolean | undefined {
    return this.#inner.ready;
  }
  get notReadyReason(): string | undefined {
    return this.#inner.notReadyReason;
  }
  get certExpiresAt(): Date | undefined {
    return this.#inner.certExpiresAt;
  }
  get controllerUrl(): string | undefined {
    return this.#inner.controllerUrl;
  }
  services(): Promise<OverlayService[]> {
    return this.#inner.services();
  }
  replicas(service: string): Promise<string[]> {
    if (!this.#inner.replicas) return Promise.reject(new Error("this overlay cannot list replicas"));
    return this.#inner.replicas(service);
  }
  routerStatus(): OverlayRouterStatus[] {
    return this.#inner.routerStatus?.() ?? [];
  }

  async dial(service: string, opts: OverlayDialOptions = {}): Promise<Duplex> {
    const warm = this.#warmup.take(this.#inner, service, opts.identity, opts.timeoutMs);
    if (warm) {
      const c = await warm;
      if (c) return c;
    }
    try {
      return await this.#warmup.paced(() => this.#inner.dial(service, opts));
    } catch (err) {
      if (opts.identity !== undefined) this.#warmup.onRefused(this.#inner, service, err);
      throw err;
    }
  }

  on(event: "servicesChanged", listener: (services: OverlayService[]) => void): unknown;
  on(event: "authenticated", listener: () => void): unknown;
  on(event: "servicesChanged" | "authenticated", listener: (services: OverlayService[]) => void): unknown {
    return this.#inner.on(event as "servicesChanged", listener);
  }

  close(): Promise<void> {
    return this.#inner.close();
  }
}
