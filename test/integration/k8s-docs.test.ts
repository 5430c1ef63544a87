/**
 * docs/kubernetes.md's commands, run as the doc writes them (the shell blocks are read from the doc itself, so an
 * edit to the doc is an edit to what runs here):
 *
 * - "Before installing", 2. The overlay side: the `ziti edge login` / `ziti edge create ...` / `scrapez enroll` block
 *   runs against a real controller and edge router (test/harness/overlay.ts) with the doc's variables set to this
 *   overlay. The harness's catch-all router policies are removed first, so only the doc's own policies let anything
 *   reach a router. Then the policies must do what the doc's table says: the node identities bind node-exporter (a
 *   real node_exporter) with the DaemonSet example's bind config, prometheus-cluster-a's scrapez proxy scrapes it,
 *   prometheus-central's is refused it but federates prometheus-cluster-a (a real Prometheus 3 running the cluster
 *   example's generated prometheus.yml, bound by cluster-a-bind with the cluster example's bind config).
 * - "Publishing the chart and the image": the block runs against a real OCI registry (CNCF Distribution, built by
 *   setup from tools/registry) on a loopback port, with the stand-ins the doc names, and the registry's content is
 *   checked against what was packaged and built.
 */
import { createHash } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import http from "node:http";
import { join } from "node:path";
import YAML from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { identityKeyPin, loadIdentity } from "../../src/ziti/index.js";
import { helmBin, repoRoot } from "../harness/binaries.js";
import { buildFigures, docker, dockerOk, requireEngine, scrapezImage } from "../harness/docker.js";
import { helmEnv as helmEnvAt, helmRunner } from "../harness/helm.js";
import { NodeExporter } from "../harness/node-exporter.js";
import { Overlay } from "../harness/overlay.js";
import { freePort } from "../harness/ports.js";
import { runCommand, tempDir, type CommandResult } from "../harness/process.js";
import { Prometheus } from "../harness/prometheus.js";
import { Registry } from "../harness/registry.js";
import { ScrapezProcess, cliPath } from "../harness/scrapez.js";

const doc = readFileSync(join(repoRoot, "docs", "kubernetes.md"), "utf8");
const examplesDir = join(repoRoot, "deploy", "helm", "scrapez", "examples");

/** The doc's text from `from` up to (not including) the next `to` after it. */
function docPart(from: string, to: string): string {
  const start = doc.indexOf(from);
  if (start < 0) throw new Error(`docs/kubernetes.md has no "${from}"`);
  const end = doc.indexOf(to, start + from.length);
  if (end < 0) throw new Error(`docs/kubernetes.md has no "${to}" after "${from}"`);
  return doc.slice(start, end);
}

/** The ```sh blocks of a piece of Markdown, their list-item indentation removed. */
function shBlocks(md: string): string[] {
  return [...md.matchAll(/^([ \t]*)```sh\n([\s\S]*?)^\1```$/gm)].map(([, indent, body]) =>
    body!
      .split("\n")
      .map((l) => (l.startsWith(indent!) ? l.slice(indent!.length) : l))
      .join("\n"),
  );
}

/** Writes an executable shell script. */
function script(file: string, lines: string[]): void {
  writeFileSync(file, `#!/bin/sh\n${lines.join("\n")}\n`);
  chmodSync(file, 0o755);
}

/** Runs a doc block with `bash -euo pipefail` (a failing command fails the block). */
function runBlock(block: string, cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<CommandResult> {
  return runCommand("bash", ["-euo", "pipefail", "-c", block], { cwd, env: { ...process.env, ...env }, timeoutMs });
}

function example<T>(name: string): T {
  return YAML.parse(readFileSync(join(examplesDir, name), "utf8")) as T;
}

/** An absolute-form GET through a scrapez proxy (as Prometheus sends with proxy_url), or an origin-form one. */
function viaProxy(
  port: number,
  target: string,
): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: target, timeout: 30_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${target} through 127.0.0.1:${port}: no answer in 30 s`)));
    req.on("error", reject);
  });
}

interface SdGroup {
  targets: string[];
  labels: Record<string, string>;
}

async function sdTargets(port: number, query = ""): Promise<string[]> {
  const r = await viaProxy(port, `/sd${query}`);
  expect(r.status).toBe(200);
  return (JSON.parse(r.body) as SdGroup[]).flatMap((g) => g.targets).sort();
}

// ---- The overlay side ----------------------------------------------------------------------------------------

interface BindTarget {
  service: string;
  upstream: string;
  paths?: string[];
  allow?: { identities: string[]; keys: Record<string, string> };
}
interface BindConfig {
  logLevel?: string;
  targets: BindTarget[];
}
interface DaemonSetExample {
  sidecar: { bind: { config: BindConfig } };
}
interface ClusterExample {
  sidecar: {
    files: Record<string, string>;
    bind: { config: BindConfig };
    proxy: { config: { listen: string } & Record<string, unknown> };
  };
}
interface ProxyDeploymentExample {
  proxy: { config: { listen: string; discovery: { include: string[] } } & Record<string, unknown> };
}

describe("docs/kubernetes.md, the overlay side: the ziti commands as written, against a real controller", () => {
  const NODES = ["node-1", "node-2"];
  const IDENTITIES = [...NODES, "cluster-a-bind", "prometheus-cluster-a", "prometheus-central"];
  const work = tempDir("k8s-docs-overlay");
  const closers: { close(): Promise<unknown> }[] = [];
  let overlay: Overlay;
  let varsBlock = "";
  let block = "";
  let result: CommandResult;
  let blockMs = 0;
  let clusterProxyPort = 0;
  let centralProxyPort = 0;
  let exporter: NodeExporter;

  const idFile = (name: string) => join(work, `${name}.json`);

  async function startBind(name: string, identity: string, config: BindConfig, bound: number): Promise<void> {
    const b = new ScrapezProcess(name, "bind", {
      ...config,
      identity,
      statusFile: join(work, `${name}.status.json`),
    });
    closers.push(b);
    b.start();
    await b.waitFor(() => b.logLines().filter((l) => l.msg === "service bound").length >= bound, 60_000, "bound");
  }

  async function startProxy(name: string, identity: string, config: Record<string, unknown>): Promise<number> {
    const port = await freePort();
    const p = new ScrapezProcess(name, "proxy", { ...config, identities: [identity], listen: `127.0.0.1:${port}` });
    closers.push(p);
    p.start();
    await p.waitFor(() => p.logLines().some((l) => l.msg === "listening"), 30_000, "listening");
    // Ready: its identity authenticated and its service list loaded (before that /sd and dials answer 503).
    await p.waitFor(async () => (await viaProxy(port, "/-/ready")).status === 200, 60_000, "/-/ready answers 200");
    return port;
  }

  beforeAll(async () => {
    const blocks = shBlocks(docPart("2. **The overlay side.**", "3. **One identity per role**"));
    expect(blocks).toHaveLength(2);
    [varsBlock, block] = blocks as [string, string];

    overlay = await Overlay.start();
    closers.push(overlay);
    // Only the doc's policies may give these identities and services a router: remove the harness's catch-alls.
    for (const kind of ["edge-router-policies", "service-edge-router-policies"]) {
      const { data } = await overlay.api<{ data: { id: string; isSystem?: boolean }[] }>("GET", `${kind}?limit=500`);
      for (const p of data.filter((x) => !x.isSystem)) await overlay.api("DELETE", `${kind}/${p.id}`);
    }

    // `ziti` and `scrapez` on PATH, as the doc assumes; the ziti CLI keeps its login under $HOME.
    const bin = join(work, ".bin");
    const home = join(work, ".home");
    const tmp = join(work, ".tmp");
    for (const d of [bin, home, tmp]) mkdirSync(d);
    symlinkSync(overlay.zitiBin, join(bin, "ziti"));
    script(join(bin, "scrapez"), [`exec "${process.execPath}" "${cliPath}" "$@"`]);
    const t0 = Date.now();
    result = await runBlock(
      block,
      work,
      {
        PATH: `${bin}:${process.env.PATH ?? ""}`,
        HOME: home,
        TMPDIR: tmp,
        ZITI_CTRL: `127.0.0.1:${overlay.ctrlPort}`,
        ZITI_USER: "admin",
        ZITI_PWD: "admin",
        NODES: NODES.join(" "),
      },
      240_000,
    );
    blockMs = Date.now() - t0;
    console.log(
      `[k8s-docs] overlay ${overlay.startupMs} ms; the doc's ziti + scrapez enroll block ${blockMs} ms (exit ${result.code})`,
    );
  });

  afterAll(async () => {
    for (const c of closers.reverse()) await c.close();
  });

  it("defines the controller address, the admin credentials and the nodes as variables the commands use", () => {
    for (const v of ["ZITI_CTRL", "ZITI_USER", "ZITI_PWD", "NODES"]) {
      expect(varsBlock).toMatch(new RegExp(`(^|\\s)${v}=`, "m"));
      expect(block).toContain(`$${v}`);
    }
    expect(block).toMatch(/^ziti edge login "\$ZITI_CTRL" -u "\$ZITI_USER" -p "\$ZITI_PWD"/m);
  });

  it("runs as written and leaves one 0600 identity file per role, the one-time tokens removed", async () => {
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(readdirSync(work).filter((f) => f.endsWith(".jwt"))).toEqual([]);
    for (const name of IDENTITIES) {
      expect(statSync(idFile(name)).mode & 0o777).toBe(0o600);
      expect((await loadIdentity(idFile(name))).ztAPI).toBe(`${overlay.ctrlUrl}/edge/client/v1`);
    }
    // The pin printed for node-exporter-daemonset.yaml's allow.keys is prometheus-cluster-a's.
    const pin = identityKeyPin((await loadIdentity(idFile("prometheus-cluster-a"))).certPem);
    expect(result.stdout).toContain(`prometheus-cluster-a: "${pin}"`);
  });

  it("gives the services the attribute the proxy example's discovery selects, and each identity its role", async () => {
    const include = example<ProxyDeploymentExample>("proxy-deployment.yaml").proxy.config.discovery.include;
    expect(include).toEqual(["#metrics"]);
    const services = await overlay.listServices();
    for (const s of ["node-exporter", "prometheus-cluster-a"]) {
      expect(services.find((x) => x.name === s)?.roleAttributes).toContain("metrics");
    }
    const { data } = await overlay.api<{ data: { name: string; roleAttributes: string[] | null }[] }>(
      "GET",
      "identities?limit=500",
    );
    const roles = Object.fromEntries(data.map((i) => [i.name, i.roleAttributes ?? []]));
    expect(roles).toMatchObject({
      "node-1": ["cluster-a-nodes"],
      "node-2": ["cluster-a-nodes"],
      "cluster-a-bind": ["cluster-a-federate"],
      "prometheus-cluster-a": ["cluster-a-scrapers"],
      "prometheus-central": ["central-scrapers"],
    });
  });

  it("node-1 and node-2 bind node-exporter with the DaemonSet's bind config; prometheus-cluster-a's proxy scrapes both", async () => {
    expect(result.code).toBe(0);
    exporter = await NodeExporter.start();
    closers.push(exporter);
    // What `scrapez identity key` printed "for allow.keys" (the controller named the identity).
    const pin = /^ +prometheus-cluster-a: "(sha256:[A-Za-z0-9_-]{43})"$/m.exec(result.stdout)?.[1];
    expect(pin).toBeDefined();
    const config = structuredClone(example<DaemonSetExample>("node-exporter-daemonset.yaml").sidecar.bind.config);
    const target = config.targets[0]!;
    expect(target.service).toBe("node-exporter");
    target.upstream = exporter.url; // the pod's 127.0.0.1:9100
    target.allow = { identities: target.allow!.identities, keys: { "prometheus-cluster-a": pin! } }; // "replace with your pin"
    for (const n of NODES) await startBind(`bind-${n}`, idFile(n), config, 1);

    const cluster = example<ClusterExample>("cluster-prometheus.yaml");
    clusterProxyPort = await startProxy(
      "proxy-cluster-a",
      idFile("prometheus-cluster-a"),
      cluster.sidecar.proxy.config,
    );
    // The generated prometheus.yml's discovery: each node a replica of node-exporter.
    expect(await sdTargets(clusterProxyPort, "?service=node-exporter")).toEqual(NODES.map((n) => `${n}~node-exporter`));
    for (const n of NODES) {
      const r = await viaProxy(clusterProxyPort, `http://${n}~node-exporter/metrics`);
      expect(r.status, r.body).toBe(200);
      expect(r.body).toMatch(/^node_load1 /m);
    }
  }, 240_000);

  it("prometheus-central is refused node-exporter and discovers only prometheus-cluster-a", async () => {
    const central = example<ProxyDeploymentExample>("proxy-deployment.yaml").proxy.config;
    centralProxyPort = await startProxy("proxy-central", idFile("prometheus-central"), central);
    for (const n of NODES) {
      const r = await viaProxy(centralProxyPort, `http://${n}~node-exporter/metrics`);
      expect(r.status).toBe(502);
      expect(r.headers["x-scrapez-proxy-error"]).toBe("not-dialable");
    }
    expect(await sdTargets(centralProxyPort)).toEqual(["prometheus-cluster-a"]);
  });

  it("cluster-a-bind binds prometheus-cluster-a (its /federate only) and prometheus-central federates it", async () => {
    const cluster = example<ClusterExample>("cluster-prometheus.yaml");
    // The cluster Prometheus runs the example's generated prometheus.yml, its proxy_url and /sd on this run's port.
    const promYml = cluster.sidecar.files["prometheus.yml"]!.replaceAll(
      "127.0.0.1:9480",
      `127.0.0.1:${clusterProxyPort}`,
    );
    const prom = await Prometheus.start(promYml, { version: "3" });
    closers.push(prom);
    await prom.waitForTargets(
      (ts) => NODES.every((n) => ts.some((t) => t.labels.instance === `${n}~node-exporter` && t.health === "up")),
      90_000,
      "both nodes up through prometheus-cluster-a's proxy",
    );
    const config = structuredClone(cluster.sidecar.bind.config);
    expect(config.targets.map((t) => t.service)).toEqual(["prometheus-cluster-a"]);
    config.targets[0]!.upstream = prom.url; // the pod's 127.0.0.1:9090
    await startBind("bind-cluster-a", idFile("cluster-a-bind"), config, 1);

    const match = encodeURIComponent('{job="overlay-exporters"}');
    const fed = await viaProxy(centralProxyPort, `http://prometheus-cluster-a/federate?match[]=${match}`);
    expect(fed.status, fed.body).toBe(200);
    for (const n of NODES) {
      const line = fed.body.split("\n").find((l) => l.startsWith("node_load1{") && l.includes(`replica="${n}"`));
      expect(line, fed.body.slice(0, 2000)).toBeDefined();
      expect(line).toContain('cluster="cluster-a"');
    }
    // Only /federate is bound; and the cluster's own scraper may not dial its Prometheus.
    expect((await viaProxy(centralProxyPort, "http://prometheus-cluster-a/api/v1/targets")).status).toBe(404);
    const own = await viaProxy(clusterProxyPort, `http://prometheus-cluster-a/federate?match[]=${match}`);
    expect(own.status).toBe(502);
    expect(own.headers["x-scrapez-proxy-error"]).toBe("not-dialable");
  }, 240_000);
});

// ---- Publishing the chart and the image ------------------------------------------------------------------------

/** The publishing block's commands, in order (the first word or two of each). */
const PUBLISH_COMMANDS = ["helm package", "helm push", "docker build", "docker push", "helm show", "helm install"];
describe("docs/kubernetes.md, publishing: the chart and the image pushed to a real OCI registry", () => {
  const work = tempDir("k8s-docs-publish");
  let registry: Registry;
  let image = "";
  let varsBlock = "";
  let block = "";
  let result: CommandResult;
  let REGISTRY = "";
  const calls = join(work, ".calls");
  const helmEnv: NodeJS.ProcessEnv = { ...helmEnvAt(work), DOCKER_CONFIG: join(work, ".docker") };
  const helm = helmRunner(work, { cwd: work, env: helmEnv });

  beforeAll(async () => {
    const blocks = shBlocks(docPart("## Publishing the chart and the image", "\n## "));
    expect(blocks).toHaveLength(2);
    [varsBlock, block] = blocks as [string, string];
    await requireEngine();
    // A cold build of the image on vfs takes minutes (the whole suite starts it early: docker-prebuild.ts).
    const t0 = Date.now();
    image = await scrapezImage();
    const imageMs = Date.now() - t0;
    registry = await Registry.start();
    REGISTRY = `${registry.host}/platform`;

    // The block's relative paths (deploy/helm/scrapez, the examples) resolve in this dir as in a checkout.
    symlinkSync(join(repoRoot, "deploy"), join(work, "deploy"));
    const bin = join(work, ".bin");
    mkdirSync(bin);
    // The stand-ins the doc names. helm: --plain-http for oci:// (this registry is plain HTTP on loopback), and
    // install run as template (no cluster here).
    script(join(bin, "helm"), [
      `echo "helm $*" >> "${calls}"`,
      'case "$*" in *oci://*) plain=--plain-http ;; *) plain= ;; esac',
      `if [ "$1" = install ]; then shift; exec "${helmBin()}" template "$@" $plain; fi`,
      `exec "${helmBin()}" "$@" $plain`,
    ]);
    // docker: `build -t TAG .` tags the test's build of the same Dockerfile (its base is a local image: nothing can
    // be pulled here); everything else is the real docker.
    script(join(bin, "docker"), [
      `echo "docker $*" >> "${calls}"`,
      'if [ "$1" = build ]; then',
      '  while [ $# -gt 0 ]; do if [ "$1" = -t ]; then tag=$2; fi; shift; done',
      `  exec docker-real tag "${image}" "$tag"`,
      "fi",
      'exec docker-real "$@"',
    ]);
    const realDocker = (await runCommand("sh", ["-c", "command -v docker"])).stdout.trim();
    symlinkSync(realDocker, join(bin, "docker-real"));
    const t1 = Date.now();
    result = await runBlock(block, work, { ...helmEnv, PATH: `${bin}:${process.env.PATH ?? ""}`, REGISTRY }, 300_000);
    console.log(
      `[k8s-docs] scrapez image ${imageMs} ms (${buildFigures.at(-1)?.cached ? "cached" : "built by this file"}); registry up in ${registry.startupMs} ms; ` +
        `the doc's publishing block ${Date.now() - t1} ms (exit ${result.code})`,
    );
  }, 900_000);

  afterAll(async () => {
    if (REGISTRY) await docker(["rmi", `${REGISTRY}/scrapez:0.1.0`]);
    await registry?.close();
  });

  it("names the registry in one variable that every command uses", () => {
    expect(varsBlock).toMatch(/^REGISTRY=\S+/m);
    const commands = block
      .replace(/\\\n\s*/g, " ")
      .split("\n")
      .filter((l) => /^(helm|docker) /.test(l));
    expect(commands.map((c) => c.split(/\s+/).slice(0, 2).join(" "))).toEqual(PUBLISH_COMMANDS);
    for (const c of commands.slice(1)) expect(c).toContain("$REGISTRY");
  });

  it("runs as written: every command ran and succeeded", () => {
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    const ran = readFileSync(calls, "utf8").trim().split("\n");
    expect(ran.map((c) => c.split(" ").slice(0, 2).join(" "))).toEqual(PUBLISH_COMMANDS);
    expect(`${result.stdout}${result.stderr}`).toContain(`Pushed: ${REGISTRY}/charts/scrapez:0.1.0`);
    expect(result.stdout).toMatch(/^name: scrapez$/m); // helm show chart, from the registry
    expect(result.stdout).toMatch(/^version: 0\.1\.0$/m);
  });

  it("the registry holds the packaged chart byte for byte; helm pull gives the same file", async () => {
    const pkg = readFileSync(join(work, "scrapez-0.1.0.tgz"));
    const sha = `sha256:${createHash("sha256").update(pkg).digest("hex")}`;
    const catalog = await registry.json<{ repositories: string[] }>("/v2/_catalog");
    expect(catalog.repositories.sort()).toEqual(["platform/charts/scrapez", "platform/scrapez"]);
    const manifest = await registry.json<{
      config: { mediaType: string };
      layers: { mediaType: string; digest: string }[];
    }>("/v2/platform/charts/scrapez/manifests/0.1.0", "application/vnd.oci.image.manifest.v1+json");
    expect(manifest.config.mediaType).toBe("application/vnd.cncf.helm.config.v1+json");
    expect(manifest.layers).toEqual([
      expect.objectContaining({ mediaType: "application/vnd.cncf.helm.chart.content.v1.tar+gzip", digest: sha }),
    ]);
    const pulled = join(work, "pulled");
    mkdirSync(pulled);
    const r = await helm([
      "pull",
      `oci://${REGISTRY}/charts/scrapez`,
      "--version",
      "0.1.0",
      "-d",
      pulled,
      "--plain-http",
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(pulled, "scrapez-0.1.0.tgz")).equals(pkg)).toBe(true);
  });

  it("the registry holds the built image; docker pull gives it back", async () => {
    const id = (await dockerOk(["image", "inspect", "--format", "{{.Id}}", image])).trim();
    const manifest = await registry.json<{ config: { digest: string } }>(
      "/v2/platform/scrapez/manifests/0.1.0",
      "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
    );
    expect(manifest.config.digest).toBe(id);
    const ref = `${REGISTRY}/scrapez:0.1.0`;
    await dockerOk(["rmi", ref]); // untags it (the test's own tag keeps the image)
    await dockerOk(["pull", ref], { timeoutMs: 120_000 });
    expect((await dockerOk(["image", "inspect", "--format", "{{.Id}}", ref])).trim()).toBe(id);
  }, 180_000);

  it("the install from oci:// renders the DaemonSet with the pushed image", () => {
    const docs = YAML.parseAllDocuments(result.stdout.slice(result.stdout.indexOf("---\n# Source:")))
      .map(
        (d) =>
          d.toJS() as {
            kind?: string;
            spec?: { template: { spec: { containers: { name: string; image: string }[] } } };
          },
      )
      .filter((d) => d?.kind === "DaemonSet");
    expect(docs).toHaveLength(1);
    const images = docs[0]!.spec!.template.spec.containers.map((c) => c.image);
    expect(images).toContain(`${REGISTRY}/scrapez:0.1.0`);
    expect(existsSync(join(work, "scrapez-0.1.0.tgz"))).toBe(true);
  });
});
