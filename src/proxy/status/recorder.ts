/**
 * What the status page knows about scrapes: per target, the last scrape and a ring buffer of recent samples.
 * Memory is bounded whatever clients request: at most `maxTargets` targets (the least recently scraped one is
 * evicted first) and at most `maxSamples` samples per target (older ones are overwritten; samples older than the
 * window are ignored when aggregating). Callers record only targets the service catalog knows
 * (src/proxy/status/service.ts), so a made-up replica name never takes a slot.
 */
import { cleanText } from "../../common/format.js";

/** One finished scrape as the proxy answered it. */
export interface ScrapeResult {
  service: string;
  /** The replica (terminator identity) named in the request, when one was. */
  replica?: string | undefined;
  /** When the answer finished (ms since the epoch). */
  at: number;
  durationMs: number;
  /** Body bytes sent to the client. */
  bytes: number;
  /** The HTTP status sent to the client (499: the client went away before the answer). */
  status: number;
  /** Why it failed (non-2xx): the answer's text, or what went wrong. Sanitised and capped by `errorText`. */
  error?: string | undefined;
  /** Who scraped: `bearer`, `basic:<user>`, `cert:<subject CN>`, `anonymous`. */
  principal: string;
  /** The client's address and User-Agent (capped), for the page. */
  address?: string | undefined;
  userAgent?: string | undefined;
}

export type TargetState = "ok" | "failing" | "never";
export const STATES: readonly TargetState[] = ["failing", "ok", "never"];

export interface RecorderOptions {
  /** Targets kept (least recently scraped evicted first). */
  maxTargets: number;
  /** Samples kept per target (a ring buffer: the oldest is overwritten). */
  maxSamples: number;
  /** The aggregation window (ms). */
  windowMs: number;
  /** Sparkline buckets over the window. */
  sparkBuckets: number;
}

export const RECORDER_DEFAULTS: RecorderOptions = {
  maxTargets: 5_000,
  maxSamples: 300,
  windowMs: 5 * 60_000,
  sparkBuckets: 30,
};

const USER_AGENT_MAX = 120;

/** Growable ring of samples: typed arrays that double up to `max`, then overwrite the oldest. */
class Ring {
  at = new Float64Array(8);
  ms = new Float32Array(8);
  bytes = new Float64Array(8);
  status = new Uint16Array(8);
  /** Index of the oldest sample. */
  head = 0;
  size = 0;

  constructor(readonly max: number) {}

  push(at: number, ms: number, bytes: number, status: number): void {
    if (this.size === this.at.length && this.size < this.max) this.#grow(Math.min(this.max, this.size * 2));
    const cap = this.at.length;
    const i = (this.head + this.size) % cap;
    this.at[i] = at;
    this.ms[i] = ms;
    this.bytes[i] = bytes;
    this.status[i] = Math.max(0, Math.min(65535, status));
    if (this.size < cap) this.size++;
    else this.head = (this.head + 1) % cap;
  }

  #grow(n: number): void {
    const at = new Float64Array(n);
    const ms = new Float32Array(n);
    const bytes = new Float64Array(n);
    const status = new Uint16Array(n);
    for (let k = 0; k < this.size; k++) {
      const i = (this.head + k) % this.at.length;
      at[k] = this.at[i]!;
      ms[k] = this.ms[i]!;
      bytes[k] = this.bytes[i]!;
      status[k] = this.status[i]!;
    }
    Object.assign(this, { at, ms, bytes, status, head: 0 });
  }

  /** Samples oldest first. */
  *samples(): Generator<{ at: number; ms: number; bytes: number; status: number }> {
    for (let k = 0; k < this.size; k++) {
      const i = (this.head + k) % this.at.length;
      yield { at: this.at[i]!, ms: this.ms[i]!, bytes: this.bytes[i]!, status: this.status[i]! };
    }
  }

  /** Memory held by the typed arrays (bytes). */
  get byteSize(): number {
    return this.at.byteLength + this.ms.byteLength + this.bytes.byteLength + this.status.byteLength;
  }
}

interface Target {
  service: string;
  replica: string | undefined;
  last: ScrapeResult;
  ring: Ring;
}

/** The window aggregates of one target. */
export interface WindowStats {
  scrapes: number;
  failures: number;
  /** Latency percentiles over the window (nearest rank), ms; null with no samples. */
  p50Ms: number | null;
  p99Ms: number | null;
  /** Body bytes sent over the window, and per scrape on average. */
  bytes: number;
  avgBytes: number | null;
  /** Per bucket (oldest first): the slowest scrape's ms, or null for none; and whether any failed. */
  spark: { ms: (number | null)[]; failed: boolean[] };
}

export function isOk(status: number): boolean {
  return status >= 200 && status < 300;
}

/** Nearest-rank percentile of sorted values (p in 0..100). */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

const key = (service: string, replica: string | undefined) => `${replica ?? ""}\u0000${service}`;

export class ScrapeRecorder {
  readonly opts: RecorderOptions;
  /** Insertion order is recency: a record moves its target to the end; eviction takes the first. */
  readonly #targets = new Map<string, Target>();
  evicted = 0;

  constructor(opts: Partial<RecorderOptions> = {}) {
    this.opts = { ...RECORDER_DEFAULTS, ...opts };
    for (const k of ["maxTargets", "maxSamples", "windowMs", "sparkBuckets"] as const) {
      if (!Number.isInteger(this.opts[k]) || this.opts[k] < 1) throw new RangeError(`${k} must be a positive integer`);
    }
  }

  get size(): number {
    return this.#targets.size;
  }

  /** Records one scrape (texts are cleaned and capped here). */
  record(r: ScrapeResult): void {
    const k = key(r.service, r.replica);
    let t = this.#targets.get(k);
    if (t) this.#targets.delete(k);
    else {
      t = { service: r.service, replica: r.replica, last: r, ring: new Ring(this.opts.maxSamples) };
      while (this.#targets.size >= this.opts.maxTargets) {
        this.#targets.delete(this.#targets.keys().next().value!);
        this.evicted++;
      }
    }
    t.last = {
      ...r,
      error: r.error === undefined ? undefined : cleanText(r.error),
      principal: cleanText(r.principal, USER_AGENT_MAX),
      address: r.address === undefined ? undefined : cleanText(r.address, 64),
      userAgent: r.userAgent === undefined ? undefined : cleanText(r.userAgent, USER_AGENT_MAX),
    };
    t.ring.push(r.at, Math.max(0, r.durationMs), Math.max(0, r.bytes), r.status);
    this.#targets.set(k, t);
  }

  /** The last scrape of a target, if it is kept. */
  last(service: string, replica?: string): ScrapeResult | undefined {
    return this.#targets.get(key(service, replica))?.last;
  }

  state(service: string, replica?: string): TargetState {
    const l = this.last(service, replica);
    return l === undefined ? "never" : isOk(l.status) ? "ok" : "failing";
  }

  /** Every kept target's name, least recently scraped first. */
  targets(): { service: string; replica: string | undefined }[] {
    return [...this.#targets.values()].map((t) => ({ service: t.service, replica: t.replica }));
  }

  /** A kept target's samples, oldest first (to merge the recorders of several workers: ./merge.ts). */
  samples(service: string, replica?: string): { at: number; ms: number; bytes: number; status: number }[] {
    const t = this.#targets.get(key(service, replica));
    return t ? [...t.ring.samples()] : [];
  }

  /** Aggregates over the window ending at `now`. */
  stats(service: string, replica: string | undefined, now = Date.now()): WindowStats {
    const { windowMs, sparkBuckets } = this.opts;
    const spark = {
      ms: new Array<number | null>(sparkBuckets).fill(null),
      failed: new Array<boolean>(sparkBuckets).fill(false),
    };
    const out: WindowStats = { scrapes: 0, failures: 0, p50Ms: null, p99Ms: null, bytes: 0, avgBytes: null, spark };
    const t = this.#targets.get(key(service, replica));
    if (!t) return out;
    const from = now - windowMs;
    const ms: number[] = [];
    for (const s of t.ring.samples()) {
      if (s.at <= from || s.at > now) continue;
      ms.push(s.ms);
      out.scrapes++;
      out.bytes += s.bytes;
      const b = Math.min(sparkBuckets - 1, Math.floor(((s.at - from) / windowMs) * sparkBuckets));
      spark.ms[b] = Math.max(spark.ms[b] ?? 0, s.ms);
      if (!isOk(s.status)) {
        out.failures++;
        spark.failed[b] = true;
      }
    }
    ms.sort((a, b) => a - b);
    out.p50Ms = percentile(ms, 50);
    out.p99Ms = percentile(ms, 99);
    out.avgBytes = out.scrapes ? Math.round(out.bytes / out.scrapes) : null;
    return out;
  }

  /** Memory held by the sample buffers (bytes), for tests and the bound in docs/status.md. */
  get sampleBytes(): number {
    let n = 0;
    for (const t of this.#targets.values()) n += t.ring.byteSize;
    return n;
  }
}
