/**
 * Dark sites on one machine, as the dark-cluster test (test/integration/dark-clusters.test.ts) and
 * `npm run demo -- --clusters` run them, with real parts in network namespaces (test/harness/netns.ts):
 *
 * - "transit": the overlay (controller + edge router, on 198.18.0.1 only), routing between the sites;
 * - "cluster-a", "cluster-b": node_exporter, `scrapez bind` for it, the cluster's `scrapez proxy`, a cluster
 *   Prometheus and `scrapez bind` exposing only its /federate (configs from `scrapez generate cluster`);
 * - "central": a Prometheus (config from `scrapez generate central`), `scrapez proxy`, and `scrapez bind`
 *   putting that Prometheus's UI and API (GET and HEAD only) on the overlay as service prometheus-central;
 * - "operator": a `scrapez proxy` through which an operator reaches prometheus-central.
 *
 * Everything in a site listens on the site's own loopback. The Prometheus servers are started separately
 * (startPrometheus), so the same sites run Debian's 2.42 and then Prometheus 3.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import YAML from "yaml";
import { DarkNet, OVERLAY_HOST, type Netns } from "./netns.js";
import { NodeExporter } from "./node-exporter.js";
import { Overlay } from "./overlay.js";
import { freePort } from "./ports.js";
import { removeDir, tempDir } from "./process.js";
import { Prometheus, type PrometheusVersion } from "./prometheus.js";
import { ScrapezProcess, cliPath } from "./scrapez.js";

const run = promisify(execFile);

export const CLUSTERS = ["cluster-a", "cluster-b"] as const;
export const SITES = [...CLUSTERS, "central", "operator"] as const;
export type Cluster = (typeof CLUSTERS)[number];

/** The Prometheus servers of one version: one per cluster and the central one. */
export interface SitePrometheus {
  version: PrometheusVersion;
  clusters: Record<Cluster, Prometheus>;
  central: Prometheus;
  close(): Promise<void>;
}

/** One TCP socket of a namespace (from its /proc/net/tcp). State 0A is LISTEN. */
export interface TcpSocket {
  local: string;
  remote: string;
  state: string;
}

const bound = (p: ScrapezProcess) => p.logLines().some((l) => l.msg === "service bound");
const listening = (p: ScrapezProcess) => p.logLines().some((l) => l.msg === "listening");

export class DarkSites {
  readonly net: DarkNet;
  readonly overlay: Overlay;
  readonly dir: string;
  /** Loopback ports inside the namespaces (each has its own loopback; still chosen at run time). */
  readonly ports = {
    centralProxy: 0,
    centralProm: 0,
    operatorProxy: 0,
    clusterProm: {} as Record<Cluster, number>,
    clusterProxy: {} as Record<Cluster, number>,
  };
  /** The bearer token the central Prometheus presents to its scrapez proxy. */
  readonly token = "dark-central-token";
  /** Generated configs: each cluster Prometheus's and the central one's. */
  readonly clusterYaml = {} as Record<Cluster, string>;
  centralYaml = "";
  readonly #parts: { close(): Promise<unknown> }[] = [];
  #closed = false;

  private constructor(net: DarkNet, overlay: Overlay, dir: string) {
    this.net = net;
    this.overlay = overlay;
    this.dir = dir;
  }

  /**
   * Makes the namespaces, starts the overlay in transit and every site's sidecars (not the Prometheus servers).
   * `say` gets a line per step.
   */
  static async start(say: (line: string) => void = () => undefined): Promise<DarkSites> {
    const dir = tempDir("dark");
    const net = await DarkNet.create([...SITES]);
    let overlay: Overlay | undefined;
    let sites: DarkSites | undefined;
    try {
      say(`namespaces ${[net.transit, ...net.sites.values()].map((n) => n.name).join(", ")}`);
      overlay = await Overlay.start({ host: OVERLAY_HOST, netns: net.transit.name });
      say(
        `overlay in ${net.transit.name}: controller ${overlay.ctrlUrl}, edge router ${OVERLAY_HOST}:${overlay.routerPort}`,
      );
      sites = new DarkSites(net, overlay, dir);
      await sites.#setUp(say);
    } catch (err) {
      if (sites) await sites.close();
      else {
        await overlay?.close();
        await net.close();
        removeDir(dir);
      }
      throw err;
    }
    return sites;
  }

  site(name: string): Netns {
    return this.net.site(name);
  }

  async #scrapez(...args: string[]): Promise<string> {
    return (await run(process.execPath, [cliPath, ...args])).stdout;
  }

  async #sidecar(
    name: string,
    command: "bind" | "proxy",
    config: object,
    netns: Netns,
    ready: (p: ScrapezProcess) => boolean,
  ): Promise<ScrapezProcess> {
    const p = new ScrapezProcess(name, command, config, tempDir(name), { netns });
    this.#parts.push(p);
    p.start();
    await p.waitFor(() => ready(p), 60_000, command === "bind" ? "service bound" : "listening");
    return p;
  }

  async #setUp(say: (line: string) => void): Promise<void> {
    const { overlay, dir, ports } = this;
    const tokenFile = join(dir, "central-token");
    writeFileSync(tokenFile, this.token, { mode: 0o600 });
    // The model: each cluster's sidecars bind its services; central dials the clusters' Prometheus; the
    // operator dials the central Prometheus.
    for (const c of CLUSTERS) {
      await overlay.service(`node-${c}`, { dial: [`#prom-${c}`], bind: [`#bind-${c}`] });
      await overlay.service(`prometheus-${c}`, { dial: ["#central"], bind: [`#bind-${c}`] });
      await overlay.identity(`bind-${c}`, [`bind-${c}`]);
      await overlay.identity(`prom-${c}`, [`prom-${c}`]);
    }
    await overlay.service("prometheus-central", { dial: ["#operators"], bind: ["#central-ui"] });
    await overlay.identity("central", ["central"]);
    await overlay.identity("central-ui", ["central-ui"]);
    await overlay.identity("operator", ["operators"]);
    say("overlay services node-<cluster>, prometheus-<cluster>, prometheus-central and their identities");

    ports.centralProxy = await freePort();
    ports.centralProm = await freePort();
    ports.operatorProxy = await freePort();
    for (const c of CLUSTERS) {
      ports.clusterProm[c] = await freePort();
      ports.clusterProxy[c] = await freePort();
    }
    const federation = {
      proxy: { url: `http://127.0.0.1:${ports.centralProxy}`, auth: { bearerTokenFile: tokenFile } },
      match: ['{job="overlay-exporters"}'],
      scrapeInterval: "2s",
      scrapeTimeout: "2s",
      clusters: CLUSTERS.map((c) => ({
        name: c,
        service: `prometheus-${c}`,
        externalLabels: { site: `dc-${c.slice(-1)}` },
        prometheusUrl: `http://127.0.0.1:${ports.clusterProm[c]}`,
        bindIdentity: join(overlay.home, `bind-${c}.json`),
        proxy: { url: `http://127.0.0.1:${ports.clusterProxy[c]}` },
        exporters: { services: [`node-${c}`] },
      })),
    };
    const fedFile = join(dir, "federation.yaml");
    writeFileSync(fedFile, YAML.stringify(federation));

    const starts: Promise<unknown>[] = [];
    for (const c of CLUSTERS) {
      const ns = this.site(c);
      const out = join(dir, c);
      mkdirSync(out, { recursive: true });
      await this.#scrapez("generate", "cluster", "--cluster", c, "--config", fedFile, "-o", out);
      this.clusterYaml[c] = readFileSync(join(out, "prometheus.yml"), "utf8");
      const bindCfg = YAML.parse(readFileSync(join(out, "bind.yaml"), "utf8")) as object;
      starts.push(
        (async () => {
          const exporter = await NodeExporter.start({ netns: ns });
          this.#parts.push(exporter);
          await this.#sidecar(
            `bind-node-${c}`,
            "bind",
            {
              identity: join(overlay.home, `bind-${c}.json`),
              statusFile: join(dir, `node-${c}.status`),
              targets: [{ service: `node-${c}`, upstream: exporter.url }],
            },
            ns,
            bound,
          );
        })(),
        this.#sidecar(
          `proxy-${c}`,
          "proxy",
          { identities: [join(overlay.home, `prom-${c}.json`)], listen: `127.0.0.1:${ports.clusterProxy[c]}` },
          ns,
          listening,
        ),
        // Bound before its Prometheus runs: the overlay service is there, its upstream answers once it starts.
        this.#sidecar(`bind-prom-${c}`, "bind", { ...bindCfg, statusFile: join(dir, `prom-${c}.status`) }, ns, bound),
      );
    }
    await this.#scrapez("generate", "central", "--config", fedFile, "-o", join(dir, "central.yml"));
    this.centralYaml = readFileSync(join(dir, "central.yml"), "utf8");
    const central = this.site("central");
    starts.push(
      this.#sidecar(
        "proxy-central",
        "proxy",
        {
          identities: [join(overlay.home, "central.json")],
          listen: `127.0.0.1:${ports.centralProxy}`,
          auth: { bearerTokenFile: tokenFile },
        },
        central,
        listening,
      ),
      // Central is dark too: its Prometheus's UI and API (GET and HEAD only) are an overlay service.
      this.#sidecar(
        "bind-central-ui",
        "bind",
        {
          identity: join(overlay.home, "central-ui.json"),
          statusFile: join(dir, "central-ui.status"),
          targets: [
            { service: "prometheus-central", upstream: `http://127.0.0.1:${ports.centralProm}`, paths: ["/*"] },
          ],
        },
        central,
        bound,
      ),
      this.#sidecar(
        "proxy-operator",
        "proxy",
        { identities: [join(overlay.home, "operator.json")], listen: `127.0.0.1:${ports.operatorProxy}` },
        this.site("operator"),
        listening,
      ),
    );
    await Promise.all(starts);
    say(
      "sidecars up: node_exporter + scrapez bind/proxy in each cluster, scrapez proxy + bind in central, scrapez proxy in operator",
    );
  }

  /** Starts the cluster and central Prometheus servers of `version` (on the same ports for every version). */
  async startPrometheus(version: PrometheusVersion): Promise<SitePrometheus> {
    const started = await Promise.allSettled([
      ...CLUSTERS.map((c) =>
        Prometheus.start(this.clusterYaml[c], { port: this.ports.clusterProm[c], version, netns: this.site(c) }),
      ),
      Prometheus.start(this.centralYaml, { port: this.ports.centralProm, version, netns: this.site("central") }),
    ]);
    const ok = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const close = async () => {
      for (const p of ok) await p.close().catch(() => undefined);
    };
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      await close();
      throw failed.reason;
    }
    return {
      version,
      clusters: Object.fromEntries(CLUSTERS.map((c, i) => [c, ok[i]!])) as Record<Cluster, Prometheus>,
      central: ok[CLUSTERS.length]!,
      close,
    };
  }

  /** fetch() of the central Prometheus from the operator's namespace, over the overlay (operator's proxy). */
  viaOperator(path: string, method = "GET"): Promise<Response> {
    return this.site("operator").fetch(`http://prometheus-central${path}`, {
      method,
      proxy: `http://127.0.0.1:${this.ports.operatorProxy}`,
    });
  }

  /** Every IPv4 TCP socket in a site's namespace (IPv6 is off in them). */
  async tcpSockets(site: string): Promise<TcpSocket[]> {
    const { stdout } = await run("ip", ["netns", "exec", this.site(site).name, "cat", "/proc/net/tcp"]);
    const addr = (h: string) => {
      const [a, p] = h.split(":") as [string, string];
      return `${Buffer.from(a, "hex").reverse().join(".")}:${parseInt(p, 16)}`;
    };
    return stdout
      .trim()
      .split("\n")
      .slice(1)
      .map((l) => l.trim().split(/\s+/))
      .map((f) => ({ local: addr(f[1]!), remote: addr(f[2]!), state: f[3]! }));
  }

  /** Stops everything and removes the namespaces. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#parts.reverse()) await p.close().catch(() => undefined);
    await this.overlay.close().catch(() => undefined);
    await this.net.close();
    removeDir(this.dir);
  }
}
