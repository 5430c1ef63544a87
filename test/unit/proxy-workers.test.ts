/**
 * The pure parts of `scrapez proxy --workers N` (src/cli/workers/, src/proxy/status/merge.ts, src/proxy/metrics.ts):
 * how many workers by default, how the workers' scrape records merge for /status, and how their metrics add up for
 * /metrics. The processes themselves are in test/integration/proxy-workers.test.ts.
 */
import { availableParallelism } from "node:os";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { defaultWorkers, WORKER_MEMORY_BYTES } from "../../src/cli/workers/default-workers.js";
import { aggregateMetrics, gaugesOf, SlotCounters, type MetricsJson } from "../../src/proxy/metrics.js";
import { mergeRecords, type RecordDump } from "../../src/proxy/status/merge.js";
import { ScrapeRecorder, type ScrapeResult } from "../../src/proxy/status/recorder.js";

describe("the default number of workers", () => {
  it("is the CPUs this process may use when no cgroup limit is set (null: no such file)", () => {
    const n = Math.min(64, availableParallelism());
    expect(defaultWorkers(null, null)).toBe(n);
    expect(defaultWorkers("max 100000\n", "max\n")).toBe(n);
  });

  it("is capped by a cgroup v2 memory limit: a worker's share each, never below 1", () => {
    const mib = (m: number) => String(m * 1024 * 1024);
    expect(defaultWorkers(null, mib(512))).toBe(Math.min(2, availableParallelism()));
    expect(defaultWorkers(null, mib(256))).toBe(1);
    expect(defaultWorkers(null, mib(64))).toBe(1);
    expect(defaultWorkers(null, String(WORKER_MEMORY_BYTES * 100))).toBe(Math.min(64, availableParallelism()));
  });

  it("is capped by a cgroup v2 CPU quota, rounded up, and never below 1", () => {
    expect(defaultWorkers("100000 100000\n", null)).toBe(1);
    expect(defaultWorkers("50000 100000\n", null)).toBe(1);
    expect(defaultWorkers("150000 100000\n", null)).toBe(Math.min(2, availableParallelism()));
    expect(defaultWorkers("1 100000", null)).toBe(1);
  });
});

const scrape = (at: number, status = 200, extra: Partial<ScrapeResult> = {}): ScrapeResult => ({
  service: "node",
  at,
  durationMs: at % 100,
  bytes: 1000 + (at % 7),
  status,
  principal: "bearer",
  ...extra,
});

/** What a worker's recorder sends the primary (as dumpRecords makes it). */
function dump(r: ScrapeRecorder): RecordDump[] {
  return r.targets().map(({ service, replica }) => ({
    service,
    replica,
    last: r.last(service, replica)!,
    samples: r.samples(service, replica),
  }));
}

describe("/status across workers: mergeRecords", () => {
  it("holds every worker's samples of a target, and the newest last scrape with its error text", () => {
    const now = Date.now();
    const a = new ScrapeRecorder();
    const b = new ScrapeRecorder();
    for (let i = 0; i < 10; i++) (i % 2 ? a : b).record(scrape(now - 10_000 + i * 1000));
    b.record(scrape(now - 500, 502, { error: "the bind side said no" }));
    a.record(scrape(now - 800, 200, { service: "other" }));
    const merged = mergeRecords([dump(a), dump(b)]);
    const w = merged.stats("node", undefined, now);
    expect(w.scrapes).toBe(11);
    expect(w.failures).toBe(1);
    expect(merged.last("node")).toMatchObject({ status: 502, error: "the bind side said no", at: now - 500 });
    expect(merged.state("node")).toBe("failing");
    expect(merged.last("other")?.status).toBe(200);
    // Samples are in time order, the bytes and durations as each worker recorded them.
    const s = merged.samples("node");
    expect(s.map((x) => x.at)).toEqual([...s.map((x) => x.at)].sort((x, y) => x - y));
    expect(s.reduce((sum, x) => sum + x.bytes, 0)).toBe(
      a.samples("node").reduce((sum, x) => sum + x.bytes, 0) + b.samples("node").reduce((sum, x) => sum + x.bytes, 0),
    );
  });

  it("keeps replicas apart from their service, and the recorder's bounds", () => {
    const now = Date.now();
    const max = 16;
    const a = new ScrapeRecorder({ maxSamples: max });
    for (let i = 0; i < max; i++) a.record(scrape(now - 5000 + i, 200, { replica: "bind-a" }));
    const b = new ScrapeRecorder({ maxSamples: max });
    for (let i = 0; i < max; i++) b.record(scrape(now - 4000 + i));
    const merged = mergeRecords([dump(a), dump(b)], { maxSamples: max });
    expect(merged.samples("node", "bind-a")).toHaveLength(max);
    expect(merged.samples("node")).toHaveLength(max);
    // b's samples twice over: the ring keeps the newest `max`, and the last scrape is b's last.
    const twice = mergeRecords([dump(a), dump(b), dump(b)], { maxSamples: max });
    expect(twice.samples("node")).toHaveLength(max);
    expect(twice.samples("node")[0]!.at).toBe(now - 4000 + max / 2);
    expect(twice.last("node")?.at).toBe(now - 4000 + max - 1);
  });
});

/** One worker's registry, shaped as ProxyMetrics's (names and aggregation only). */
async function worker(opts: { requests: number; pools: number; sd: number; certExpiry: number; start: number }) {
  const registry = new Registry();
  new Counter({ name: "scrapez_proxy_requests_total", help: "h", labelNames: ["code"], registers: [registry] }).inc(
    { code: "200" },
    opts.requests,
  );
  new Gauge({ name: "scrapez_proxy_pools", help: "h", registers: [registry] }).set(opts.pools);
  new Gauge({ name: "scrapez_proxy_sd_targets", help: "h", registers: [registry] }).set(opts.sd);
  new Gauge({
    name: "scrapez_identity_cert_expiry_timestamp_seconds",
    help: "h",
    labelNames: ["identity"],
    registers: [registry],
  }).set({ identity: "p" }, opts.certExpiry);
  new Gauge({ name: "scrapez_build_info", help: "h", labelNames: ["version"], registers: [registry] }).set(
    { version: "1" },
    1,
  );
  // prom-client's own process_start_time_seconds says 'omit' for clusters; scrapez keeps the earliest.
  new Gauge({ name: "process_start_time_seconds", help: "h", aggregator: "omit", registers: [registry] }).set(
    opts.start,
  );
  new Histogram({
    name: "scrapez_proxy_dial_duration_seconds",
    help: "h",
    buckets: [1],
    registers: [registry],
  }).observe(0.5);
  return (await registry.getMetricsAsJSON()) as MetricsJson;
}

describe("/metrics across workers: aggregateMetrics", () => {
  it("sums counters, histograms and load gauges; takes the largest list, the earliest expiry and start, one build", async () => {
    const parts = await Promise.all([
      worker({ requests: 30, pools: 2, sd: 5, certExpiry: 2000, start: 100 }),
      worker({ requests: 12, pools: 3, sd: 6, certExpiry: 1000, start: 90 }),
    ]);
    const { text } = await aggregateMetrics(parts);
    expect(text).toContain('scrapez_proxy_requests_total{code="200"} 42');
    expect(text).toContain("scrapez_proxy_pools 5");
    expect(text).toContain("scrapez_proxy_sd_targets 6");
    expect(text).toContain('scrapez_identity_cert_expiry_timestamp_seconds{identity="p"} 1000');
    expect(text).toContain('scrapez_build_info{version="1"} 1');
    expect(text).toContain("process_start_time_seconds 90");
    expect(text).toContain('scrapez_proxy_dial_duration_seconds_bucket{le="1"} 2');
    expect(text).toContain("scrapez_proxy_dial_duration_seconds_count 2");
  });
});

describe("/metrics across worker restarts: SlotCounters", () => {
  const req = (text: string) => Number(/^scrapez_proxy_requests_total\{code="200"\} (\S+)$/m.exec(text)?.[1]);
  /** The exposition the primary makes: each answering worker's gauges and every slot's counters. */
  const exposition = async (slots: SlotCounters[], answers: MetricsJson[]) =>
    (await aggregateMetrics([...answers.map(gaugesOf), ...slots.map((s) => s.counters())])).text;

  it("carries a worker's last counters into its restarted slot, so no sum goes down; its gauges go with it", async () => {
    const [one, two] = [new SlotCounters(), new SlotCounters()];
    const a = await worker({ requests: 30, pools: 2, sd: 5, certExpiry: 2000, start: 100 });
    const b = await worker({ requests: 12, pools: 3, sd: 6, certExpiry: 1000, start: 90 });
    one.update(a);
    two.update(b);
    const before = await exposition([one, two], [a, b]);
    expect(req(before)).toBe(42);
    // Worker 1 exits; until it is back only worker 2 answers, and then the new worker 1 has counted 3 itself.
    one.retire();
    const down = await exposition([one, two], [b]);
    expect(req(down)).toBe(42);
    expect(down).toContain("scrapez_proxy_pools 3");
    const a2 = await worker({ requests: 3, pools: 1, sd: 6, certExpiry: 2000, start: 200 });
    one.update(a2);
    const after = await exposition([one, two], [a2, b]);
    expect(req(after)).toBe(45);
    expect(after).toContain('scrapez_proxy_dial_duration_seconds_bucket{le="1"} 3');
    expect(after).toContain("scrapez_proxy_dial_duration_seconds_count 3");
    expect(after).toContain("scrapez_proxy_pools 4");
    // Twice more: the carried counters add up.
    one.retire();
    one.update(await worker({ requests: 1, pools: 0, sd: 6, certExpiry: 2000, start: 300 }));
    expect(req(await exposition([one, two], [b]))).toBe(46);
  });

  it("counts a worker that did not answer with the last counters it sent, and keeps the highest of late answers", async () => {
    const slot = new SlotCounters();
    const newer = await worker({ requests: 50, pools: 2, sd: 5, certExpiry: 2000, start: 100 });
    const older = await worker({ requests: 40, pools: 2, sd: 5, certExpiry: 2000, start: 100 });
    slot.update(newer);
    expect(req(await exposition([slot], []))).toBe(50);
    // Answers to two asks in flight together, the older last: the sum stays at the newer one's.
    slot.update(older);
    expect(req(await exposition([slot], [older]))).toBe(50);
    // Its gauges are only ever what it answered this time.
    expect(await exposition([slot], [])).not.toContain("scrapez_proxy_pools");
  });
});
