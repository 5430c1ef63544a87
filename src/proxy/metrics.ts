/**
 * The proxy's self-metrics, in a private prom-client Registry (served on /metrics). No label ever takes a value a
 * request chooses: `service` is a service name from the catalog (bounded by the overlay) or one of a few fixed
 * strings, `code` an HTTP status (non-standard ones bucketed), `result` an error code from a fixed set.
 */
import http from "node:http";
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, type Aggregator } from "prom-client";
import type { ResponseLike } from "../common/http-like.js";
import { ErrorCodes } from "../overlay/types.js";

const SDK_CODES = new Set<string>(Object.values(ErrorCodes));

/**
 * An error code as a label value: the SDK's codes, Node's errno/llhttp/internal codes (finite sets defined by
 * Node), anything else "error".
 */
export function resultLabel(code: unknown): string {
  if (typeof code !== "string") return "error";
  if (SDK_CODES.has(code)) return code;
  return /^(E[A-Z]{2,20}|HPE_[A-Z_]{1,40}|ERR_[A-Z0-9_]{1,60})$/.test(code) ? code : "error";
}

/** An HTTP status as a label value: registered ones as they are, others (an upstream's `777`) as `7xx`. */
export function codeLabel(status: number): string {
  if (http.STATUS_CODES[status] !== undefined) return String(status);
  return Number.isInteger(status) && status >= 100 && status <= 999 ? `${Math.floor(status / 100)}xx` : "other";
}

export class ProxyMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: "scrapez_proxy_requests_total",
    help:
      "Requests answered, by overlay service (or endpoint: /sd; (refused) for hosts that are not dialable " +
      "services; (auth) for refused credentials; (host) for a Host not allowed; (limit) for tunnels over the cap) " +
      "and HTTP status (499: the client went away first).",
    labelNames: ["service", "code"] as const,
    registers: [this.registry],
  });
  readonly dials = new Counter({
    name: "scrapez_proxy_dials_total",
    help: "Overlay dials, by service and result (ok, or the SDK's error code).",
    labelNames: ["service", "result"] as const,
    registers: [this.registry],
  });
  readonly dialDuration = new Histogram({
    name: "scrapez_proxy_dial_duration_seconds",
    help: "Time to dial an overlay service (successful dials).",
    labelNames: ["service"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly active = new Gauge({
    name: "scrapez_proxy_active_connections",
    help: "Open overlay connections (pooled keep-alive connections and CONNECT tunnels).",
    registers: [this.registry],
  });
  readonly tunnels = new Gauge({
    name: "scrapez_proxy_tunnels_open",
    help: "CONNECT tunnels open or being dialed (at most tunnels.maxConcurrent).",
    registers: [this.registry],
  });
  readonly tunnelEvents = new Counter({
    name: "scrapez_proxy_tunnel_events_total",
    help: "CONNECT tunnel events: over-limit (refused with 503), idle-timeout (closed after tunnels.idleSeconds).",
    labelNames: ["event"] as const,
    registers: [this.registry],
  });
  readonly poolEvictions = new Counter({
    name: "scrapez_proxy_pool_evictions_total",
    help: "Keep-alive pools closed because agent.maxPools were open; a rising count means more targets than agent.maxPools, so scrapes dial anew.",
    registers: [this.registry],
  });
  readonly pools = new Gauge({
    name: "scrapez_proxy_pools",
    help: "Keep-alive connection pools (one per service or replica in use; at most agent.maxPools).",
    registers: [this.registry],
  });
  readonly sdTargets = new Gauge({
    name: "scrapez_proxy_sd_targets",
    help: "Targets the service catalog offers on /sd (before query-parameter filters).",
    registers: [this.registry],
  });
  readonly catalogRefreshes = new Counter({
    name: "scrapez_proxy_catalog_refreshes_total",
    help: "Service list refreshes, by result (ok or error).",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly replicaLists = new Counter({
    name: "scrapez_proxy_replica_lists_total",
    help:
      "Replica lists asked of the controller (one request each), by cause (refresh: the service list's refresh, for " +
      "a service that is new or changed or whose list is 10 refresh periods old; miss: a request named a replica the " +
      "list did not have; refused: a dial of a replica was refused; at most once per service per 5 s) and result.",
    labelNames: ["cause", "result"] as const,
    registers: [this.registry],
  });

  readonly warmDials = new Counter({
    name: "scrapez_proxy_warm_dials_total",
    help:
      "Connections dialed ahead of a target's first scrape (warm-up: each target /sd lists, paced by how fast the " +
      "controller answers), by result (ok, or the SDK's error code).",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });
  readonly warmOutcomes = new Counter({
    name: "scrapez_proxy_warm_connections_total",
    help:
      "What became of the connections dialed ahead: taken (by a scrape or tunnel), expired (unused for the hold " +
      "time), closed (by the far end while held).",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly warmHeld = new Gauge({
    name: "scrapez_proxy_warm_connections_held",
    help: "Connections dialed ahead and held for a target's first scrape.",
    registers: [this.registry],
  });
  readonly warmConcurrency = new Gauge({
    name: "scrapez_proxy_warm_concurrency",
    help: "How many warm-up dials may be in flight now (grows while the controller answers fast, shrinks when slow).",
    registers: [this.registry],
  });

  #certSources: readonly { identityName: string; certExpiresAt?: Date }[] = [];
  readonly certExpiry: Gauge<"identity"> = new Gauge({
    name: "scrapez_identity_cert_expiry_timestamp_seconds",
    help: "When each identity's certificate expires (Unix seconds); it moves forward when scrapez renews it.",
    labelNames: ["identity"] as const,
    registers: [this.registry],
    collect: () => {
      this.certExpiry.reset();
      for (const s of this.#certSources) {
        if (s.certExpiresAt) this.certExpiry.set({ identity: s.identityName }, s.certExpiresAt.getTime() / 1000);
      }
    },
  });

  /** Reads the certificates' expiry (and the sessions made) from `sources` at each scrape of /metrics. */
  watchCertExpiry(sources: readonly { identityName: string; certExpiresAt?: Date; sessionsCreated?: number }[]): void {
    this.#certSources = sources;
  }

  readonly sessionsCreated: Counter<"identity"> = new Counter({
    name: "scrapez_proxy_sessions_created_total",
    help:
      "Sessions each identity asked of the controller (one Dial session per service, shared by all its replicas, " +
      "made again only when a dial shows it no longer works).",
    labelNames: ["identity"] as const,
    registers: [this.registry],
    collect: () => {
      this.sessionsCreated.reset();
      for (const s of this.#certSources as readonly { identityName: string; sessionsCreated?: number }[]) {
        if (s.sessionsCreated !== undefined) this.sessionsCreated.inc({ identity: s.identityName }, s.sessionsCreated);
      }
    },
  });

  /** Set with --workers (src/cli/workers/): /metrics then answers every worker's metrics, aggregated. */
  #exposition: (() => Promise<string>) | undefined;

  /** What /metrics answers: this process's metrics, or with several workers all of theirs (aggregateMetrics). */
  exposition(): Promise<string> {
    return this.#exposition ? this.#exposition() : this.registry.metrics();
  }

  /**
   * Makes this process one of several workers: `slot` labels its requests (scrapez_proxy_worker_requests_total,
   * counted by `countWorkerRequest`) and /metrics answers with `aggregated` instead of the local registry.
   */
  asWorker(slot: number, aggregated: () => Promise<string>): void {
    this.#exposition = aggregated;
    this.#workerSlot = String(slot);
    this.#workerRequests ??= new Counter({
      name: "scrapez_proxy_worker_requests_total",
      help: "Requests each worker process answered (scrapez proxy --workers N; worker is its slot, 1..N).",
      labelNames: ["worker"] as const,
      registers: [this.registry],
    });
  }

  #workerSlot = "";
  #workerRequests: Counter<"worker"> | undefined;

  /** Counts one request answered by this worker (no-op unless asWorker was called). */
  countWorkerRequest(): void {
    this.#workerRequests?.inc({ worker: this.#workerSlot });
  }

  /** Counts a request once, when its answer is finished or the client went away (code 499). */
  countAnswer(res: ResponseLike, service: () => string): void {
    res.once("close", () =>
      this.requests.inc({ service: service(), code: res.writableFinished ? codeLabel(res.statusCode) : "499" }),
    );
  }

  /** Times one dial and records its result. `service` must be a catalog service name. */
  async timeDial<T>(service: string, dial: () => Promise<T>): Promise<T> {
    const started = process.hrtime.bigint();
    try {
      const c = await dial();
      this.dials.inc({ service, result: "ok" });
      this.dialDuration.observe({ service }, Number(process.hrtime.bigint() - started) / 1e9);
      return c;
    } catch (err) {
      this.dials.inc({ service, result: resultLabel((err as { code?: unknown } | null)?.code) });
      throw err instanceof Error ? err : new Error(`dial failed: ${String(err)}`);
    }
  }
}

/**
 * How each worker's values combine at /metrics where summing them would mislead (everything else is summed:
 * requests, dials, histograms, open connections and pools, process CPU and memory are totals across the
 * processes). Every worker has the same service list, so its size is the largest one; a certificate's expiry is
 * the earliest any process still holds; the build is the same in each, and the process started when the first did.
 */
export const WORKER_AGGREGATORS: Readonly<Record<string, Aggregator>> = {
  scrapez_proxy_sd_targets: "max",
  scrapez_identity_cert_expiry_timestamp_seconds: "min",
  scrapez_build_info: "max",
  nodejs_version_info: "first",
  process_start_time_seconds: "min",
  process_max_fds: "min",
};

/** The metrics of the primary process of `scrapez proxy --workers N` (added to the workers' at /metrics). */
export class WorkerPoolMetrics {
  readonly registry = new Registry();
  readonly workers = new Gauge({
    name: "scrapez_proxy_workers",
    help: "Worker processes serving (scrapez proxy --workers N): started and listening.",
    registers: [this.registry],
  });
  readonly restarts = new Counter({
    name: "scrapez_proxy_worker_restarts_total",
    help: "Worker processes started again after one exited (by worker slot, 1..N).",
    labelNames: ["worker"] as const,
    registers: [this.registry],
  });
}

/** One process's metrics as `Registry.getMetricsAsJSON()` gives them (and the IPC channel carries them). */
export type MetricsJson = Awaited<ReturnType<Registry["getMetricsAsJSON"]>>;

type MetricJson = MetricsJson[number];

/** Families Prometheus reads as only ever rising (rate(), increase()): counters, and histograms' buckets, sum, count. */
const rises = (m: MetricJson) => {
  const type = m.type as unknown as string; // prom-client's typings say a numeric enum; the values are these names
  return type === "counter" || type === "histogram";
};

/** `a` and `b`'s counters and histograms as one: values with the same name and labels summed (or `by`). */
export function sumCounters(
  a: MetricsJson,
  b: MetricsJson,
  by: (x: number, y: number) => number = (x, y) => x + y,
): MetricsJson {
  const out = new Map<string, MetricJson>();
  for (const m of [...a, ...b]) {
    if (!rises(m)) continue;
    const seen = out.get(m.name);
    if (!seen) {
      out.set(m.name, { ...m, values: m.values.map((v) => ({ ...v })) });
      continue;
    }
    const key = (v: MetricJson["values"][number]) =>
      `${(v as { metricName?: string }).metricName ?? ""}\u0000${JSON.stringify(Object.entries(v.labels).sort())}`;
    const byKey = new Map(seen.values.map((v) => [key(v), v]));
    for (const v of m.values) {
      const same = byKey.get(key(v));
      if (same) same.value = by(same.value, v.value);
      else seen.values.push({ ...v });
    }
  }
  return [...out.values()];
}

/** A process's gauges only (what is left of `m` once its counters and histograms are taken out). */
export function gaugesOf(m: MetricsJson): MetricsJson {
  return m.filter((f) => !rises(f));
}

/**
 * What one worker slot of `scrapez proxy --workers N` has counted, kept by the primary so that the counters summed
 * at /metrics never go down (Prometheus reads a drop as a counter reset and counts the whole value again): a worker
 * that exits takes its counters with it, and a worker that does not answer in time is left out of the collect.
 * The slot's earlier workers' last counters are carried and added to the running worker's, and a worker that is
 * late counts with the last counters it sent. What a worker counted after its last answer and before it died is
 * lost (never reported, so no drop).
 */
export class SlotCounters {
  /** The counters of this slot's workers that exited, summed. */
  #carried: MetricsJson = [];
  /** The running worker's counters: the highest it sent of each (answers to concurrent asks may come in any order). */
  #last: MetricsJson | undefined;

  /** The running worker answered: `metrics` are its own (the gauges are not kept). */
  update(metrics: MetricsJson): void {
    this.#last = sumCounters(this.#last ?? [], metrics, Math.max);
  }

  /** The running worker exited: its last counters are carried into the next one's. */
  retire(): void {
    if (this.#last) this.#carried = sumCounters(this.#carried, this.#last);
    this.#last = undefined;
  }

  /** The slot's part of the counters at /metrics: the carried ones and the running worker's last. */
  counters(): MetricsJson {
    return this.#last ? sumCounters(this.#carried, this.#last) : this.#carried;
  }
}

/**
 * The exposition of several processes' metrics as one (prom-client's AggregatorRegistry): values with the same
 * name and labels are summed, except those in WORKER_AGGREGATORS.
 */
export async function aggregateMetrics(parts: readonly MetricsJson[]): Promise<{ text: string; contentType: string }> {
  const adjusted = parts.map((metrics) =>
    metrics.map((m) => (WORKER_AGGREGATORS[m.name] ? { ...m, aggregator: WORKER_AGGREGATORS[m.name]! } : m)),
  );
  const registry = AggregatorRegistry.aggregate(adjusted);
  return { text: await registry.metrics(), contentType: registry.contentType };
}
