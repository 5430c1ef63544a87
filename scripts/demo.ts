/**
 * `npm run demo`: the whole of scrapez on an embedded local overlay, with real parts:
 * an OpenZiti controller and edge router, node_exporter behind `scrapez bind`, `scrapez proxy`, and a stock
 * Prometheus whose config uses only `proxy_url` and `http_sd_configs`. Prints the Prometheus URL and each
 * target's health as it comes up; Ctrl-C tears everything down. `--once` exits after the targets are up.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { NodeExporter } from "../test/harness/node-exporter.js";
import { Overlay } from "../test/harness/overlay.js";
import { freePort, waitUntil } from "../test/harness/ports.js";
import { tempDir } from "../test/harness/process.js";
import { Prometheus } from "../test/harness/prometheus.js";
import { ScrapezProcess, cliPath } from "../test/harness/scrapez.js";

const once = process.argv.includes("--once");
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
  say(`controller ${overlay.ctrlUrl}, edge router 127.0.0.1:${overlay.routerPorts[0]}`);

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
  const prom = await Prometheus.start(config);
  parts.push(prom);
  say(`Prometheus ${prom.url}  (config: proxy_url + http_sd_configs only)`);

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

main().catch(async (err: Error) => {
  process.stderr.write(`[demo] failed: ${err.message}\n`);
  await teardown(1);
});
