/**
 * Federation end to end, real binaries: two "cluster" Prometheus servers, each scraping its own node_exporter
 * through its own scrapez bind + scrapez proxy and bound on the overlay by scrapez bind (/federate only, config
 * from `scrapez generate cluster`); a central Prometheus started from `scrapez generate central` federates both
 * through a scrapez proxy. Everything listens on loopback only; the central Prometheus reaches the clusters only
 * through the overlay. The Prometheus servers run as Debian's 2.42 and as Prometheus 3, on the same sidecars.
 */
import { execFile } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import YAML from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { promtoolBin } from "../harness/binaries.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort, waitUntil } from "../harness/ports.js";
import { tempDir } from "../harness/process.js";
import { PROMETHEUS_VERSIONS, Prometheus, prometheusVersionOf, type PrometheusVersion } from "../harness/prometheus.js";
import { ScrapezProcess, cliPath } from "../harness/scrapez.js";

const run = promisify(execFile);
const dir = tempDir("federation");
const closers: { close(): Promise<unknown> }[] = [];
const clusters = ["east", "west"] as const;
let overlay: Overlay;
let centralProxyPort: number;
/** The generated configs: each cluster Prometheus's, and the central one's. */
const clusterConfigs: Record<string, string> = {};
let centralConfig = "";
const clusterPromPorts: Record<string, number> = {};
const token = "federation-token";
const tokenFile = join(dir, "central-token");

async function scrapez(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [cliPath, ...args]);
    return { code: 0, ...r };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function promtool(file: string): Promise<void> {
  await run(promtoolBin(), ["check", "config", file]);
}

async function startProxy(name: string, identity: string, extra: object = {}): Promise<number> {
  const port = await freePort();
  const p = new ScrapezProcess(name, "proxy", { identities: [identity], listen: `127.0.0.1:${port}`, ...extra });
  closers.push(p);
  p.start();
  await p.waitFor(() => p.logLines().some((l) => l.msg === "listening"), 30_000, "listening");
  return port;
}

async function startBind(name: string, config: object | string, boundCount: number): Promise<ScrapezProcess> {
  const b = new ScrapezProcess(name, "bind", {});
  b.writeConfig(config);
  closers.push(b);
  b.start();
  await b.waitFor(() => b.logLines().filter((l) => l.msg === "service bound").length >= boundCount, 60_000, "bound");
  return b;
}

function federationYaml(shards: number): object {
  return {
    proxy: { url: `http://127.0.0.1:${centralProxyPort}`, auth: { bearerTokenFile: tokenFile } },
    match: ['{job="overlay-exporters"}'],
    scrapeInterval: "2s",
    scrapeTimeout: "2s",
    shards,
    clusters: clusters.map((c) => ({
      name: c,
      service: `prometheus-${c}`,
      externalLabels: { region: `${c}-1` },
      prometheusUrl: `http://127.0.0.1:${clusterPromPorts[c]}`,
      bindIdentity: join(overlay.home, `bind-${c}.json`),
      proxy: { url: `http://127.0.0.1:${clusterPromPorts[`proxy-${c}`]}` },
      exporters: { services: [`node-${c}`] },
    })),
  };
}

beforeAll(async () => {
  writeFileSync(tokenFile, token);
  overlay = await Overlay.start();
  closers.push(overlay);
  await overlay.identity("central", ["central"]);
  for (const c of clusters) {
    await overlay.service(`node-${c}`, { dial: [`#prom-${c}`], bind: [`#bind-${c}`] });
    await overlay.service(`prometheus-${c}`, { dial: ["#central"], bind: [`#bind-${c}`] });
    await overlay.identity(`bind-${c}`, [`bind-${c}`]);
    await overlay.identity(`prom-${c}`, [`prom-${c}`]);
  }
  centralProxyPort = await startProxy("proxy-central", join(overlay.home, "central.json"), {
    auth: { bearerTokenFile: tokenFile },
  });
  for (const c of clusters) {
    const exporter = await NodeExporter.start();
    closers.push(exporter);
    await startBind(
      `bind-node-${c}`,
      {
        identity: join(overlay.home, `bind-${c}.json`),
        statusFile: join(dir, `node-${c}.status`),
        targets: [{ service: `node-${c}`, upstream: exporter.url }],
      },
      1,
    );
    clusterPromPorts[`proxy-${c}`] = await startProxy(`proxy-${c}`, join(overlay.home, `prom-${c}.json`));
    clusterPromPorts[c] = await freePort();
  }
  writeFileSync(join(dir, "federation.yaml"), YAML.stringify(federationYaml(1)));
  for (const c of clusters) {
    const out = join(dir, c);
    await run("mkdir", ["-p", out]);
    const g = await scrapez("generate", "cluster", "--cluster", c, "--config", join(dir, "federation.yaml"), "-o", out);
    expect(g.code, g.stderr).toBe(0);
    await promtool(join(out, "prometheus.yml"));
    clusterConfigs[c] = readFileSync(join(out, "prometheus.yml"), "utf8");
    const bindCfg = YAML.parse(readFileSync(join(out, "bind.yaml"), "utf8")) as object;
    // Bound before its Prometheus runs (each version's servers start on the same port below).
    await startBind(`bind-prom-${c}`, { ...bindCfg, statusFile: join(dir, `prom-${c}.status`) }, 1);
  }
  const g = await scrapez(
    "generate",
    "central",
    "--config",
    join(dir, "federation.yaml"),
    "-o",
    join(dir, "central.yml"),
  );
  expect(g.code, g.stderr).toBe(0);
  await promtool(join(dir, "central.yml"));
  centralConfig = readFileSync(join(dir, "central.yml"), "utf8");
}, 300_000);

afterAll(async () => {
  for (const c of closers.reverse()) await c.close().catch(() => undefined);
  await run("rm", ["-rf", dir]);
});

describe.each(PROMETHEUS_VERSIONS)(
  "federation over the overlay with Prometheus %s (scrapez generate + real Prometheus servers)",
  (version: PrometheusVersion) => {
    let central: Prometheus;
    const proms: Prometheus[] = [];

    beforeAll(async () => {
      for (const c of clusters) {
        const prom = await Prometheus.start(clusterConfigs[c]!, { port: clusterPromPorts[c], version });
        proms.push(prom);
        await prom.waitForQuery('up{job="overlay-exporters"} == 1', 60_000);
      }
      central = await Prometheus.start(centralConfig, { version });
      proms.push(central);
      process.stdout.write(`[federation.test] Prometheus ${prometheusVersionOf(version)}\n`);
    }, 180_000);

    // The next version's servers take the same cluster ports.
    afterAll(async () => {
      for (const p of proms) await p.close();
    });

    it("the central Prometheus finds series from both clusters, with distinct cluster labels", async () => {
      const r = await central.waitForQuery("count by (cluster, region) (node_load1)", 90_000, (x) => x.length >= 2);
      expect(r.map((s) => [s.metric.cluster, s.metric.region]).sort()).toEqual([
        ["east", "east-1"],
        ["west", "west-1"],
      ]);
      const up = await central.query('up{job=~"federate-.*"}');
      expect(up.map((s) => s.value[1])).toEqual(["1", "1"]);
      // The static target is the service's host: Prometheus 3 keeps it as `instance`, 2.x adds the scheme's port.
      expect(up.map((s) => s.metric.instance).sort()).toEqual(
        clusters.map((c) => (version === "3" ? `prometheus-${c}` : `prometheus-${c}:80`)),
      );
    });

    it("with shards: 2, each central config lists only its clusters, and together they federate every cluster exactly once", async () => {
      writeFileSync(join(dir, "federation-2.yaml"), YAML.stringify(federationYaml(2)));
      const g = await scrapez(
        "generate",
        "central",
        "--config",
        join(dir, "federation-2.yaml"),
        "-o",
        join(dir, "sharded.yml"),
      );
      expect(g.code, g.stderr).toBe(0);
      const kept: string[] = [];
      for (const i of [0, 1]) {
        const file = join(dir, `sharded-shard-${i}.yml`);
        await promtool(file);
        // Each shard lists only the clusters whose address hashes to it (scrapez computes Prometheus's hashmod);
        // the hashmod relabel rules stay, so Prometheus itself must keep every one of them: none dropped.
        const jobs = (readFileSync(file, "utf8").match(/job_name:/g) ?? []).length;
        const p = await Prometheus.start(readFileSync(file, "utf8"), { version });
        proms.push(p);
        const all = await waitUntil(
          async () => {
            const r = (await (await fetch(`${p.url}/api/v1/targets`)).json()) as {
              data: { activeTargets: { labels: Record<string, string> }[]; droppedTargets: unknown[] };
            };
            return r.data.activeTargets.length + r.data.droppedTargets.length === jobs ? r.data : undefined;
          },
          30_000,
          `shard ${i} to account for its ${jobs} cluster(s)`,
        );
        expect(all.droppedTargets, `shard ${i}: Prometheus's hashmod disagrees with scrapez generate's`).toEqual([]);
        kept.push(...all.activeTargets.map((t) => t.labels.cluster!));
      }
      expect(kept.sort()).toEqual(["east", "west"]);
    });

    if (version === "3") {
      it("federates with a Prometheus 3 selector: a quoted (UTF-8 style) metric name in match[]", async () => {
        const cfg = { ...federationYaml(1), match: ['{"node_load1", job="overlay-exporters"}'] };
        writeFileSync(join(dir, "federation-utf8.yaml"), YAML.stringify(cfg));
        const out = join(dir, "central-utf8.yml");
        const g = await scrapez("generate", "central", "--config", join(dir, "federation-utf8.yaml"), "-o", out);
        expect(g.code, g.stderr).toBe(0);
        const p = await Prometheus.start(readFileSync(out, "utf8"), { version });
        proms.push(p);
        const r = await p.waitForQuery("count by (cluster) (node_load1)", 60_000, (x) => x.length >= 2);
        expect(r.map((s) => s.metric.cluster).sort()).toEqual(["east", "west"]);
        // Only what the selector names came over.
        expect(await p.query('count({job="overlay-exporters", __name__!="node_load1"})')).toEqual([]);
      });
    }

    it("a cluster's bind exposes only /federate", async () => {
      const viaProxy = async (path: string) => {
        const r = await fetch(`http://127.0.0.1:${centralProxyPort}/scrape/prometheus-east${path}`, {
          headers: { authorization: `Bearer ${token}` },
        });
        return r.status;
      };
      expect(await viaProxy("/federate?match[]=up")).toBe(200);
      expect(await viaProxy("/api/v1/query?query=up")).toBe(404);
      expect(await viaProxy("/-/reload")).toBe(404);
    });
  },
);

describe("scrapez generate for federation over the overlay", () => {
  it("the central config reaches each cluster Prometheus only through the overlay", () => {
    const text = readFileSync(join(dir, "central.yml"), "utf8");
    for (const c of clusters) expect(text).not.toContain(String(clusterPromPorts[c]));
    const doc = YAML.parse(text) as {
      scrape_configs: { proxy_url: string; static_configs: { targets: string[] }[] }[];
    };
    for (const job of doc.scrape_configs) {
      expect(job.proxy_url).toBe(`http://127.0.0.1:${centralProxyPort}`);
      expect(job.static_configs[0]!.targets[0]).toMatch(/^prometheus-(east|west)$/);
    }
  });

  it("invalid input exits non-zero, names the field and writes nothing", async () => {
    const bad = {
      ...federationYaml(1),
      shards: 0,
      clusters: [
        ...(federationYaml(1) as { clusters: object[] }).clusters,
        (federationYaml(1) as { clusters: object[] }).clusters[0],
      ],
    };
    writeFileSync(join(dir, "bad.yaml"), YAML.stringify(bad));
    const out = join(dir, "never.yml");
    const r = await scrapez("generate", "central", "--config", join(dir, "bad.yaml"), "-o", out);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/shards: shards must be at least 1/);
    expect(r.stderr).toMatch(/clusters\[2\]\.name: duplicate cluster "east"/);
    expect(existsSync(out)).toBe(false);
  });
});
