/** A real Prometheus scraping a real node_exporter directly: the baseline the overlay tests build on. */
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prometheusBin } from "../harness/binaries.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Prometheus } from "../harness/prometheus.js";

// "prometheus, version 2.42.0+ds (branch: ...)" -> "2.42.0+ds"
const version = /version (\S+)/.exec(execFileSync(prometheusBin(), ["--version"], { encoding: "utf8" }))?.[1];

let exporter: NodeExporter;
let prom: Prometheus;

beforeAll(async () => {
  const t0 = Date.now();
  exporter = await NodeExporter.start();
  const t1 = Date.now();
  prom = await Prometheus.start({
    global: { scrape_interval: "1s", scrape_timeout: "1s" },
    scrape_configs: [{ job_name: "node", static_configs: [{ targets: [`127.0.0.1:${exporter.port}`] }] }],
  });
  console.info(
    `[prometheus.test] node_exporter ready in ${t1 - t0} ms, Prometheus ${version} in ${Date.now() - t1} ms`,
  );
});

afterAll(async () => {
  await prom?.close();
  await exporter?.close();
});

describe(`real Prometheus ${version} and node_exporter (Debian binaries)`, () => {
  it("scrapes node_exporter: up == 1 with the job and instance labels, and node metrics are queryable", async () => {
    const instance = `127.0.0.1:${exporter.port}`;
    const up = await prom.waitForQuery('up{job="node"} == 1', 60_000);
    expect(up).toHaveLength(1);
    expect(up[0]!.metric).toMatchObject({ job: "node", instance });
    const [target] = await prom.targets();
    expect(target).toMatchObject({ health: "up", scrapeUrl: `http://${instance}/metrics`, lastError: "" });
    const load = await prom.waitForQuery(`node_load1{job="node",instance="${instance}"}`, 30_000);
    expect(Number(load[0]!.value[1])).toBeGreaterThanOrEqual(0);
    const cpu = await prom.waitForQuery('count(node_cpu_seconds_total{job="node",mode="idle"})', 30_000);
    expect(Number(cpu[0]!.value[1])).toBeGreaterThanOrEqual(1);
  });

  it("reload() applies a new config through /-/reload (--web.enable-lifecycle)", async () => {
    await prom.reload({
      global: { scrape_interval: "1s", scrape_timeout: "1s" },
      scrape_configs: [{ job_name: "node-renamed", static_configs: [{ targets: [`127.0.0.1:${exporter.port}`] }] }],
    });
    const targets = await prom.waitForTargets((t) => t.some((x) => x.labels.job === "node-renamed"), 30_000);
    expect(targets.map((t) => t.labels.job)).toEqual(["node-renamed"]);
    await prom.waitForQuery('up{job="node-renamed"} == 1', 30_000);
  });

  it("sees node_exporter go down (stop) and come back on the same port (start): up 0, then 1", async () => {
    await exporter.stop();
    const down = await prom.waitForQuery('up{job="node-renamed"} == 0', 30_000);
    expect(down[0]!.metric.instance).toBe(`127.0.0.1:${exporter.port}`);
    await exporter.start();
    await prom.waitForQuery('up{job="node-renamed"} == 1', 30_000);
  });
});
