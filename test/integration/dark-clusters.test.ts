/**
 * Dark clusters on one machine, with real parts in network namespaces the test makes and removes
 * (test/harness/dark-sites.ts and netns.ts; addresses from 198.18.0.0/15 only): two clusters (node_exporter,
 * scrapez bind and proxy, a cluster Prometheus bound for /federate only), a central site (Prometheus from
 * `scrapez generate central`, scrapez proxy, and its UI/API bound on the overlay), an operator, and the
 * overlay in a transit namespace that routes between them.
 *
 * Shown for Debian's Prometheus 2.42 and for Prometheus 3: the central Prometheus federates both clusters; a
 * TCP connect scan of every port of each cluster (from central) and of central (from the operator) finds
 * nothing open, every port answering RST (reachable, and closed); every TCP connection a site has off its
 * loopback is one it opened to the overlay; the operator reaches central's Prometheus over the overlay only.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLUSTERS, DarkSites, SITES, type SitePrometheus } from "../harness/dark-sites.js";
import { NETNS_PREFIX, OVERLAY_HOST, ROOT_HOST, listNetns, listRootLinks } from "../harness/netns.js";
import { PROMETHEUS_VERSIONS, prometheusVersionOf, type PrometheusVersion } from "../harness/prometheus.js";
import type { ScanResult } from "../harness/scan.js";

let sites: DarkSites;
/** Figures for the summary printed at the end. */
const figures: string[] = [];

function say(line: string): void {
  process.stdout.write(`[dark-clusters] ${line}\n`);
}

/**
 * A site is dark when it listens on loopback only, and each socket it has off loopback is a connection from
 * its own address to the overlay's controller or edge router (so one it opened: nothing listens to accept one).
 */
async function expectDark(site: string): Promise<void> {
  const socks = await sites.tcpSockets(site);
  const listen = socks.filter((s) => s.state === "0A");
  expect(listen.length).toBeGreaterThan(0);
  for (const s of listen) expect(s.local, `${site} listens on ${s.local}`).toMatch(/^127\.0\.0\.1:\d+$/);
  const offLoopback = socks.filter((s) => s.state !== "0A" && !s.local.startsWith("127."));
  expect(offLoopback.length, `${site} has overlay connections`).toBeGreaterThan(0);
  const overlay = [sites.overlay.ctrlPort, sites.overlay.routerPort].map((p) => `${OVERLAY_HOST}:${p}`);
  for (const s of offLoopback) {
    const what = `${site} socket ${s.local} -> ${s.remote}`;
    expect(s.local.split(":")[0], what).toBe(sites.net.addressOf(site));
    expect(overlay, what).toContain(s.remote);
  }
}

function describeScan(from: string, r: ScanResult): string {
  return (
    `scan ${from} -> ${r.host} ports ${r.from}-${r.to}: ${r.open.length} open, ${r.refused} refused (RST), ` +
    `${r.timedOut} silent, ${r.retried} tried again, ${(r.ms / 1000).toFixed(1)} s`
  );
}

beforeAll(async () => {
  const t0 = Date.now();
  sites = await DarkSites.start();
  say(`namespaces, overlay and sidecars up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}, 240_000);

afterAll(async () => {
  await sites?.close();
  if (figures.length) say(figures.join("\n[dark-clusters] "));
});

describe("the dark-site network (namespaces made by the test)", () => {
  it("uses only 198.18.0.0/15: each site has one address, no IPv6, and its only way out is the transit", () => {
    for (const [i, site] of SITES.entries()) {
      const ns = sites.site(site);
      expect(ns.addresses()).toEqual({ v4: ["127.0.0.1/8", `198.18.${i + 1}.2/30`], v6: [] });
      expect(ns.routes()).toEqual([
        `198.18.0.0/15 via 198.18.${i + 1}.1 dev eth0`,
        `198.18.${i + 1}.0/30 dev eth0 proto kernel scope link src 198.18.${i + 1}.2`,
      ]);
    }
    const transit = sites.net.transit.addresses();
    expect(transit.v4.sort()).toEqual(
      ["127.0.0.1/8", `${OVERLAY_HOST}/30`, ...SITES.map((_, i) => `198.18.${i + 1}.1/30`)].sort(),
    );
    expect(transit.v6).toEqual([]);
    // Sites never reach the machine: transit refuses to forward anything to the root namespace's address.
    const rules = sites.net.transit.ip(["rule", "show"]);
    for (const site of SITES) expect(rules).toContain(`to ${ROOT_HOST} iif to-${site} prohibit`);
  });
});

describe.each(PROMETHEUS_VERSIONS)("Prometheus %s in every site", (version: PrometheusVersion) => {
  let proms: SitePrometheus;
  const label = () => `Prometheus ${prometheusVersionOf(version)}`;

  beforeAll(async () => {
    const t0 = Date.now();
    proms = await sites.startPrometheus(version);
    say(`${label()}: three servers ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }, 180_000);

  afterAll(async () => {
    await proms?.close();
  });

  it("the central Prometheus federates both clusters: up == 1, series with each cluster's labels", async () => {
    const t0 = Date.now();
    const series = await proms.central.waitForQuery(
      "count by (cluster, site) (node_load1)",
      120_000,
      (r) => r.length >= 2,
    );
    figures.push(`${label()}: both clusters federated ${((Date.now() - t0) / 1000).toFixed(1)} s after start`);
    expect(series.map((s) => [s.metric.cluster, s.metric.site]).sort()).toEqual([
      ["cluster-a", "dc-a"],
      ["cluster-b", "dc-b"],
    ]);
    const up = await proms.central.waitForQuery('up{job=~"federate-.*"} == 1', 60_000, (r) => r.length === 2);
    // Prometheus 3 keeps the target as written (`prometheus-cluster-a`); 2.x added the scheme's port.
    expect(up.map((s) => s.metric.instance).sort()).toEqual(
      CLUSTERS.map((c) => (version === "3" ? `prometheus-${c}` : `prometheus-${c}:80`)),
    );
    // The exporters' own series made it through both hops, with their cluster-side target labels.
    const cpu = await proms.central.query('count by (cluster, service) (node_cpu_seconds_total{mode="idle"})');
    expect(cpu.map((s) => [s.metric.cluster, s.metric.service]).sort()).toEqual(CLUSTERS.map((c) => [c, `node-${c}`]));
  });

  it("a TCP connect scan of every port finds nothing open: the clusters scanned from central, central from the operator", async () => {
    // All three at once: two scanners (central's agent and the operator's) share the machine's two cores.
    const scans = await Promise.all([
      ...CLUSTERS.map((c) =>
        sites
          .site("central")
          .scan(sites.net.addressOf(c))
          .then((r) => ["central", r] as const),
      ),
      sites
        .site("operator")
        .scan(sites.net.addressOf("central"))
        .then((r) => ["operator", r] as const),
    ]);
    for (const [from, r] of scans) {
      figures.push(`${label()}: ${describeScan(from, r)}`);
      expect(r.open).toEqual([]);
      // Every port got a definite answer from the target's kernel: reachable, and nothing listens.
      expect(r).toMatchObject({ refused: 65_535, timedOut: 0, errors: {} });
    }
  });

  it("every site listens on its loopback only and is connected only outbound, to the overlay", async () => {
    for (const site of [...CLUSTERS, "central"]) await expectDark(site);
  });

  it("the operator reaches the central Prometheus's API (and UI) over the overlay only, read-only", async () => {
    const promql = encodeURIComponent('count by (cluster) (up{job=~"federate-.*"})');
    const q = await sites.viaOperator(`/api/v1/query?query=${promql}`);
    expect(q.status).toBe(200);
    const body = (await q.json()) as { data: { result: { metric: { cluster: string } }[] } };
    expect(body.data.result.map((r) => r.metric.cluster).sort()).toEqual([...CLUSTERS]);
    expect((await sites.viaOperator("/-/healthy")).status).toBe(200);
    if (version === "2") {
      // Debian's build ships the classic web UI (`/` redirects there); the Go module build of 3.x has no UI
      // assets (its API is all there is).
      expect((await sites.viaOperator("/")).headers.get("location")).toBe("/classic/graph");
      const ui = await sites.viaOperator("/classic/graph");
      expect(ui.status).toBe(200);
      expect(await ui.text()).toMatch(/<title>Prometheus/);
    }
    // Read-only: the bind answers GET and HEAD only, so the lifecycle and admin APIs are out of reach.
    expect((await sites.viaOperator("/-/reload", "POST")).status).toBe(405);
    // Not on the network: central's Prometheus port, on central's address, is closed (as the scan showed).
    const direct = await sites
      .site("operator")
      .fetch(`http://${sites.net.addressOf("central")}:${sites.ports.centralProm}/-/healthy`, { timeoutMs: 5_000 })
      .then((r) => `HTTP ${r.status}`)
      .catch((err: Error) => err.message);
    expect(direct).toMatch(/ECONNREFUSED/);
  });
});

describe("teardown", () => {
  it("removes every namespace and veth it made", async () => {
    await sites.close();
    expect(listNetns().filter((n) => n.startsWith(`${NETNS_PREFIX}-${process.pid}-`))).toEqual([]);
    expect(listRootLinks()).not.toContain(sites.net.rootLink);
  });
});
