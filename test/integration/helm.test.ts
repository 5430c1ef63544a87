/**
 * The Helm chart (deploy/helm/scrapez), proven without a cluster:
 *
 * 1. statically, for every example values file: `helm lint` and `helm template` with the pinned Helm; every rendered
 *    object decoded strictly against the Kubernetes and prometheus-operator API types (tools/k8scheck: unknown or
 *    duplicate fields fail); the security posture asserted field by field; `scrapez check --no-files` on every
 *    config inside the rendered ConfigMaps; the examples' generated parts still equal `scrapez generate`'s output;
 *    the chart refusing values that would deploy something broken;
 * 2. at run time: the rendered pods of all four examples run as real containers on the Docker engine
 *    (test/harness/pod.ts: a pause container's network namespace per pod, the rendered mounts, securityContext,
 *    command and env, each rendered image mapped to a local one) on a real local overlay, with their rendered
 *    probes: node_exporter behind the DaemonSet's scrapez bind (per-node identity), a real Prometheus (the cluster
 *    example) scraping it through its in-pod scrapez proxy, and both central shapes (the Operator Prometheus's extra
 *    container, the proxy Deployment) federating that Prometheus's /federate through the overlay.
 */
import { readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { helmBin, k8scheckBin, nodeExporterBin, prometheus3Bin, repoRoot } from "../harness/binaries.js";
import { binaryImage, removeLabelled, requireEngine, scrapezImage } from "../harness/docker.js";
import { Overlay } from "../harness/overlay.js";
import { waitUntil } from "../harness/ports.js";
import { RenderedPod, type Container, type PodSpec, type Volume } from "../harness/pod.js";
import { runCommand, tempDir } from "../harness/process.js";
import { cliPath } from "../harness/scrapez.js";

const chart = join(repoRoot, "deploy/helm/scrapez");
const examples = join(chart, "examples");
const EXAMPLES = ["node-exporter-daemonset", "cluster-prometheus", "proxy-deployment", "operator"] as const;
/** The placeholder pin in the DaemonSet example ("replace with your pin"). */
const PLACEHOLDER_PIN = "sha256:8G-PuPan25PpYECpBPJkku65D3DcDdBFivB76wfLTjE";
const IMAGE = "scrapez:0.1.0";
const dir = tempDir("helm-test");

type Obj = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> } } & Record<
  string,
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  any
>;

async function run(cmd: string, args: string[], input?: string): Promise<{ code: number; out: string; err: string }> {
  const r = await runCommand(cmd, args, { input });
  return { code: r.code, out: r.stdout, err: r.stderr };
}

const cli = (args: string[]) => run(process.execPath, [cliPath, ...args]);

async function template(valuesFile: string, extra: string[] = []) {
  const r = await run(helmBin(), ["template", "scrapez", chart, "-f", valuesFile, ...extra]);
  return {
    ...r,
    objects: YAML.parseAllDocuments(r.out)
      .map((d) => d.toJS() as Obj)
      .filter(Boolean),
  };
}

/** Every pod spec of a render: workloads' templates, and the Operator Prometheus's (its own containers only). */
type Pod = { owner: Obj; spec: PodSpec; labels?: Record<string, string> };
function pods(objects: Obj[]): Pod[] {
  return objects.flatMap((o): Pod[] => {
    if (o.kind === "Deployment" || o.kind === "DaemonSet") {
      return [{ owner: o, spec: o.spec.template.spec as PodSpec, labels: o.spec.template.metadata.labels }];
    }
    if (o.kind === "Prometheus")
      return [{ owner: o, spec: { containers: o.spec.containers, volumes: o.spec.volumes } }];
    return [];
  });
}

const isScrapez = (c: Container) => c.image === IMAGE;

describe("the chart, rendered", () => {
  const renders = new Map<string, Awaited<ReturnType<typeof template>>>();
  beforeAll(async () => {
    for (const e of EXAMPLES) renders.set(e, await template(join(examples, `${e}.yaml`)));
  });

  it.each(EXAMPLES)("%s: helm lint passes", async (e) => {
    const r = await run(helmBin(), ["lint", chart, "-f", join(examples, `${e}.yaml`)]);
    expect(r.out).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    expect(r.out).not.toMatch(/\[(WARNING|ERROR)\]/);
    expect(r.code).toBe(0);
  });

  it.each(EXAMPLES)("%s: every rendered object decodes strictly against the API types", async (e) => {
    const r = renders.get(e)!;
    expect(r.code, r.err).toBe(0);
    const check = await run(k8scheckBin(), [], r.out);
    expect(check.out).toContain(`k8scheck: ${r.objects.length} objects, 0 failed`);
    expect(check.code, check.out).toBe(0);
    expect(r.objects.length).toBeGreaterThanOrEqual(3);
  });

  it("k8scheck itself fails an unknown field, a wrong type and an unknown kind", async () => {
    const bad = [
      "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndatas: {}",
      "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}\nspec: {replicas: two}",
      "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: c}",
      "apiVersion: monitoring.coreos.com/v1alpha1\nkind: ScrapeConfig\nmetadata: {name: d}\nspec: {proxyURL: x}",
    ].join("\n---\n");
    const r = await run(k8scheckBin(), [], bad);
    expect(r.out).toMatch(/unknown field "datas"/);
    expect(r.out).toMatch(/cannot unmarshal string into Go struct field .*replicas/);
    expect(r.out).toMatch(/kind "Widget" of "example.com\/v1" is not one k8scheck knows/);
    expect(r.out).toMatch(/unknown field "spec.proxyURL"/);
    expect(r.out).toContain("4 objects, 4 failed");
    expect(r.code).toBe(1);
  });

  it.each(EXAMPLES)("%s: the security posture, field by field", (e) => {
    const { objects } = renders.get(e)!;
    const all = pods(objects);
    expect(all.length).toBeGreaterThan(0);
    for (const { owner, spec } of all) {
      const where = `${owner.kind} ${owner.metadata.name}`;
      if (owner.kind !== "Prometheus") {
        // The Operator sets its Prometheus pod's own securityContext; the chart's workloads set theirs.
        expect(spec.securityContext, where).toMatchObject({
          runAsNonRoot: true,
          runAsUser: 10001,
          runAsGroup: 10001,
          fsGroup: 10001,
          seccompProfile: { type: "RuntimeDefault" },
        });
        expect(spec.automountServiceAccountToken, where).toBe(false);
        expect(spec.hostNetwork, where).toBeUndefined();
      }
      for (const c of spec.containers) {
        expect(c.securityContext, `${where} ${c.name}`).toMatchObject({
          runAsNonRoot: true,
          readOnlyRootFilesystem: true,
          allowPrivilegeEscalation: false,
          capabilities: { drop: ["ALL"] },
        });
        expect(c.securityContext?.capabilities?.add, `${where} ${c.name}`).toBeUndefined();
        for (const p of c.ports ?? []) expect(p.hostPort, `${where} ${c.name}`).toBeUndefined();
        if (!isScrapez(c)) continue;
        expect(c.securityContext).toMatchObject({ runAsUser: 10001, runAsGroup: 10001 });
        expect(c.resources?.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
        expect(c.resources?.limits?.memory).toEqual(expect.any(String));
        expect(c.readinessProbe && c.livenessProbe, `${where} ${c.name} probes`).toBeTruthy();
        const identityMount = c.volumeMounts?.find((m) => m.mountPath.startsWith("/var/run/secrets/scrapez/"));
        expect(identityMount?.readOnly, `${where} ${c.name}`).toBe(true);
        expect(c.volumeMounts?.find((m) => m.mountPath === "/etc/scrapez")?.readOnly).toBe(true);
      }
      const secrets = (spec.volumes ?? []).filter((v: Volume) => v.secret);
      expect(secrets.length, where).toBeGreaterThan(0);
      for (const v of secrets) expect(v.secret!.defaultMode, `${where} volume ${v.name}`).toBe(0o400);
    }
  });

  it.each(["node-exporter-daemonset", "cluster-prometheus"] as const)(
    "%s: the exporter pod is dark (a NetworkPolicy denies all ingress; no container declares a port)",
    (e) => {
      const { objects } = renders.get(e)!;
      const [pod] = pods(objects);
      const np = objects.find((o) => o.kind === "NetworkPolicy")!;
      expect(np.spec.podSelector.matchLabels).toEqual(pod!.labels);
      expect(np.spec.policyTypes).toContain("Ingress");
      expect(np.spec.ingress ?? []).toEqual([]);
      for (const c of pod!.spec.containers) expect(c.ports, c.name).toBeUndefined();
      const bind = pod!.spec.containers.find((c) => c.name === "scrapez-bind")!;
      expect(bind.readinessProbe?.exec?.command).toEqual([
        "scrapez",
        "probe",
        "--ready",
        "--status-file",
        "/var/run/scrapez/bind.status.json",
      ]);
      expect(bind.livenessProbe?.exec?.command?.[2]).toBe("--live");
      const status = pod!.spec.volumes!.find((v) => v.name === "scrapez-status")!;
      expect(status.emptyDir).toBeDefined();
    },
  );

  it("proxy-deployment: HTTP probes, bearer auth, a NetworkPolicy admitting only Prometheus", () => {
    const { objects } = renders.get("proxy-deployment")!;
    const c = pods(objects)[0]!.spec.containers[0]!;
    expect(c.readinessProbe?.httpGet).toMatchObject({ path: "/-/ready", port: "http" });
    expect(c.livenessProbe?.httpGet).toMatchObject({ path: "/-/healthy", port: "http" });
    const cfg = YAML.parse(objects.find((o) => o.kind === "ConfigMap")!.data["proxy.yaml"]);
    expect(cfg.auth).toEqual({ bearerTokenFile: "/var/run/secrets/scrapez/proxy-token/token" });
    const np = objects.find((o) => o.kind === "NetworkPolicy")!;
    expect(np.spec.ingress).toEqual([
      {
        from: [{ podSelector: { matchLabels: { "app.kubernetes.io/name": "prometheus" } } }],
        ports: [{ port: "http", protocol: "TCP" }],
      },
    ]);
    expect(objects.find((o) => o.kind === "Service")!.spec.ports[0]).toMatchObject({ port: 9480, targetPort: "http" });
  });

  it.each(EXAMPLES)("%s: scrapez check --no-files passes every config in the rendered ConfigMaps", async (e) => {
    const configs = renders
      .get(e)!
      .objects.filter((o) => o.kind === "ConfigMap")
      .flatMap((o) => Object.entries((o.data ?? {}) as Record<string, string>))
      .filter(([k]) => k === "bind.yaml" || k === "proxy.yaml");
    expect(configs.length).toBeGreaterThan(0);
    for (const [k, text] of configs) {
      const f = join(dir, `${e}-${k}`);
      writeFileSync(f, text);
      const ok = await cli(["check", "--config", f, "--no-files"]);
      expect(ok.out, ok.err).toContain(`valid ${k.replace(".yaml", "")} config`);
      expect(ok.code).toBe(0);
      // Where the Secrets are not mounted, the check without --no-files names the missing file.
      const missing = await cli(["check", "--config", f]);
      expect(missing.err).toMatch(/identit(y|ies(\[0\])?): file \/var\/run\/secrets\/scrapez\/.* does not exist/);
      expect(missing.code).toBe(1);
    }
  });

  it("the examples' generated parts are what scrapez generate writes from examples/federation.yaml", async () => {
    const fed = join(examples, "federation.yaml");
    const central = await cli(["generate", "central", "--config", fed, "--format", "operator"]);
    expect(central.code, central.err).toBe(0);
    const operator = YAML.parse(readFileSync(join(examples, "operator.yaml"), "utf8"));
    expect(operator.operator.scrapeConfigs).toBe(central.out);
    const cluster = await cli(["generate", "cluster", "--cluster", "cluster-a", "--config", fed]);
    expect(cluster.code, cluster.err).toBe(0);
    const [prometheusYml, bindYaml] = cluster.out.split(/^---\n/m) as [string, string];
    const values = YAML.parse(readFileSync(join(examples, "cluster-prometheus.yaml"), "utf8"));
    expect(values.sidecar.files["prometheus.yml"]).toBe(prometheusYml);
    expect(values.sidecar.bind.config.targets).toEqual(YAML.parse(bindYaml).targets);
    // ...and the chart renders those ScrapeConfigs unchanged but for its own labels.
    const rendered = renders.get("operator")!.objects.filter((o) => o.kind === "ScrapeConfig");
    const generated = YAML.parseAllDocuments(central.out).map((d) => d.toJS() as Obj);
    expect(rendered.map((o) => o.spec)).toEqual(generated.map((o) => o.spec));
    for (const o of rendered) expect(o.metadata.labels).toMatchObject({ "app.kubernetes.io/managed-by": "scrapez" });
  });

  it("operator: prometheus-patch.yaml adds the same container and volumes, and decodes strictly as a Prometheus", async () => {
    const { objects } = renders.get("operator")!;
    const patch = YAML.parse(objects.find((o) => o.kind === "ConfigMap")!.data["prometheus-patch.yaml"]);
    const prom = objects.find((o) => o.kind === "Prometheus")!;
    expect(patch.spec.containers).toEqual(prom.spec.containers);
    expect(patch.spec.volumes).toEqual(prom.spec.volumes);
    const asObject = YAML.stringify({
      apiVersion: "monitoring.coreos.com/v1",
      kind: "Prometheus",
      metadata: { name: "existing" },
      ...patch,
    });
    const r = await run(k8scheckBin(), [], asObject);
    expect(r.code, r.out).toBe(0);
  });

  it.each([
    [
      "an identity Secret missing",
      ["--set", "sidecar.bind.identity.secretName="],
      /sidecar\.bind\.identity\.secretName is required/,
    ],
    [
      "identity in the bind config",
      ["--set", "sidecar.bind.config.identity=/x.json"],
      /leave out identity and statusFile/,
    ],
    ["perNode on a Deployment", ["--set", "sidecar.kind=Deployment"], /perNode needs sidecar.kind DaemonSet/],
    ["an unknown workload kind", ["--set", "sidecar.kind=StatefulSet"], /sidecar.kind must be DaemonSet or Deployment/],
  ])("node-exporter-daemonset: refuses %s", async (_n, set, message) => {
    const r = await template(join(examples, "node-exporter-daemonset.yaml"), set);
    expect(r.err).toMatch(message);
    expect(r.code).not.toBe(0);
  });

  it.each([
    [
      "no bearer token for a listener beyond loopback",
      ["--set", "proxy.auth.bearerToken.secretName="],
      /proxy\.auth\.bearerToken\.secretName is required/,
    ],
    [
      "identities in the proxy config",
      ["--set", "proxy.config.identities[0]=/x.json"],
      /proxy\.config\.identities: leave it out/,
    ],
  ])("proxy-deployment: refuses %s", async (_n, set, message) => {
    const r = await template(join(examples, "proxy-deployment.yaml"), set);
    expect(r.err).toMatch(message);
    expect(r.code).not.toBe(0);
  });

  it("operator: refuses scrapeConfigs that are not ScrapeConfigs", async () => {
    const r = await template(join(examples, "operator.yaml"), [
      "--set-string",
      "operator.scrapeConfigs=apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
    ]);
    expect(r.err).toMatch(/is a v1 Secret, not a monitoring.coreos.com\/v1alpha1 ScrapeConfig/);
    expect(r.code).not.toBe(0);
  });
});

/** GET from this host through a scrapez proxy (absolute-form, as Prometheus's proxy_url does). */
function viaProxy(host: string, port: number, target: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    http
      .get({ host, port, path: target, headers, timeout: 30_000 }, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on("error", reject);
  });
}

/** A TCP connect from this host: "connected", or the error code (ECONNREFUSED: nothing listens there). */
function connectFromHost(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: 5_000 });
    s.on("connect", () => {
      s.destroy();
      resolve("connected");
    });
    s.on("timeout", () => {
      s.destroy();
      resolve("timeout");
    });
    s.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

/** The proxy every in-pod scrapez proxy of these examples listens on (the pod's loopback, as rendered). */
const POD_PROXY = "http://127.0.0.1:9480";

/**
 * What of the rendered objects is not run here, and why (printed by the test that checks this list is complete).
 * Deployments, DaemonSets, the Operator's Prometheus (its extra container) and the ConfigMaps and Secrets they mount
 * are run as containers by test/harness/pod.ts.
 */
const NOT_RUN: Record<string, string> = {
  NetworkPolicy:
    "a Docker bridge enforces no NetworkPolicy; the dark pods are dark because their exporters listen on the pod's " +
    "loopback, which the test checks from the host and from another pod",
  Service: "no kube-proxy: the central Prometheus's side reaches the proxy pod at its pod IP and the Service's port",
  ScrapeConfig: "read by a Prometheus Operator, which does not run here (checked statically above)",
};

describe("the rendered pods, run as real containers on a real overlay", () => {
  let overlay: Overlay;
  const podList: RenderedPod[] = [];
  let nodes: RenderedPod;
  let cluster: RenderedPod;
  let operatorPod: RenderedPod;
  let central: RenderedPod;
  const token = "helm-test-token-3f9a";
  const kinds = new Set<string>();

  const configMaps = (objects: Obj[]) =>
    Object.fromEntries(objects.filter((o) => o.kind === "ConfigMap").map((o) => [o.metadata.name, o.data]));

  beforeAll(async () => {
    await requireEngine();
    const t0 = Date.now();
    // The rendered images, as local images (no registry is reachable here):
    // - scrapez:0.1.0 (the chart's image) -> the repository's Dockerfile built by the engine (scrapezImage);
    // - quay.io/prometheus/node-exporter:v1.9.1 -> Debian's node_exporter (/usr/bin/prometheus-node-exporter) on
    //   the base image;
    // - quay.io/prometheus/prometheus:v3.5.0 -> the Prometheus 3 built by setup (.cache/prometheus3) on the base.
    const [scrapez, nodeExporter, prometheus] = await Promise.all([
      scrapezImage(),
      binaryImage("node-exporter", nodeExporterBin()),
      binaryImage("prometheus", prometheus3Bin()),
    ]);
    console.log(`[helm.test] images ready in ${Date.now() - t0} ms: ${scrapez}, ${nodeExporter}, ${prometheus}`);
    const images = (image: string): string | undefined => {
      if (image === IMAGE) return scrapez;
      if (image.startsWith("quay.io/prometheus/node-exporter:")) return nodeExporter;
      if (image.startsWith("quay.io/prometheus/prometheus:")) return prometheus;
      return undefined;
    };

    // docker0's address: the controller's URL in the identities and the router's advertised address are the same
    // from the containers and from this host.
    const tOverlay = Date.now();
    overlay = await Overlay.start({ host: "198.18.200.1" });
    console.log(`[helm.test] overlay (controller + router on 198.18.200.1) up in ${Date.now() - tOverlay} ms`);
    await overlay.service("node-exporter", { dial: ["#cluster-a-scrapers"], bind: ["#nodes"] });
    await overlay.service("prometheus-cluster-a", { dial: ["#central"], bind: ["#cluster-a-bind"] });
    const id = async (name: string, role: string) => readFileSync(await overlay.identity(name, [role], dir), "utf8");
    const node1 = await id("node-1", "nodes");
    const clusterScraper = await id("prometheus-cluster-a", "cluster-a-scrapers");
    const clusterBind = await id("cluster-a-bind", "cluster-a-bind");
    const centralId = await id("prometheus-central", "central");
    const key = await cli(["identity", "key", "--identity", join(dir, "prometheus-cluster-a.json")]);
    const pin = /^key:\s+(sha256:\S+)$/m.exec(key.out)?.[1];
    expect(pin, key.out + key.err).toBeDefined();

    // The DaemonSet example with the cluster scraper's real pin in place of the placeholder ("replace with your pin").
    const nodesValues = join(dir, "node-exporter-daemonset.yaml");
    const text = readFileSync(join(examples, "node-exporter-daemonset.yaml"), "utf8");
    expect(text).toContain(PLACEHOLDER_PIN);
    writeFileSync(nodesValues, text.replace(PLACEHOLDER_PIN, pin!));

    const make = async (
      name: string,
      values: string,
      secrets: Record<string, Record<string, string>>,
      nodeName?: string,
    ) => {
      const r = await template(values);
      expect(r.code, r.err).toBe(0);
      for (const o of r.objects) kinds.add(o.kind);
      const [p] = pods(r.objects);
      const pod = await RenderedPod.create({
        name,
        spec: p!.spec,
        configMaps: configMaps(r.objects),
        secrets,
        nodeName,
        images,
        // The Operator's default pod securityContext (runAsUser 1000, fsGroup 2000) for its Prometheus pods.
        podSecurityContext: { runAsUser: 1000, runAsGroup: 2000, fsGroup: 2000, runAsNonRoot: true },
      });
      podList.push(pod);
      return pod;
    };
    [nodes, cluster, operatorPod, central] = await Promise.all([
      make("nodes", nodesValues, { "scrapez-node-identities": { "node-1.json": node1 } }, "node-1"),
      make("cluster-a", join(examples, "cluster-prometheus.yaml"), {
        "scrapez-cluster-a-bind": { "identity.json": clusterBind },
        "scrapez-prometheus-cluster-a": { "identity.json": clusterScraper },
      }),
      make("central-operator", join(examples, "operator.yaml"), {
        "scrapez-prometheus-central": { "identity.json": centralId },
      }),
      make("central-proxy", join(examples, "proxy-deployment.yaml"), {
        "scrapez-prometheus-central": { "identity.json": centralId },
        "scrapez-proxy-token": { token },
      }),
    ]);
    const t1 = Date.now();
    await Promise.all(podList.flatMap((p) => p.opts.spec.containers.map((c) => p.start(c.name))));
    console.log(
      `[helm.test] 4 pods, ${podList.reduce((n, p) => n + p.containers.size, 0)} containers started in ${Date.now() - t1} ms`,
    );
    for (const p of podList) for (const n of p.notes) console.log(`[helm.test] ${p.opts.name}: not as rendered: ${n}`);
    console.log(`[helm.test] images, overlay and pods ready in ${Date.now() - t0} ms`);
  }, 900_000);

  afterAll(async () => {
    await Promise.allSettled(podList.map((p) => p.close()));
    await removeLabelled();
    await overlay?.close();
  }, 120_000);

  const logs = async () => (await Promise.all(podList.map((p) => p.logs()))).join("\n");

  it("every rendered kind is either run as containers or said here why not", () => {
    const run = new Set(["Deployment", "DaemonSet", "Prometheus", "ConfigMap"]);
    const rest = [...kinds].filter((k) => !run.has(k)).sort();
    for (const k of rest) console.log(`[helm.test] not run as containers: ${k}: ${NOT_RUN[k] ?? "(no reason given)"}`);
    expect(rest.filter((k) => !(k in NOT_RUN))).toEqual([]);
  });

  it("every rendered probe passes on the kubelet's schedule: bind and in-pod proxy exec probes, the proxy Deployment's httpGet from the host", async () => {
    const all = [
      [nodes, "scrapez-bind"],
      [cluster, "scrapez-bind"],
      [cluster, "scrapez-proxy"],
      [operatorPod, "scrapez-proxy"],
      [central, "scrapez-proxy"],
    ] as const;
    const results = await Promise.all(
      all.flatMap(([pod, c]) =>
        (["readinessProbe", "livenessProbe"] as const).map(async (kind) => {
          const r = await pod.probeUntilOk(c, kind);
          return `${pod.opts.name}/${c} ${kind}: ok at attempt ${r.attempts}, ${r.ms} ms after start`;
        }),
      ),
    );
    for (const line of results) console.log(`[helm.test] ${line}`);
    // The bind probe says what it checked (all services bound), run as the container's user 10001.
    const r = await nodes.exec("scrapez-bind", nodes.container("scrapez-bind").readinessProbe!.exec!.command);
    expect(r).toEqual({ code: 0, out: "ready: 1 service(s) bound" });
    // The proxy Deployment listens on 0.0.0.0 as rendered: its httpGet probe reached it from the host at the pod IP.
    expect((await central.probe("scrapez-proxy", "readinessProbe")).detail).toContain(
      `http://${central.ip}:9480/-/ready: 200`,
    );
  });

  it("the containers run with the rendered securityContext and mounts: uid 10001 + fsGroup, read-only root, no capabilities, no new privileges, seccomp, the Secret 0440 root:10001", async () => {
    const r = await nodes.exec("scrapez-bind", [
      "sh",
      "-c",
      "id -u; id -g; id -G; stat -c '%a %u %g' /var/run/secrets/scrapez/bind/node-1.json; " +
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t' ' '; " +
        "touch /app/x 2>&1 || true; touch /var/run/scrapez/x && echo tmpfs-writable; " +
        "stat -f -c %T /var/run/scrapez",
    ]);
    expect(r.code, r.out).toBe(0);
    const lines = r.out.split("\n");
    expect(lines.slice(0, 4)).toEqual(["10001", "10001", "10001", "440 0 10001"]);
    expect(lines).toContain("CapEff: 0000000000000000");
    expect(lines).toContain("CapBnd: 0000000000000000"); // --cap-drop ALL: not even the bounding set keeps one
    expect(lines).toContain("NoNewPrivs: 1");
    expect(lines).toContain("Seccomp: 2"); // filter mode: the engine's default profile (RuntimeDefault)
    expect(r.out).toMatch(/touch: cannot touch '\/app\/x': Read-only file system/);
    expect(lines).toContain("tmpfs-writable");
    expect(lines.at(-1)).toBe("tmpfs"); // emptyDir medium Memory
    // node_exporter's container: the pod's user (the container sets none), the host's /proc, /sys and / read-only.
    const e = await nodes.exec("node-exporter", [
      "sh",
      "-c",
      "id -u; for m in /host/proc /host/sys /host/root; do grep \" $m \" /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1; done",
    ]);
    expect(e.out.split("\n")).toEqual(["10001", "/host/proc ro", "/host/sys ro", "/host/root ro"]);
  });

  it("node_exporter behind the DaemonSet's scrapez bind answers 200 through the cluster pod's scrapez proxy", async () => {
    await nodes.probeUntilOk("scrapez-bind", "readinessProbe");
    await cluster.probeUntilOk("scrapez-proxy", "readinessProbe");
    // The per-node identity makes node-1 its own replica of node-exporter (listed once the proxy's service list
    // includes its terminators: at its next refresh).
    let sd: unknown;
    await waitUntil(
      async () => {
        const r = await cluster.request("http://127.0.0.1:9480/sd?service=node-exporter");
        sd = r.status === 200 ? JSON.parse(r.body) : r.body;
        return JSON.stringify(sd).includes('"node-1~node-exporter"');
      },
      90_000,
      "the cluster pod's scrapez proxy lists node-1's replica of node-exporter in /sd",
    ).catch((err: Error) => {
      throw new Error(`${err.message}; last: ${JSON.stringify(sd)}`);
    });
    expect(sd).toEqual([
      expect.objectContaining({
        targets: ["node-1~node-exporter"],
        labels: expect.objectContaining({ __meta_ziti_service: "node-exporter", __meta_ziti_replica: "node-1" }),
      }),
    ]);
    const r = await cluster.request("http://node-1~node-exporter/metrics", { proxy: POD_PROXY });
    expect(r.status, r.body.slice(0, 500)).toBe(200);
    expect(r.body).toMatch(/^node_cpu_seconds_total\{/m);
    // The central identity has no Dial policy for the cluster's exporters: not reachable from there.
    const refused = await operatorPod.request("http://node-1~node-exporter/metrics", { proxy: POD_PROXY });
    expect(refused.status).toBe(502);
  });

  it("a port the rendered config puts on the pod's loopback is not reachable from outside the pod", async () => {
    // Inside the DaemonSet's pod node_exporter answers on 127.0.0.1:9100, as rendered...
    const inside = await nodes.request("http://127.0.0.1:9100/metrics");
    expect(inside.status).toBe(200);
    // ...and nothing listens on the pod's address: refused from this host, and from another pod on the network.
    expect(await connectFromHost(nodes.ip, 9100)).toBe("ECONNREFUSED");
    await expect(central.request(`http://${nodes.ip}:9100/metrics`)).rejects.toThrow(/ECONNREFUSED/);
    // The cluster pod's Prometheus and scrapez proxy, both on its loopback.
    expect(await connectFromHost(cluster.ip, 9090)).toBe("ECONNREFUSED");
    expect(await connectFromHost(cluster.ip, 9480)).toBe("ECONNREFUSED");
    // The proxy Deployment, rendered on 0.0.0.0, is reachable (and asks for its token).
    expect((await viaProxy(central.ip, 9480, "http://prometheus-cluster-a/federate")).status).toBe(401);
  });

  it("the cluster Prometheus scrapes it, and both central shapes federate that Prometheus over the overlay", async () => {
    let lastErr = "";
    await waitUntil(
      async () => {
        try {
          const r = await cluster.request("http://127.0.0.1:9090/api/v1/targets");
          const t = JSON.parse(r.body) as {
            data: { activeTargets: { health: string; lastError: string; labels: Record<string, string> }[] };
          };
          const target = t.data.activeTargets.find((x) => x.labels.replica === "node-1");
          lastErr = target?.lastError ?? "no target yet";
          return target?.health === "up";
        } catch (err) {
          lastErr = (err as Error).message;
          return false;
        }
      },
      120_000,
      "the cluster Prometheus's target node-1~node-exporter is up",
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${lastErr}\n${await logs()}`);
    });
    const federate = `http://prometheus-cluster-a/federate?match[]=${encodeURIComponent('{job="overlay-exporters"}')}`;
    // The Operator shape: scrapez proxy on the Prometheus pod's loopback, no auth.
    const viaOperator = await operatorPod.request(federate, { proxy: POD_PROXY });
    expect(viaOperator.status, viaOperator.body.slice(0, 300)).toBe(200);
    expect(viaOperator.body).toMatch(/^up\{(?=[^}]*cluster="cluster-a")(?=[^}]*replica="node-1")[^}]*\} 1 /m);
    expect(viaOperator.body).toMatch(/^node_cpu_seconds_total\{.*cluster="cluster-a"/m);
    // The Deployment shape, from outside its pod (where the central Prometheus is): bearer token required.
    const viaDeployment = await viaProxy(central.ip, 9480, federate, { authorization: `Bearer ${token}` });
    expect(viaDeployment.status).toBe(200);
    expect(viaDeployment.body).toMatch(/^up\{[^}]*cluster="cluster-a"[^}]*\} 1 /m);
    expect((await viaProxy(central.ip, 9480, federate)).status).toBe(401);
    // The cluster Prometheus exposes only /federate over the overlay.
    const api = await operatorPod.request("http://prometheus-cluster-a/api/v1/status/config", { proxy: POD_PROXY });
    expect(api.status).toBe(404);
  });
});
