/**
 * The status page's aggregation: the per-target ring buffer and its bounds, percentiles, the 5-minute window and
 * sparkline buckets, LRU eviction of targets, state, and the status document built from a real ServiceCatalog
 * (over the in-memory overlay stand-in): rows, sort order, filters and which targets are recorded at all.
 */
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/common/log.js";
import { ServiceCatalog } from "../../src/proxy/catalog.js";
import { ProxyMetrics } from "../../src/proxy/metrics.js";
import { buildStatus, compareRows, parseFilter, type TargetRow } from "../../src/proxy/status/json.js";
import { ERROR_TEXT_MAX, cleanText } from "../../src/common/format.js";
import { ScrapeRecorder, percentile, type ScrapeResult } from "../../src/proxy/status/recorder.js";
import { StandInOverlay } from "../harness/proxy-standin.js";

const T0 = 1_750_000_000_000;

function scrape(over: Partial<ScrapeResult> = {}): ScrapeResult {
  return { service: "node", at: T0, durationMs: 10, bytes: 100, status: 200, principal: "bearer", ...over };
}

async function catalogOf(overlay: StandInOverlay): Promise<ServiceCatalog> {
  const c = new ServiceCatalog(
    [overlay],
    { refreshSeconds: 3600 },
    createLogger("error", {}, () => {}),
    new ProxyMetrics(),
  );
  await c.start();
  return c;
}

describe("percentile (nearest rank)", () => {
  it("is null for no values and picks the nearest-rank element otherwise", () => {
    expect(percentile([], 50)).toBeNull();
    expect(percentile([7], 99)).toBe(7);
    const v = Array.from({ length: 100 }, (_, i) => i + 1); // 1..100
    expect(percentile(v, 50)).toBe(50);
    expect(percentile(v, 99)).toBe(99);
    expect(percentile(v, 100)).toBe(100);
    expect(percentile([1, 2, 3, 1000], 50)).toBe(2);
    expect(percentile([1, 2, 3, 1000], 99)).toBe(1000);
  });
});

describe("ScrapeRecorder", () => {
  it("keeps the last scrape and decides the state: ok (2xx), failing (anything else), never", () => {
    const r = new ScrapeRecorder();
    expect(r.state("node")).toBe("never");
    r.record(scrape({ status: 200 }));
    expect(r.state("node")).toBe("ok");
    r.record(scrape({ status: 502, error: "upstream refused", at: T0 + 1 }));
    expect(r.state("node")).toBe("failing");
    expect(r.last("node")).toMatchObject({ status: 502, error: "upstream refused" });
    r.record(scrape({ status: 204, at: T0 + 2 }));
    expect(r.state("node")).toBe("ok");
    // A replica is its own target.
    expect(r.state("node", "bind-a")).toBe("never");
    r.record(scrape({ replica: "bind-a", status: 499 }));
    expect(r.state("node", "bind-a")).toBe("failing");
    expect(r.state("node")).toBe("ok");
  });

  it("ring buffer: never more than maxSamples per target, the newest kept, memory bounded", () => {
    const r = new ScrapeRecorder({ maxSamples: 50, windowMs: 10 * 60_000 });
    for (let i = 0; i < 10_000; i++) r.record(scrape({ at: T0 + i, durationMs: i }));
    const s = r.stats("node", undefined, T0 + 10_000);
    expect(s.scrapes).toBe(50);
    // The newest 50: durations 9950..9999.
    expect(s.p50Ms).toBe(9974);
    expect(s.p99Ms).toBe(9999);
    // 50 samples of 8+4+8+2 bytes, in arrays grown by doubling up to the cap.
    expect(r.sampleBytes).toBe(50 * 22);
  });

  it("aggregates only the last window: p50/p99, failures, bytes and per-scrape size", () => {
    const r = new ScrapeRecorder({ windowMs: 300_000 });
    const now = T0 + 600_000;
    // Old samples (outside the window) with huge values must not count.
    for (let i = 0; i < 20; i++) r.record(scrape({ at: now - 400_000 + i, durationMs: 50_000, bytes: 1e9 }));
    for (let i = 1; i <= 100; i++) {
      r.record(scrape({ at: now - 290_000 + i * 1000, durationMs: i, bytes: 1000, status: i % 10 === 0 ? 504 : 200 }));
    }
    const s = r.stats("node", undefined, now);
    expect(s).toMatchObject({ scrapes: 100, failures: 10, p50Ms: 50, p99Ms: 99, bytes: 100_000, avgBytes: 1000 });
    expect(r.stats("other", undefined, now)).toMatchObject({ scrapes: 0, p50Ms: null, p99Ms: null, avgBytes: null });
  });

  it("sparkline buckets: the slowest scrape per bucket, null where none, failed buckets flagged", () => {
    const r = new ScrapeRecorder({ windowMs: 300_000, sparkBuckets: 30 });
    const now = T0 + 300_000;
    r.record(scrape({ at: now - 295_000, durationMs: 5 })); // bucket 0
    r.record(scrape({ at: now - 294_000, durationMs: 9 })); // bucket 0 again: max 9
    r.record(scrape({ at: now - 5_000, durationMs: 3, status: 502 })); // bucket 29, failed
    const { spark } = r.stats("node", undefined, now);
    expect(spark.ms).toHaveLength(30);
    expect(spark.ms[0]).toBe(9);
    expect(spark.ms[29]).toBe(3);
    expect(spark.ms.slice(1, 29).every((v) => v === null)).toBe(true);
    expect(spark.failed[29]).toBe(true);
    expect(spark.failed.filter(Boolean)).toHaveLength(1);
  });

  it("keeps at most maxTargets targets, evicting the least recently scraped", () => {
    const r = new ScrapeRecorder({ maxTargets: 3 });
    for (const s of ["a", "b", "c"]) r.record(scrape({ service: s }));
    r.record(scrape({ service: "a", at: T0 + 1 })); // a is used again: b is now the oldest
    r.record(scrape({ service: "d", at: T0 + 2 }));
    expect(r.size).toBe(3);
    expect(r.targets().map((t) => t.service)).toEqual(["c", "a", "d"]);
    expect(r.state("b")).toBe("never");
    expect(r.evicted).toBe(1);
    for (let i = 0; i < 1000; i++) r.record(scrape({ service: `flood-${i}` }));
    expect(r.size).toBe(3);
    expect(r.evicted).toBe(1001);
  });

  it("cleans and caps peer-controlled texts (control characters and terminal escapes become spaces)", () => {
    const r = new ScrapeRecorder();
    r.record(scrape({ status: 502, error: `bad\x1b[31m red\r\nnext ${"x".repeat(1000)}`, principal: "basic:\x07bob" }));
    const l = r.last("node")!;
    expect(l.error!.length).toBe(ERROR_TEXT_MAX);
    expect(l.error).toMatch(/^bad \[31m red next x+…$/);
    expect(l.principal).toBe("basic: bob");
    expect(cleanText("  a\u2028b\tc  ")).toBe("a b c");
  });

  it("rejects nonsensical bounds", () => {
    expect(() => new ScrapeRecorder({ maxTargets: 0 })).toThrow(/maxTargets/);
    expect(() => new ScrapeRecorder({ maxSamples: 1.5 })).toThrow(/maxSamples/);
  });
});

describe("the status document (buildStatus over a real ServiceCatalog)", () => {
  async function setup() {
    const ov = new StandInOverlay("prometheus-central");
    ov.add("node", { attrs: ["node", "linux"] });
    ov.add("app", { attrs: ["app"] });
    ov.add("db", { attrs: [] });
    ov.add("bind-only", { permissions: ["Bind"] });
    ov.replicaMap.set("node", ["bind-a", "bind-b"]);
    const catalog = await catalogOf(ov);
    return { ov, catalog, rec: new ScrapeRecorder() };
  }

  it("lists every discovered service and replica, never-scraped ones too, failing first", async () => {
    const { ov, catalog, rec } = await setup();
    const now = T0 + 1000;
    rec.record(scrape({ service: "node", replica: "bind-b", status: 502, error: "refused", at: T0 }));
    rec.record(scrape({ service: "app", status: 200, at: T0 }));
    const doc = buildStatus(catalog, [ov], rec, {}, now);
    expect(doc.targets.map((t) => [t.state, t.service, t.replica])).toEqual([
      ["failing", "node", "bind-b"],
      ["ok", "app", null],
      ["never", "db", null],
      ["never", "node", "bind-a"],
    ]);
    expect(doc.summary).toEqual({ targets: 4, ok: 1, failing: 1, never: 2, matched: 4, shown: 4 });
    const failing = doc.targets[0]!;
    expect(failing).toMatchObject({
      host: "bind-b~node",
      attributes: ["linux", "node"],
      identity: "prometheus-central",
      discovered: true,
      lastStatus: 502,
      lastError: "refused",
      lastScrape: new Date(T0).toISOString(),
      scrapedBy: { principal: "bearer", address: null, userAgent: null },
    });
    expect(doc.proxy.identities).toEqual([{ name: "prometheus-central", controller: null, routers: [] }]);
    expect(doc.proxy.serviceList).toMatchObject({ loaded: true, ready: true, error: null });
    expect(doc.window).toEqual({ seconds: 300, sparkBucketSeconds: 10 });
    catalog.close();
  });

  it("filters by name substring and by state; counts stay over all targets", async () => {
    const { ov, catalog, rec } = await setup();
    rec.record(scrape({ service: "node", replica: "bind-b", status: 502 }));
    const byName = buildStatus(catalog, [ov], rec, parseFilter(new URLSearchParams("q=BIND")), T0);
    expect(byName.targets.map((t) => t.host)).toEqual(["bind-b~node", "bind-a~node"]);
    expect(byName.summary).toMatchObject({ targets: 4, matched: 2, shown: 2 });
    const f = parseFilter(new URLSearchParams("state=never,bogus&state=failing"));
    expect(f.state).toEqual(["never", "failing"]);
    const byState = buildStatus(catalog, [ov], rec, f, T0);
    expect(byState.targets.map((t) => t.state)).toEqual(["failing", "never", "never", "never"]);
    const limited = buildStatus(catalog, [ov], rec, parseFilter(new URLSearchParams("limit=1")), T0);
    expect(limited.targets.map((t) => t.state)).toEqual(["failing"]);
    expect(limited.summary).toMatchObject({ targets: 4, matched: 4, shown: 1 });
    catalog.close();
  });

  it("lists a scraped target that the catalog knows but /sd leaves out, and never one it does not know", async () => {
    const { ov, catalog, rec } = await setup();
    rec.record(scrape({ service: "node" })); // the service-level address of a replicated service
    rec.record(scrape({ service: "node", replica: "made-up" })); // a replica nobody bound
    rec.record(scrape({ service: "gone" }));
    const doc = buildStatus(catalog, [ov], rec, {}, T0);
    const node = doc.targets.find((t) => t.service === "node" && t.replica === null);
    expect(node).toMatchObject({ state: "ok", discovered: false });
    expect(doc.targets.some((t) => t.replica === "made-up" || t.service === "gone")).toBe(false);
    expect(catalog.describe({ service: "node", identity: "made-up" })).toBeUndefined();
    expect(catalog.describe({ service: "bind-only" })).toBeUndefined();
    catalog.close();
  });

  it("shows each identity's controller and routers when the overlay reports them", async () => {
    const { ov, catalog, rec } = await setup();
    Object.assign(ov, {
      controllerUrl: "https://127.0.0.1:1280/edge/client/v1",
      routerStatus: () => [{ url: "tls://127.0.0.1:3022", routerId: "r1", state: "open", latencyMs: 1.234 }],
    });
    const doc = buildStatus(catalog, [ov], rec, {}, T0);
    expect(doc.proxy.identities[0]).toEqual({
      name: "prometheus-central",
      controller: "https://127.0.0.1:1280/edge/client/v1",
      routers: [{ routerId: "r1", url: "tls://127.0.0.1:3022", state: "open", latencyMs: 1.2 }],
    });
    catalog.close();
  });

  it("compareRows: failing < ok < never, then service, then replica", () => {
    const row = (state: TargetRow["state"], service: string, replica: string | null) =>
      ({ state, service, replica }) as TargetRow;
    const rows = [row("never", "a", null), row("ok", "b", "y"), row("failing", "z", null), row("ok", "b", "x")];
    expect(rows.sort(compareRows).map((r) => `${r.state}:${r.service}:${r.replica}`)).toEqual([
      "failing:z:null",
      "ok:b:x",
      "ok:b:y",
      "never:a:null",
    ]);
  });
});
