/**
 * The chart as it is distributed (issue 21 items 1 and 6), judged by the pinned Helm (tools/helm):
 * - values.schema.json refuses misspelled values naming the field (helm template, lint), the fields a config file may
 *   not set in the chart, and what bind.yaml's and proxy.yaml's own schemas refuse; pod spec shapes stay open;
 * - `helm package`: the .tgz holds exactly the chart's files less ci/ (.helmignore), `helm show chart` of it is
 *   Chart.yaml, `helm show values` values.yaml, it lints, and renders every ci/ value set as the directory does;
 * - Chart.yaml's distribution fields: kubeVersion admits what it says (the API server test runs v1.37), the icon is
 *   a file of this tree;
 * - the packed chart installed into a real kube-apiserver (test/harness/kube.ts, with the Operator CRDs): every ci/
 *   value set from the .tgz, with the objects the chart directory renders; the misspelt values refused by
 *   `helm install` before anything reaches the server.
 * The schema's source and its agreement with values.yaml: test/unit/chart-schema.test.ts.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { repoRoot } from "../harness/binaries.js";
import { helmRunner } from "../harness/helm.js";
import { KubeApiServer, KubeError, type KubeObject } from "../harness/kube.js";
import { runCommand, tempDir } from "../harness/process.js";

const chart = join(repoRoot, "deploy/helm/scrapez");
const ciDir = join(chart, "ci");
const ciFiles = readdirSync(ciDir)
  .filter((f) => f.endsWith("-values.yaml"))
  .sort();
const exampleFiles = readdirSync(join(chart, "examples"))
  .filter((f) => f.endsWith(".yaml") && f !== "federation.yaml") // federation.yaml is scrapez generate's input
  .sort();
/** A value set that renders the sidecar (the misspellings are checked against a chart that renders it). */
const SIDECAR_VALUES = join(chart, "examples/node-exporter-daemonset.yaml");

const work = tempDir("chart-package");
const helmHere = helmRunner(work);

/** Helm's exit code, stdout, and both outputs together (its messages go to either). */
async function helm(args: string[]): Promise<{ code: number; out: string; stdout: string }> {
  const r = await helmHere(args);
  return { code: r.code, out: r.stdout + r.stderr, stdout: r.stdout };
}

/** `helm package` once for the file: the path of the .tgz. */
let packed: Promise<string> | undefined;
function packageChart(): Promise<string> {
  packed ??= (async () => {
    const out = join(work, "package");
    const r = await helm(["package", chart, "-d", out]);
    expect(r.code, r.out).toBe(0);
    const meta = YAML.parse(readFileSync(join(chart, "Chart.yaml"), "utf8")) as { name: string; version: string };
    return join(out, `${meta.name}-${meta.version}.tgz`);
  })();
  return packed;
}

/** The Kubernetes objects of a YAML stream. */
function objectsOf(text: string): KubeObject[] {
  return YAML.parseAllDocuments(text)
    .map((d) => d.toJS() as unknown)
    .filter((o): o is KubeObject => !!o && typeof o === "object" && "kind" in o && "apiVersion" in o);
}
const template = (target: string, extra: string[] = []) => helm(["template", "scrapez", target, ...extra]);

/** Every file under a directory, relative to it, with / separators. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)).split("\\").join("/"))
    .sort();
}

/** The three of issue 21, and Helm's message for each: they rendered silently and did nothing before the schema. */
const MISSPELT: [string, string][] = [
  ["sidecar.replica=3", "at '/sidecar': additional properties 'replica' not allowed"],
  ["sidecar.serviceAccountName=ksm", "at '/sidecar': additional properties 'serviceAccountName' not allowed"],
  ["sidecar.networkPolicy.enable=false", "at '/sidecar/networkPolicy': additional properties 'enable' not allowed"],
];

describe("values.schema.json, applied by Helm", () => {
  it("is in the chart, and every ci/ value set and example passes helm lint with it", async () => {
    expect(filesUnder(chart)).toContain("values.schema.json");
    expect(ciFiles.length).toBeGreaterThanOrEqual(exampleFiles.length);
    for (const f of [...ciFiles.map((f) => join(ciDir, f)), ...exampleFiles.map((f) => join(chart, "examples", f))]) {
      const r = await helm(["lint", "--strict", chart, "-f", f]);
      expect(r.out, f).toContain("0 chart(s) failed");
      expect(r.code, `${f}\n${r.out}`).toBe(0);
    }
  });

  for (const [set, message] of MISSPELT) {
    it(`refuses --set ${set} naming the field, in helm template and helm lint`, async () => {
      const t = await template(chart, ["-f", SIDECAR_VALUES, "--set", set]);
      expect(t.code).not.toBe(0);
      expect(t.out).toContain("values don't meet the specifications of the schema");
      expect(t.out).toContain(message);
      const l = await helm(["lint", chart, "-f", SIDECAR_VALUES, "--set", set]);
      expect(l.code).not.toBe(0);
      expect(l.out).toContain(message);
    });
  }

  it("renders the correctly spelt values (the control for the refusals)", async () => {
    const r = await template(chart, [
      "-f",
      SIDECAR_VALUES,
      "--set",
      "sidecar.kind=Deployment,sidecar.replicas=3,sidecar.networkPolicy.enabled=false,sidecar.bind.identity.perNode=false",
    ]);
    expect(r.code, r.out).toBe(0);
    const objects = YAML.parseAllDocuments(r.out).map(
      (d) => d.toJS() as { kind: string; spec?: { replicas?: number } },
    );
    expect(objects.find((o) => o?.kind === "Deployment")?.spec?.replicas).toBe(3);
    expect(objects.some((o) => o?.kind === "NetworkPolicy")).toBe(false);
  });

  it("refuses in config what the chart sets itself (bind: identity, statusFile; proxy: identities, auth, tls)", async () => {
    const cases: [string, string][] = [
      ["sidecar.bind.config.identity=/x.json", "at '/sidecar/bind/config': additional properties 'identity'"],
      ["sidecar.bind.config.statusFile=/x", "at '/sidecar/bind/config': additional properties 'statusFile'"],
      ["proxy.config.identities[0]=/x.json", "at '/proxy/config': additional properties 'identities'"],
      ["sidecar.proxy.config.auth.bearerTokenFile=/t", "at '/sidecar/proxy/config': additional properties 'auth'"],
      ["operator.proxy.config.tls.cert=/c", "at '/operator/proxy/config': additional properties 'tls'"],
    ];
    for (const [set, message] of cases) {
      const r = await template(chart, ["--set", set]);
      expect(r.code, set).not.toBe(0);
      expect(r.out, set).toContain(message);
    }
  });

  it("refuses what bind.yaml's and proxy.yaml's own schemas refuse, at the value's path", async () => {
    const target = { service: "a", upstream: "http://127.0.0.1:9100", pathz: ["/x"] };
    const r = await template(chart, [
      "--set",
      "sidecar.bind.config.logLevel=verbose,proxy.config.discovery.refreshSeconds=0",
      "--set-string",
      "operator.proxy.config.listen=9480",
      "--set-json",
      `sidecar.bind.config.targets=${JSON.stringify([target])}`,
      "--set-json",
      `sidecar.bind.config.self={"service": ""}`,
    ]);
    expect(r.code).not.toBe(0);
    for (const m of [
      "at '/sidecar/bind/config/logLevel': value must be one of 'debug', 'info', 'warn', 'error'",
      "at '/sidecar/bind/config/targets/0': additional properties 'pathz' not allowed",
      "at '/sidecar/bind/config/self/service': minLength",
      "at '/proxy/config/discovery/refreshSeconds': minimum",
      "at '/operator/proxy/config/listen': '9480' does not match pattern",
    ]) {
      expect(r.out).toContain(m);
    }
  });

  it("leaves pod spec shapes open: any container, volume, affinity or security context field passes to the pod", async () => {
    const container = { name: "x", image: "x:1", startupProbe: { exec: { command: ["true"] } }, stdin: false };
    const affinity = { podAntiAffinity: { preferredDuringSchedulingIgnoredDuringExecution: [] } };
    const r = await template(chart, [
      "-f",
      SIDECAR_VALUES,
      "--set-json",
      `sidecar.containers=${JSON.stringify([container])}`,
      "--set-json",
      `sidecar.affinity=${JSON.stringify(affinity)}`,
      "--set-json",
      `sidecar.volumes=${JSON.stringify([{ name: "v", csi: { driver: "d" } }])}`,
      "--set-json",
      `podSecurityContext.sysctls=${JSON.stringify([{ name: "net.ipv4.ping_group_range", value: "0 0" }])}`,
    ]);
    expect(r.code, r.out).toBe(0);
    const ds = YAML.parseAllDocuments(r.out)
      .map((d) => d.toJS() as { kind: string; spec: { template: { spec: Record<string, unknown> } } })
      .find((o) => o?.kind === "DaemonSet");
    const spec = ds!.spec.template.spec as {
      containers: { name: string; startupProbe?: unknown }[];
      affinity: unknown;
      volumes: { name: string }[];
      securityContext: { sysctls?: unknown };
    };
    expect(spec.containers.find((c) => c.name === "x")?.startupProbe).toEqual(container.startupProbe);
    expect(spec.affinity).toEqual(affinity);
    expect(spec.volumes.map((v) => v.name)).toContain("v");
    expect(spec.securityContext.sysctls).toEqual([{ name: "net.ipv4.ping_group_range", value: "0 0" }]);
  });
});

describe("helm package", () => {
  let tgz = "";
  let listing: string[] = [];
  beforeAll(async () => {
    tgz = await packageChart();
    const t = await runCommand("tar", ["-tzf", tgz]);
    expect(t.code, t.stderr).toBe(0);
    listing = t.stdout.split("\n").filter((l) => l && !l.endsWith("/"));
  });

  it("holds exactly the chart's files except ci/ (.helmignore): templates, values, values.schema.json, examples", () => {
    const expected = filesUnder(chart)
      .filter((f) => !f.startsWith("ci/"))
      .map((f) => `scrapez/${f}`);
    expect(listing.sort()).toEqual(expected);
    expect(listing).toEqual(
      expect.arrayContaining(["scrapez/Chart.yaml", "scrapez/values.yaml", "scrapez/values.schema.json"]),
    );
    expect(listing.filter((f) => f.startsWith("scrapez/ci/") || /(^|\/)tests?\//.test(f))).toEqual([]);
    expect(filesUnder(ciDir).length).toBeGreaterThan(0); // there was a ci/ to leave out
  });

  it("`helm show chart` of the package is Chart.yaml, and `helm show values` is values.yaml", async () => {
    const shown = await helm(["show", "chart", tgz]);
    expect(shown.code, shown.out).toBe(0);
    const chartYaml = YAML.parse(readFileSync(join(chart, "Chart.yaml"), "utf8")) as Record<string, unknown>;
    expect(YAML.parse(shown.out)).toEqual(chartYaml);
    for (const k of ["home", "sources", "kubeVersion", "icon"]) expect(chartYaml, k).toHaveProperty(k);
    const values = await helm(["show", "values", tgz]);
    // The file as it is (helm adds a line end after it).
    expect(values.out.trimEnd()).toBe(readFileSync(join(chart, "values.yaml"), "utf8").trimEnd());
  });

  it("lints, refuses the misspelt values too, and renders every ci/ value set exactly as the chart directory", async () => {
    const lint = await helm(["lint", "--strict", tgz]);
    expect(lint.code, lint.out).toBe(0);
    const bad = await template(tgz, ["-f", SIDECAR_VALUES, "--set", "sidecar.replica=3"]);
    expect(bad.out).toContain("at '/sidecar': additional properties 'replica' not allowed");
    for (const f of ciFiles) {
      const [fromTgz, fromDir] = await Promise.all([
        template(tgz, ["-f", join(ciDir, f)]),
        template(chart, ["-f", join(ciDir, f)]),
      ]);
      expect(fromTgz.code, `${f}\n${fromTgz.out}`).toBe(0);
      expect(fromTgz.out, f).toBe(fromDir.out);
    }
  });
});

describe("Chart.yaml's distribution fields", () => {
  const meta = YAML.parse(readFileSync(join(chart, "Chart.yaml"), "utf8")) as {
    home: string;
    sources: string[];
    icon: string;
    kubeVersion: string;
  };

  it("kubeVersion admits 1.25 and later (v1.37, what the API server test runs) and refuses 1.24", async () => {
    const values = ["-f", join(ciDir, ciFiles[0]!)];
    for (const v of ["1.25.0", "1.37.2", "v1.30.4-eks-a737599"]) {
      const r = await template(chart, [...values, "--kube-version", v]);
      expect(r.code, `${v}: ${r.out}`).toBe(0);
    }
    const old = await template(chart, [...values, "--kube-version", "1.24.17"]);
    expect(old.code).not.toBe(0);
    expect(old.out).toContain(`chart requires kubeVersion: ${meta.kubeVersion} which is incompatible with Kubernetes`);
  });

  it("the icon is an SVG of this tree, under the repository address that home and sources give", () => {
    expect(meta.sources).toContain(meta.home);
    const m = /^https:\/\/raw\.githubusercontent\.com\/([^/]+\/[^/]+)\/main\/(.+)$/.exec(meta.icon);
    expect(m, meta.icon).not.toBeNull();
    expect(meta.home).toBe(`https://github.com/${m![1]}`);
    const svg = readFileSync(join(repoRoot, m![2]!), "utf8");
    expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*viewBox="0 0 256 256"/);
  });
});

describe("the packed chart, installed into a real API server", () => {
  let kube: KubeApiServer;
  let tgz = "";
  const inKube = (args: string[]) => helm([...args, "--kubeconfig", kube.kubeconfig]);
  const sets = ciFiles.map((f) => f.replace(/-values\.yaml$/, ""));

  beforeAll(async () => {
    tgz = await packageChart();
    kube = await KubeApiServer.start();
    console.log(`[chart-package] etcd + kube-apiserver ready in ${kube.startMs.etcd + kube.startMs.apiServer} ms`);
    // The Operator value sets render Prometheus and ScrapeConfig objects: the pinned module's CRDs first.
    await kube.installOperatorCrds();
  }, 240_000);

  afterAll(async () => {
    await kube?.close();
  });

  it("helm install of the .tgz takes every ci/ value set: deployed, with exactly the objects the chart directory renders, stored", async () => {
    expect(sets.length).toBeGreaterThanOrEqual(4);
    for (const set of sets) {
      const ns = `tgz-${set}`;
      const values = join(ciDir, `${set}-values.yaml`);
      const install = await inKube(["install", set, tgz, "-f", values, "-n", ns, "--create-namespace"]);
      expect(install.code, `${set}\n${install.out}`).toBe(0);
      expect(install.stdout, set).toMatch(/STATUS: deployed/);
      const list = await inKube(["list", "-n", ns, "-o", "json"]);
      expect(JSON.parse(list.stdout), set).toEqual([
        expect.objectContaining({ name: set, chart: "scrapez-0.1.0", status: "deployed" }),
      ]);
      const manifest = await inKube(["get", "manifest", set, "-n", ns]);
      const fromDir = await helm(["template", set, chart, "-f", values, "-n", ns]);
      const key = (o: KubeObject) => `${o.apiVersion} ${o.kind} ${o.metadata.name}`;
      const installed = objectsOf(manifest.stdout);
      // The objects the server was given are those the checkout renders, field for field.
      expect(installed.map(key).sort(), set).toEqual(objectsOf(fromDir.stdout).map(key).sort());
      expect(installed, set).toEqual(objectsOf(fromDir.stdout));
      for (const o of installed) {
        const res = await kube.resource(o.apiVersion, o.kind);
        const live = await kube.get(o.apiVersion, o.kind, o.metadata.name, res.namespaced ? ns : undefined);
        expect(live.metadata.annotations?.["meta.helm.sh/release-name"], `${set}: ${key(o)}`).toBe(set);
      }
    }
  });

  it("helm install refuses the misspelt values naming the field, and nothing reaches the server", async () => {
    for (const [set, message] of MISSPELT) {
      const ns = "tgz-misspelt";
      const r = await inKube([
        "install",
        "misspelt",
        tgz,
        "-f",
        SIDECAR_VALUES,
        "-n",
        ns,
        "--create-namespace",
        "--set",
        set,
      ]);
      expect(r.code, set).not.toBe(0);
      expect(r.out, set).toContain(message);
    }
    // Not even the namespace --create-namespace would make, nor a release record.
    const namespace = await kube.get("v1", "Namespace", "tgz-misspelt").catch((e: KubeError) => e);
    expect((namespace as KubeError).code).toBe(404);
    const releases = await kube.list("v1", "Secret", { labelSelector: "owner=helm,name=misspelt" });
    expect(releases).toEqual([]);
    const all = await inKube(["list", "-A", "-a", "-q"]);
    expect(all.stdout.split("\n")).not.toContain("misspelt");
  });
});
