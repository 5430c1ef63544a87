/** A real Prometheus scraping a real node_exporter directly: the baseline the overlay tests build on. */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NodeExporter } from "../harness/node-exporter.js";
import { Prometheus } from "../harness/prometheus.js";

let exporter: NodeExporter;
let prom: Prometheus;

beforeAll(async () => {
  exporter = await NodeExporter.start();
  prom = await Prometheus.start({
    global: { scrape_interval: "1s", scrape_timeout: "1s" },
    scrape_configs: [{ job_name: "node", static_configs: [{ targets: [`127.0.0.1:${exporter.port}`] }] }],
  });
});

afterAll(async () => {
  await prom?.close();
  await exporter?.close();
});

describe("real Prometheus 2.42 and node_exporter (Debian binaries)", () => {
  it("scrapes node_exporter: up == 1 and node metrics are queryable", async () => {
    const up = await prom.waitForQuery('up{job="node"} == 1', 60_000);
    expect(up[0]!.metric.instance).toBe(`127.0.0.1:${exporter.port}`);
    const load = await prom.waitForQuery('node_load1{job="node"}', 30_000);
    expect(Number(load[0]!.value[1])).toBeGreaterThanOrEqual(0);
  });
});
