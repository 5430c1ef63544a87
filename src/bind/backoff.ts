/**
 * Retry delays: exponential from `initialMs`, doubling up to `maxMs`, each spread by ±`jitter` so that many
 * sidecars that failed together (a controller restart) do not retry in step. `reset()` after a success.
 */
export interface BackoffOptions {
  initialMs?: number;
  maxMs?: number;
  /** Fraction of the delay added or removed at random (0.25 = ±25 %). */
  jitter?: number;
  random?: () => number;
}

export class Backoff {
  readonly #initialMs: number;
  readonly #maxMs: number;
  readonly #jitter: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(opts: BackoffOptions = {}) {
    this.#initialMs = opts.initialMs ?? 1_000;
    this.#maxMs = opts.maxMs ?? 60_000;
    this.#jitter = opts.jitter ?? 0.25;
    this.#random = opts.random ?? Math.random;
  }

  /** The delay before the next attempt, in ms. */
  next(): number {
    const base = Math.min(this.#initialMs * 2 ** Math.min(this.#attempt, 30), this.#maxMs);
    this.#attempt++;
    return Math.round(base * (1 - this.#jitter + 2 * this.#jitter * this.#random()));
  }

  reset(): void {
    this.#attempt = 0;
  }
}
