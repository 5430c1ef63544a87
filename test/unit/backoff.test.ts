import { afterEach, describe, expect, it, vi } from "vitest";
import { Backoff } from "../../src/ziti/backoff.js";

/** A fixed sequence of "random" numbers, repeated. */
function seq(...values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

describe("Backoff", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("doubles from 0.5 s to a 30 s cap by default, each delay within ±25 %", () => {
    const mid = new Backoff({ random: () => 0.5 });
    const delays = Array.from({ length: 10 }, () => mid.next());
    expect(delays).toEqual([500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]);
    const low = new Backoff({ random: () => 0 });
    const high = new Backoff({ random: () => 0.999999 });
    for (let n = 0; n < 12; n++) {
      const base = Math.min(500 * 2 ** n, 30_000);
      expect(low.next()).toBe(Math.round(base * 0.75));
      expect(high.next()).toBeLessThanOrEqual(Math.round(base * 1.25));
    }
    expect(mid.failures).toBe(10);
  });

  it("spreads processes that failed at the same moment (jitter), and reset() starts over", () => {
    const a = new Backoff({ random: seq(0.1, 0.9) });
    expect([a.next(), a.next(), a.next()]).toEqual([
      Math.round(500 * (1 + 0.25 * (0.2 - 1))),
      Math.round(1_000 * (1 + 0.25 * (1.8 - 1))),
      Math.round(2_000 * (1 + 0.25 * (0.2 - 1))),
    ]);
    a.reset();
    expect(a.failures).toBe(0);
    expect(a.next()).toBe(Math.round(500 * (1 + 0.25 * (1.8 - 1))));
  });

  it("never overflows or returns a bad delay, whatever the options or the random source", () => {
    const b = new Backoff({ initialMs: -5, maxMs: NaN, factor: 0, jitter: 7, random: () => NaN });
    expect(b.initialMs).toBe(500);
    expect(b.maxMs).toBe(30_000);
    expect(b.factor).toBe(2);
    expect(b.jitter).toBe(1);
    for (let i = 0; i < 2_000; i++) {
      const d = b.next();
      expect(Number.isInteger(d) && d >= 1 && d <= 60_000).toBe(true);
    }
    expect(new Backoff().base(10_000)).toBe(30_000);
  });

  it("drives a retry loop on fake timers: attempts at 0.5, 1.5, 3.5, 7.5 s ... and none once it succeeds", () => {
    vi.useFakeTimers();
    const b = new Backoff({ initialMs: 500, maxMs: 4_000, random: () => 0.5 });
    const at: number[] = [];
    const t0 = Date.now();
    let failuresLeft = 6;
    const attempt = () => {
      at.push(Date.now() - t0);
      if (failuresLeft-- > 0) setTimeout(attempt, b.next());
      else b.reset();
    };
    setTimeout(attempt, b.next());
    vi.advanceTimersByTime(60_000);
    // 500, +1000, +2000, +4000 (cap), +4000, +4000, +4000: then it succeeded and stopped.
    expect(at).toEqual([500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500]);
    expect(vi.getTimerCount()).toBe(0);
  });
});
