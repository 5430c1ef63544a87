/**
 * Exponential back-off with jitter, for every retry the SDK makes against a peer that may be down (the controller,
 * routers). A failing peer must never be hammered at a fixed rate, and many processes that lost the same peer at
 * the same moment must not come back in lock-step.
 *
 * The n-th delay (n = 0, 1, ...) is `min(initialMs * factor^n, maxMs)` times a random factor in
 * `[1 - jitter, 1 + jitter]`: with the defaults 0.5 s, 1 s, 2 s, ... up to 30 s, each ±25 %.
 */

export interface BackoffOptions {
  /** First delay (ms, before jitter). Default 500. */
  initialMs?: number;
  /** Largest delay (ms, before jitter). Default 30 000. */
  maxMs?: number;
  /** Growth per failure. Default 2. */
  factor?: number;
  /** Relative spread around each delay, 0..1. Default 0.25 (±25 %). */
  jitter?: number;
  /** Source of randomness in [0, 1) (tests pass a fixed one). Default Math.random. */
  random?: () => number;
}

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly factor: number;
  readonly jitter: number;
  readonly #random: () => number;
  #failures = 0;

  constructor(opts: BackoffOptions = {}) {
    this.initialMs = positive(opts.initialMs, 500);
    this.maxMs = Math.max(this.initialMs, positive(opts.maxMs, 30_000));
    this.factor = Math.max(1, positive(opts.factor, 2));
    this.jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.25));
    this.#random = opts.random ?? Math.random;
  }

  /** Failures counted since the last reset. */
  get failures(): number {
    return this.#failures;
  }

  /** The delay before the next attempt (ms, an integer ≥ 1); each call counts one more failure. */
  next(): number {
    const base = this.base(this.#failures);
    this.#failures++;
    const r = this.#random();
    const spread = 1 + this.jitter * (2 * (Number.isFinite(r) ? Math.min(1, Math.max(0, r)) : 0.5) - 1);
    return Math.max(1, Math.round(base * spread));
  }

  /** The n-th delay before jitter. */
  base(n: number): number {
    // Computed without overflow: stop multiplying once the cap is reached.
    let d = this.initialMs;
    for (let i = 0; i < n && d < this.maxMs; i++) d *= this.factor;
    return Math.min(d, this.maxMs);
  }

  /** After a success: the next failure starts from `initialMs` again. */
  reset(): void {
    this.#failures = 0;
  }
}

function positive(v: number | undefined, fallback: number): number {
  return v !== undefined && Number.isFinite(v) && v > 0 ? v : fallback;
}
