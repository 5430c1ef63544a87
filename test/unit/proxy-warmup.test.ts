/**
 * The proxy's warm-up (src/proxy/warmup.ts): the pacing window, and how dials ahead meet the scrapes' own dials.
 * The overlay is a stand-in whose dials complete when the test says (a real overlay: test/integration/proxy-warmup).
 */
import { EventEmitter } from "node:events";
import { PassThrough, type Duplex } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/common/log.js";
import type { DialOverlay, OverlayDialOptions, OverlayService } from "../../src/overlay/types.js";
import { ProxyMetrics } from "../../src/proxy/metrics.js";
import { Pacer, WarmOverlay, Warmup } from "../../src/proxy/warmup.js";
import { ErrorCodes } from "../../src/ziti/index.js";

/** Dials that take `delayMs` (or hang when `hang`), counted, with the most in flight at once. */
class TimedOverlay extends EventEmitter implements DialOverlay {
  readonly identityName = "prometheus-central";
  delayMs = 5;
  hang = false;
  dials: { service: string; identity?: string | undefined }[] = [];
  inFlight = 0;
  maxInFlight = 0;
  /** Every connection handed out, in order (a test closes one "from the far end"). */
  made: PassThrough[] = [];
  services(): Promise<OverlayService[]> {
    return Promise.resolve([]);
  }
  async dial(service: string, opts: OverlayDialOptions = {}): Promise<Duplex> {
    this.dials.push({ service, identity: opts.identity });
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((r) => setTimeout(r, this.hang ? 60_000 : this.delayMs));
      const c = new PassThrough();
      this.made.push(c);
      return c;
    } finally {
      this.inFlight--;
    }
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function setup() {
  const o = new TimedOverlay();
  const metrics = new ProxyMetrics();
  const warmup = new Warmup(
    metrics,
    createLogger("error", {}, () => undefined),
  );
  return { o, metrics, warmup, dialer: new WarmOverlay(o, warmup) };
}

async function until(cond: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function counter(metrics: ProxyMetrics, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await metrics.registry.getSingleMetric(name)?.get())?.values ?? [];
  return m.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((n, v) => n + v.value, 0);
}

describe("Pacer: the window of dials in flight", () => {
  it("grows by about one per window of fast answers, up to its maximum", () => {
    const p = new Pacer({ initial: 4, max: 32 });
    for (let i = 0; i < 4; i++) p.sample(40, true, 1_000);
    expect(p.limit).toBe(4); // 4 + 4 x 1/4.x: not yet 5
    for (let i = 0; i < 40; i++) p.sample(40, true, 1_000);
    expect(p.limit).toBeGreaterThanOrEqual(8);
    for (let i = 0; i < 5_000; i++) p.sample(40, true, 1_000);
    expect(p.limit).toBe(32);
  });

  it("shrinks by 30 % on a slow answer (3x the baseline), once per round trip however many come together", () => {
    const p = new Pacer({ initial: 20, max: 32 });
    p.sample(100, true, 10_000);
    const before = p.limit;
    p.sample(400, true, 10_000);
    expect(p.limit).toBe(Math.floor(before * 0.7));
    p.sample(900, true, 10_001);
    p.sample(900, false, 10_002);
    expect(p.limit).toBe(Math.floor(before * 0.7));
    p.sample(900, false, 12_000);
    expect(p.limit).toBeLessThan(Math.floor(before * 0.7));
  });

  it("never goes below its minimum, and answers under 250 ms are never slow", () => {
    const p = new Pacer({ initial: 2, min: 1 });
    for (let t = 0; t < 20; t++) p.sample(10_000, false, t * 10_000);
    expect(p.limit).toBe(1);
    const q = new Pacer({ initial: 4 });
    q.sample(5, true, 0);
    q.sample(200, true, 0); // 40x the baseline, but under the floor
    expect(q.limit).toBe(4);
  });
});

describe("Warmup: dialing ahead of first scrapes", () => {
  it("dials every offered target, never more at once than the window, and holds each connection", async () => {
    const { o, warmup, metrics } = setup();
    o.delayMs = 20;
    const targets = Array.from({ length: 60 }, (_, i) => ({
      ctx: o,
      service: `s${i % 30}`,
      identity: `r${Math.floor(i / 30)}`,
    }));
    warmup.offer(targets);
    await until(() => warmup.held === 60);
    expect(o.dials).toHaveLength(60);
    expect(o.maxInFlight).toBeGreaterThanOrEqual(4);
    expect(o.maxInFlight).toBeLessThanOrEqual(32);
    expect(await counter(metrics, "scrapez_proxy_warm_dials_total", { result: "ok" })).toBe(60);
    // Offered again (the next catalog refresh): nothing is dialed twice.
    warmup.offer(targets);
    await new Promise((r) => setTimeout(r, 50));
    expect(o.dials).toHaveLength(60);
    warmup.close();
  });

  it("a scrape's dial takes the held connection instead of dialing", async () => {
    const { o, warmup, dialer, metrics } = setup();
    warmup.offer([{ ctx: o, service: "app", identity: "bind-a" }]);
    await until(() => warmup.held === 1);
    const c = await dialer.dial("app", { identity: "bind-a", timeoutMs: 1_000 });
    expect(c).toBeInstanceOf(PassThrough);
    expect(o.dials).toHaveLength(1);
    expect(warmup.held).toBe(0);
    expect(await counter(metrics, "scrapez_proxy_warm_connections_total", { outcome: "taken" })).toBe(1);
    // The next dial of that target is its own.
    await dialer.dial("app", { identity: "bind-a", timeoutMs: 1_000 });
    expect(o.dials).toHaveLength(2);
    warmup.close();
  });

  it("a scrape arriving while its target's warm dial is under way waits for that dial, not a second one", async () => {
    const { o, warmup, dialer } = setup();
    o.delayMs = 200;
    warmup.offer([{ ctx: o, service: "app" }]);
    await until(() => o.dials.length === 1);
    const c = await dialer.dial("app", { timeoutMs: 5_000 });
    expect(c).toBeInstanceOf(PassThrough);
    expect(o.dials).toHaveLength(1);
    expect(warmup.held).toBe(0);
    warmup.close();
  });

  it("waiting for a warm dial is bounded by the scrape's own dial limit (ZITI_DIAL_TIMEOUT)", async () => {
    const { o, warmup, dialer } = setup();
    o.hang = true;
    warmup.offer([{ ctx: o, service: "black-hole" }]);
    await until(() => o.dials.length === 1);
    const started = Date.now();
    await expect(dialer.dial("black-hole", { timeoutMs: 100 })).rejects.toMatchObject({
      code: ErrorCodes.DIAL_TIMEOUT,
      message: expect.stringMatching(/not connected within 100 ms/) as unknown,
    });
    expect(Date.now() - started).toBeLessThan(5_000);
    warmup.close();
  });

  it("a held connection the far end closes is dropped and counted; one no longer listed is closed", async () => {
    const { o, warmup, metrics } = setup();
    warmup.offer([
      { ctx: o, service: "a" },
      { ctx: o, service: "b" },
    ]);
    await until(() => warmup.held === 2);
    // The far end closes "a"'s connection while it is held.
    o.made[o.dials.findIndex((d) => d.service === "a")]!.destroy();
    await until(() => warmup.held === 1);
    expect(await counter(metrics, "scrapez_proxy_warm_connections_total", { outcome: "closed" })).toBe(1);
    // "b" is no longer listed: its held connection is closed; "a" is not dialed again while listed.
    const b = o.made[o.dials.findIndex((d) => d.service === "b")]!;
    warmup.offer([{ ctx: o, service: "a" }]);
    expect(warmup.held).toBe(0);
    expect(b.destroyed).toBe(true);
    await new Promise((r) => setTimeout(r, 30));
    expect(o.dials).toHaveLength(2);
    warmup.close();
  });

  it("a failed warm dial is counted by its code, and the scrape then dials on its own", async () => {
    const { o, warmup, dialer, metrics } = setup();
    const real = o.dial.bind(o);
    let fail = true;
    o.dial = async (service: string, opts?: OverlayDialOptions) => {
      if (fail) {
        o.dials.push({ service });
        throw Object.assign(new Error("no terminators"), { code: ErrorCodes.DIAL_FAILED });
      }
      return real(service, opts);
    };
    warmup.offer([{ ctx: o, service: "app" }]);
    await until(async () => (await counter(metrics, "scrapez_proxy_warm_dials_total", {})) === 1);
    expect(await counter(metrics, "scrapez_proxy_warm_dials_total", { result: ErrorCodes.DIAL_FAILED })).toBe(1);
    fail = false;
    await dialer.dial("app", { timeoutMs: 1_000 });
    expect(o.dials).toHaveLength(2);
    warmup.close();
  });
});
