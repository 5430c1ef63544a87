/**
 * `npm run demo`: the whole of scrapez on an embedded local overlay, with real parts:
 * an OpenZiti controller and edge router (v2.0.3, the tests' default line; `SCRAPEZ_ZITI_LINE=1.6` for v1.6.3),
 * node_exporter behind `scrapez bind`, `scrapez proxy`, and a stock
 * Prometheus whose config uses only `proxy_url` and `http_sd_configs`. Prints the Prometheus URL and each
 * target's health as it comes up; Ctrl-C tears everything down. `--once` exits after the targets are up.
 * `--prometheus 2|3` picks Debian's 2.42 or the Prometheus 3 setup.sh builds (the default when built).
 *
 * `npm run demo -- --clusters [--prometheus 2|3] [--once]` (root: it makes network namespaces): two dark clusters,
 * a central Prometheus federating them and an operator, each in its own namespace, the overlay in a transit one
 * (test/harness/dark-sites.ts); prints the federated series, a full port scan of every site, and how to query
 * the central Prometheus over the overlay. Ctrl-C (or the end of --once) removes every namespace.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { existsSync } from "node:fs";
import { repoRoot, zitiVersion } from "../test/harness/binaries.js";
import { CLUSTERS, DarkSites } from "../test/harness/dark-sites.js";
import { NodeExporter } from "../test/harness/node-exporter.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { IP_BIN, tempDir } from "../test/harness/process.js";
import { Prometheus, prometheusVersionOf, type PrometheusVersion } from "../test/harness/prometheus.js";
import { ScrapezProcess, cliPath } from "../test/harness/scrapez.js";

const once = process.argv.includes("--once");

/**
 * Which Prometheus: `--prometheus 2|3`; by default 3 (what most users run) when scripts/setup.sh built it,
 * else Debian's 2.42.
 */
function chosenPrometheus(): PrometheusVersion {
  const i = process.argv.indexOf("--prometheus");
  const asked = i > 0 ? process.argv[i + 1] : undefined;
  if (asked !== undefined && asked !== "2" && asked !== "3") throw new Error(`--prometheus ${asked}: give 2 or 3`);
  return (asked as PrometheusVersion | undefined) ?? (existsSync(join(repoRoot, ".cache", "prometheus3")) ? "3" : "2");
}
const say = (msg: string) => process.stdout.write(`[demo] ${msg}\n`);
const parts: { close(): Promise<unknown> }[] = [];
let stopping = false;

async function teardown(code: number): Promise<never> {
  if (!stopping) {
    stopping = true;
    say("tearing down ...");
    for (const p of parts.reverse()) await p.close().catch(() => undefined);
    say("done");
  }
  process.exit(code);
}
process.on("SIGINT", () => void teardown(0));
process.on("SIGTERM", () => void teardown(0));

async function main(): Promise<void> {
  const dir = tempDir("demo");
  say("starting a local OpenZiti overlay (controller + edge router on 127.0.0.1) ...");
  const overlay = await Overlay.start();
  parts.push(overlay);
  say(`OpenZiti ${zitiVersion()}: controller ${overlay.ctrlUrl}, edge router 127.0.0.1:${overlay.routerPorts[0]}`);

  const exporter = await NodeExporter.start();
  parts.push(exporter);
  say(`node_exporter on ${exporter.url} (the demo's only exporter port; scrapez bind itself listens on nothing)`);

  for (const svc of ["node-a", "node-b"]) await overlay.service(svc, { dial: ["#prometheus"], bind: ["#exporters"] });
  const bindId = await overlay.identity("host-a", ["exporters"]);
  const promId = await overlay.identity("prometheus-central", ["prometheus"]);
  say("services node-a and node-b, identities host-a (may Bind) and prometheus-central (may Dial)");
  // node-a admits only prometheus-central, verified by its key: `scrapez identity key` prints the pin.
  const keyOut = execFileSync(process.execPath, [cliPath, "identity", "key", "--identity", promId], {
    encoding: "utf8",
  });
  const promPin = /^key:\s+(sha256:\S+)$/m.exec(keyOut)?.[1];
  if (!promPin) throw new Error(`scrapez identity key printed no pin:\n${keyOut}`);
  say(`prometheus-central's key: ${promPin} (pinned in node-a's allow.keys)`);

  const bind = new ScrapezProcess(
    "scrapez-bind",
    "bind",
    {
      identity: bindId,
      statusFile: join(dir, "bind.status.json"),
      targets: [
        {
          service: "node-a",
          upstream: exporter.url,
          allow: { identities: ["prometheus-central"], keys: { "prometheus-central": promPin } },
        },
        { service: "node-b", upstream: exporter.url, bindUsingEdgeIdentity: false },
      ],
    },
    join(dir),
  );
  parts.push(bind);
  bind.start();
  await bind.waitFor(
    () => bind.logLines().filter((l) => l.msg === "service bound").length >= 2,
    60_000,
    "services bound",
  );
  say("scrapez bind: node-a and node-b bound on the overlay");

  const proxyPort = await freePort();
  const proxy = new ScrapezProcess(
    "scrapez-proxy",
    "proxy",
    { identities: [promId], listen: `127.0.0.1:${proxyPort}` },
    tempDir("demo-proxy"),
  );
  parts.push(proxy);
  proxy.start();
  await proxy.waitFor(() => proxy.logLines().some((l) => l.msg === "listening"), 30_000, "proxy listening");
  say(`scrapez proxy on http://127.0.0.1:${proxyPort} (proxy_url + /sd)`);

  const config = {
    global: { scrape_interval: "5s", scrape_timeout: "4s" },
    scrape_configs: [
      {
        job_name: "ziti",
        proxy_url: `http://127.0.0.1:${proxyPort}`,
        http_sd_configs: [{ url: `http://127.0.0.1:${proxyPort}/sd`, refresh_interval: "10s" }],
        relabel_configs: [
          { source_labels: ["__meta_ziti_service"], target_label: "service" },
          { source_labels: ["__meta_ziti_replica"], target_label: "replica" },
        ],
      },
    ],
  };
  const prom = await Prometheus.start(config, { version: chosenPrometheus() });
  parts.push(prom);
  say(`Prometheus ${prometheusVersionOf(prom.version)} ${prom.url}  (config: proxy_url + http_sd_configs only)`);

  const seen = new Map<string, string>();
  const report = async () => {
    for (const t of await prom.targets()) {
      const key = `${t.labels.service}${t.labels.replica ? ` (replica ${t.labels.replica})` : ""}`;
      const line = `${t.health}${t.lastError ? ` (${t.lastError})` : ""}`;
      if (seen.get(key) !== line) {
        seen.set(key, line);
        say(`target ${key.padEnd(28)} ${t.scrapeUrl.padEnd(34)} ${line}`);
      }
    }
    return [...seen.values()].filter((v) => v === "up").length >= 2;
  };
  await waitUntil(report, 90_000, "both targets up");
  const q = await prom.query('count by (service) (node_cpu_seconds_total{job="ziti"})');
  for (const r of q) say(`query count(node_cpu_seconds_total) service=${r.metric.service}: ${r.value[1]} series`);
  if (once) return teardown(0);
  say("running; open the Prometheus URL above. Ctrl-C stops everything.");
  setInterval(() => void report().catch(() => undefined), 5_000);
}

/** The dark-cluster demo (--clusters). */
async function clusters(): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new Error("--clusters makes network namespaces (ip netns add): run it as root");
  }
  const version = chosenPrometheus();
  say(`dark clusters with Prometheus ${prometheusVersionOf(version)}: making network namespaces (198.18.0.0/15) ...`);
  const sites = await DarkSites.start(say);
  parts.push(sites);
  const proms = await sites.startPrometheus(version);
  parts.push(proms);
  for (const c of CLUSTERS) {
    say(`${c} (${sites.net.addressOf(c)}): node_exporter, scrapez bind x2, scrapez proxy, Prometheus on its loopback`);
  }
  say(
    `central (${sites.net.addressOf("central")}): Prometheus + scrapez proxy + scrapez bind (UI/API as prometheus-central)`,
  );
  say(`operator (${sites.net.addressOf("operator")}): scrapez proxy on 127.0.0.1:${sites.ports.operatorProxy}`);

  say("waiting for the central Prometheus to federate both clusters ...");
  const series = await proms.central.waitForQuery(
    "count by (cluster, site) (node_cpu_seconds_total)",
    120_000,
    (r) => r.length >= CLUSTERS.length,
  );
  for (const r of series) {
    say(
      `central: count(node_cpu_seconds_total{cluster="${r.metric.cluster}",site="${r.metric.site}"}) = ${r.value[1]}`,
    );
  }
  const up = await proms.central.waitForQuery('up{job=~"federate-.*"} == 1', 60_000, (r) => r.length >= 2);
  for (const r of up) say(`central: up{job="${r.metric.job}",instance="${r.metric.instance}"} = ${r.value[1]}`);

  say("scanning every TCP port of each site (clusters from central, central from the operator) ...");
  const scans = await Promise.all([
    ...CLUSTERS.map((c) =>
      sites
        .site("central")
        .scan(sites.net.addressOf(c))
        .then((r) => ["central", c, r] as const),
    ),
    sites
      .site("operator")
      .scan(sites.net.addressOf("central"))
      .then((r) => ["operator", "central", r] as const),
  ]);
  for (const [from, to, r] of scans) {
    say(
      `scan ${from} -> ${to} ${r.host} ports 1-65535: ${r.open.length} open` +
        `${r.open.length ? ` (${r.open.join(", ")})` : ""}, ${r.refused} closed (RST), ${r.timedOut} silent, ` +
        `${(r.ms / 1000).toFixed(1)} s`,
    );
  }
  const q = await sites.viaOperator(`/api/v1/query?query=${encodeURIComponent("count by (cluster) (up)")}`);
  say(`operator -> prometheus-central over the overlay: GET /api/v1/query -> ${q.status} ${await q.text()}`);
  if (once) return teardown(0);
  say("running. Query the central Prometheus the way the operator does (over the overlay only):");
  say(
    `  ${IP_BIN} netns exec ${sites.site("operator").name} curl -s -x http://127.0.0.1:${sites.ports.operatorProxy} ` +
      "'http://prometheus-central/api/v1/query?query=up'",
  );
  say("Ctrl-C stops everything and removes the namespaces.");
}

(process.argv.includes("--clusters") ? clusters() : main()).catch(async (err: Error) => {
  process.stderr.write(`[demo] failed: ${err.message}\n`);
  await teardown(1);
});
