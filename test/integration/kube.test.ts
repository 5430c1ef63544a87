/**
 * The chart installed into a real API server: kube-apiserver v1.37.2 (built from k8s.io/kubernetes by
 * scripts/setup.sh) on etcd (test/harness/kube.ts), with the Prometheus Operator's CRDs from the operator's Go module
 * pinned in setup.sh. What a type check cannot judge is the server's: defaulting, validation (required fields, name
 * rules, a probe's handler), CRD schemas with their patterns and CEL rules, admission, and strict field validation
 * (an unknown or duplicate field is an error). No controller-manager, scheduler or kubelet runs: the objects are
 * stored but never acted on (the pods run as containers in helm.test.ts instead).
 *
 * - the Operator CRDs installed and Established;
 * - every value set in deploy/helm/scrapez/ci/: each rendered object judged by a server-side dry run with
 *   fieldValidation=Strict (and no warnings), then `helm install` into its own namespace and `helm upgrade` with a
 *   changed value (revision 2), the objects read back from the server;
 * - what the server refuses that is well-typed: a pod template with `image: ""` and a probe with no handler, an
 *   unknown or duplicate field, ScrapeConfigs breaking the CRD's pattern and its CEL rule;
 * - the ScrapeConfigs `scrapez generate central|cluster --format operator` writes from examples/federation.yaml;
 * - docs/kubernetes.md's install commands (kubectl, helm, scrapez generate) run as written, and its
 *   prometheus-patch.yaml merge patch of an existing Prometheus.
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { helmBin, kubectlBin, repoRoot } from "../harness/binaries.js";
import { helmEnv, helmRunner } from "../harness/helm.js";
import { isEstablished, KubeApiServer, KubeError, type KubeObject } from "../harness/kube.js";
import { runCommand, tempDir } from "../harness/process.js";
import { cliPath } from "../harness/scrapez.js";

const chart = join(repoRoot, "deploy/helm/scrapez");
const ciDir = join(chart, "ci");
const examples = join(chart, "examples");
/** chart-testing's value sets: every ci/*-values.yaml. */
const VALUE_SETS = readdirSync(ciDir)
  .filter((f) => f.endsWith("-values.yaml"))
  .map((f) => f.replace(/-values\.yaml$/, ""))
  .sort();

const dir = tempDir("kube-test");
const helmHere = helmRunner(dir);

let kube: KubeApiServer;
/** The Operator CRD files installed (beforeAll). */
let crdFiles: string[] = [];

/** Helm against the test's API server. */
const helm = (args: string[]) => helmHere([...args, "--kubeconfig", kube.kubeconfig]);

const cli = (args: string[]) => runCommand(process.execPath, [cliPath, ...args]);

/** The Kubernetes objects of a YAML stream (comments, empty documents and non-object documents left out). */
function objectsOf(text: string): KubeObject[] {
  return YAML.parseAllDocuments(text)
    .map((d) => d.toJS() as unknown)
    .filter((o): o is KubeObject => !!o && typeof o === "object" && "kind" in o && "apiVersion" in o);
}

/** `helm template` of a value set, with the server's version (kubeVersion) and API versions (--validate). */
async function render(set: string, namespace: string, extra: string[] = []): Promise<KubeObject[]> {
  const r = await helm([
    "template",
    set,
    chart,
    "-f",
    join(ciDir, `${set}-values.yaml`),
    "--namespace",
    namespace,
    "--validate",
    ...extra,
  ]);
  expect(r.code, r.stderr).toBe(0);
  return objectsOf(r.stdout);
}

/** The error a write is refused with (fails the test when the server accepts it). */
async function refusal(write: Promise<unknown>): Promise<KubeError> {
  const err = await write.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "the API server accepted it").toBeInstanceOf(KubeError);
  return err as KubeError;
}

/** Each field of `defaults`: the value the chart rendered if it set one, else the server's default. */
function expectDefaulted(
  where: string,
  rendered: Record<string, unknown> | undefined,
  live: Record<string, unknown>,
  defaults: Record<string, unknown>,
): void {
  for (const [k, v] of Object.entries(defaults)) expect(live[k], `${where} ${k}`).toEqual(rendered?.[k] ?? v);
}

/**
 * What restricted Pod Security says of a pod template that uses the host's namespaces or hostPath volumes (as
 * node_exporter must to report on its node), and nothing else: no other control of the profile (non-root, no
 * privilege escalation, capabilities dropped, seccomp, ...) may be broken.
 */
function hostAccessWarnings(o: KubeObject): string[] {
  const pod = podTemplate(o);
  if (!pod) return [];
  const parts: string[] = [];
  const hostNs = ["hostNetwork", "hostPID", "hostIPC"].filter((k) => pod[k] === true);
  if (hostNs.length) parts.push(`host namespaces (${hostNs.map((k) => `${k}=true`).join(", ")})`);
  const hostPaths = ((pod.volumes ?? []) as { name: string; hostPath?: object }[])
    .filter((v) => v.hostPath)
    .map((v) => `"${v.name}"`);
  if (hostPaths.length) {
    const many = hostPaths.length > 1;
    parts.push(
      `restricted volume types (volume${many ? "s" : ""} ${hostPaths.join(", ")} use${many ? "" : "s"} restricted volume type "hostPath")`,
    );
  }
  return parts.length ? [`would violate PodSecurity "restricted:latest": ${parts.join(", ")}`] : [];
}

const podTemplate = (o: KubeObject) =>
  (o.spec as { template?: { spec: Record<string, unknown> } } | undefined)?.template?.spec;

beforeAll(async () => {
  kube = await KubeApiServer.start();
  // Figures, not assertions: how long a real API server takes to be ready here.
  console.log(
    `[kube] etcd ready in ${kube.startMs.etcd} ms, kube-apiserver /readyz ok ${kube.startMs.apiServer} ms later ` +
      `(${kube.startMs.etcd + kube.startMs.apiServer} ms in all)`,
  );
  const t0 = Date.now();
  crdFiles = await kube.installOperatorCrds();
  console.log(`[kube] Prometheus Operator CRDs installed and Established in ${Date.now() - t0} ms`);
}, 240_000);

afterAll(async () => {
  await kube?.close();
});

describe("the chart installed into a real API server", () => {
  it("the Prometheus Operator CRDs of the pinned module are installed and Established", async () => {
    const crds = await kube.list("apiextensions.k8s.io/v1", "CustomResourceDefinition");
    expect(crds.map((c) => c.metadata.name).sort()).toEqual(
      crdFiles.map((f) => f.replace(/^monitoring\.coreos\.com_(.*)\.yaml$/, "$1.monitoring.coreos.com")).sort(),
    );
    for (const c of crds) {
      expect(isEstablished(c), c.metadata.name).toBe(true);
      expect(c.metadata.annotations?.["operator.prometheus.io/version"]).toBe("0.94.1");
    }
    // The kinds the chart renders are served.
    expect((await kube.resource("monitoring.coreos.com/v1", "Prometheus")).name).toBe("prometheuses");
    expect((await kube.resource("monitoring.coreos.com/v1alpha1", "ScrapeConfig")).name).toBe("scrapeconfigs");
    expect((await kube.resource("monitoring.coreos.com/v1", "ServiceMonitor")).name).toBe("servicemonitors");
  });

  it("the value sets are those of ci/", () => {
    expect(VALUE_SETS.length).toBeGreaterThanOrEqual(4);
    for (const s of ["node-exporter-daemonset", "cluster-prometheus", "proxy-deployment", "operator"]) {
      expect(VALUE_SETS).toContain(s);
    }
  });

  describe.each(VALUE_SETS)("value set %s", (set) => {
    it("every rendered object passes the server's dry run with strict field validation; the only warnings are the restricted Pod Security Standard's, for node_exporter's host access", async () => {
      // Pod Security admission warns (it enforces on pods only, and no pod is made here) for every pod template
      // that breaks the restricted profile.
      const ns = `dry-${set}`;
      await kube.createNamespace(ns, {
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
      });
      const objects = await render(set, ns);
      expect(objects.length).toBeGreaterThan(0);
      for (const o of objects) {
        const where = `${o.kind} ${o.metadata.name}`;
        const { object, warnings } = await kube.apply(o, { namespace: ns, dryRun: true });
        expect(warnings, where).toEqual(hostAccessWarnings(o));
        // The server made an object of it (as it would store it)...
        expect(object.kind, where).toBe(o.kind);
        expect(object.metadata.uid, where).toBeTruthy();
      }
      // ...and stored none of them.
      for (const o of objects.filter((x) => x.kind === "ConfigMap")) {
        const stored = await kube.get(o.apiVersion, o.kind, o.metadata.name, ns).catch((e: KubeError) => e);
        expect((stored as KubeError).code, `${o.kind} ${o.metadata.name} was stored by a dry run`).toBe(404);
      }
    });

    it("helm install, then helm upgrade with a changed value: revision 2, every object read back from the server as rendered, with the server's defaults", async () => {
      const ns = `helm-${set}`;
      const values = join(ciDir, `${set}-values.yaml`);
      const install = await helm(["install", set, chart, "-f", values, "-n", ns, "--create-namespace"]);
      expect(install.code, install.stderr).toBe(0);
      expect(install.stdout).toMatch(/STATUS: deployed/);
      expect(install.stdout).toMatch(/REVISION: 1/);

      const upgrade = await helm([
        "upgrade",
        set,
        chart,
        "-f",
        values,
        "-n",
        ns,
        "--set-string",
        "commonLabels.scrapez-test/revision=two",
      ]);
      expect(upgrade.code, upgrade.stderr).toBe(0);
      expect(upgrade.stdout).toMatch(/REVISION: 2/);

      const status = await helm(["status", set, "-n", ns, "-o", "json"]);
      expect(status.code, status.stderr).toBe(0);
      const release = JSON.parse(status.stdout) as { version: number; info: { status: string }; manifest: string };
      expect(release.version).toBe(2);
      expect(release.info.status).toBe("deployed");
      // Helm keeps each revision as a Secret in the release's namespace.
      const revisions = await kube.list("v1", "Secret", { namespace: ns, labelSelector: `owner=helm,name=${set}` });
      expect(revisions.map((s) => [s.metadata.labels?.version, s.metadata.labels?.status]).sort()).toEqual([
        ["1", "superseded"],
        ["2", "deployed"],
      ]);

      const rendered = objectsOf(release.manifest);
      expect(rendered.length).toBeGreaterThan(0);
      for (const o of rendered) {
        const where = `${o.kind} ${o.metadata.name}`;
        const res = await kube.resource(o.apiVersion, o.kind);
        const live = await kube.get(o.apiVersion, o.kind, o.metadata.name, res.namespaced ? ns : undefined);
        // The labels as rendered (with the upgrade's), and Helm's ownership marks.
        expect(o.metadata.labels?.["scrapez-test/revision"], where).toBe("two");
        expect(live.metadata.labels, where).toEqual({ ...o.metadata.labels, "app.kubernetes.io/managed-by": "Helm" });
        expect(live.metadata.annotations, where).toMatchObject({
          "meta.helm.sh/release-name": set,
          "meta.helm.sh/release-namespace": ns,
        });
        if (res.namespaced) expect(live.metadata.namespace, where).toBe(ns);
        const spec = live.spec as Record<string, unknown>;
        const renderedSpec = o.spec as Record<string, unknown> | undefined;
        // What the chart leaves out, the server defaulted; what it sets, the server kept.
        if (o.kind === "Deployment") {
          expectDefaulted(where, renderedSpec, spec, {
            revisionHistoryLimit: 10,
            progressDeadlineSeconds: 600,
            strategy: { type: "RollingUpdate", rollingUpdate: { maxSurge: "25%", maxUnavailable: "25%" } },
          });
        }
        if (o.kind === "DaemonSet") {
          expectDefaulted(where, renderedSpec, spec, {
            revisionHistoryLimit: 10,
            updateStrategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } },
          });
        }
        const pod = podTemplate(live);
        if (pod) {
          const renderedPod = podTemplate(o)!;
          expectDefaulted(where, renderedPod, pod, {
            restartPolicy: "Always",
            dnsPolicy: "ClusterFirst",
            schedulerName: "default-scheduler",
            terminationGracePeriodSeconds: 30,
          });
          for (const key of ["initContainers", "containers"]) {
            const rendered = (renderedPod[key] ?? []) as Record<string, unknown>[];
            const containers = (pod[key] ?? []) as Record<string, unknown>[];
            expect(containers.map((c) => c.name)).toEqual(rendered.map((c) => c.name));
            containers.forEach((c, i) => {
              const cw = `${where} ${c.name as string}`;
              expectDefaulted(cw, rendered[i], c, {
                terminationMessagePath: "/dev/termination-log",
                terminationMessagePolicy: "File",
              });
              for (const p of ["readinessProbe", "livenessProbe", "startupProbe"]) {
                if (!c[p]) continue;
                expectDefaulted(
                  `${cw} ${p}`,
                  rendered[i]![p] as Record<string, unknown>,
                  c[p] as Record<string, unknown>,
                  {
                    successThreshold: 1,
                    failureThreshold: 3,
                    periodSeconds: 10,
                    timeoutSeconds: 1,
                  },
                );
              }
            });
          }
        }
        if (o.kind === "Service") {
          // A ClusterIP allocated from the server's service range (198.18.128.0/20).
          expect((spec as { clusterIP: string }).clusterIP, where).toMatch(/^198\.18\.(12[89]|13\d|14[0-3])\.\d+$/);
          expect(spec.sessionAffinity, where).toBe("None");
        }
      }
    });
  });

  it('refuses a pod template with image "" and a readinessProbe without a handler, both well-typed', async () => {
    const ns = "negative";
    await kube.createNamespace(ns);
    const r = await helmHere([
      "template",
      "neg",
      chart,
      "-f",
      join(examples, "proxy-deployment.yaml"),
      "--kube-version",
      "v1.37.2",
    ]);
    expect(r.code, r.stderr).toBe(0);
    const deployment = objectsOf(r.stdout).find((o) => o.kind === "Deployment")!;
    // The rendered Deployment is accepted as it is...
    await kube.apply(deployment, { namespace: ns, dryRun: true });
    // ...and refused with a string and an object of the right types but values no server takes.
    const broken = structuredClone(deployment);
    const c = (podTemplate(broken)!.containers as Record<string, unknown>[])[0]!;
    c.image = "";
    c.readinessProbe = { periodSeconds: 10, timeoutSeconds: 5 };
    const err = await refusal(kube.apply(broken, { namespace: ns, dryRun: true }));
    expect(err.code).toBe(422);
    expect(err.reason).toBe("Invalid");
    expect(err.message).toContain("spec.template.spec.containers[0].image: Required value");
    expect(err.message).toContain(
      "spec.template.spec.containers[0].readinessProbe: Required value: must specify a handler type",
    );
  });

  it("strict field validation refuses an unknown field, a field in the wrong case, a duplicate field and a wrong type; an unknown kind is not served", async () => {
    const ns = "strict";
    await kube.createNamespace(ns);
    const unknown = await refusal(
      kube.apply({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "a" }, datas: {} } as KubeObject, {
        namespace: ns,
        dryRun: true,
      }),
    );
    expect(unknown.message).toMatch(/\.datas: field not declared in schema/);
    const duplicate = await refusal(
      kube.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {x: '1'}\ndata: {y: '2'}\n", {
        namespace: ns,
        dryRun: true,
      }),
    );
    expect(duplicate.code).toBe(400);
    expect(duplicate.message).toMatch(/key "data" already set in map/);
    const wrongType = await refusal(
      kube.create(
        {
          apiVersion: "apps/v1",
          kind: "Deployment",
          metadata: { name: "c" },
          spec: { replicas: "two" },
        } as unknown as KubeObject,
        { namespace: ns, dryRun: true },
      ),
    );
    expect(wrongType.code).toBe(400);
    expect(wrongType.message).toContain(
      "cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32",
    );
    const scrapeConfig = await refusal(
      kube.apply(
        {
          apiVersion: "monitoring.coreos.com/v1alpha1",
          kind: "ScrapeConfig",
          metadata: { name: "d" },
          spec: { proxyURL: "http://127.0.0.1:9480" },
        } as KubeObject,
        { namespace: ns, dryRun: true },
      ),
    );
    expect(scrapeConfig.message).toMatch(/\.spec\.proxyURL: field not declared in schema/);
    const wrongCase = await refusal(
      kube.create(
        {
          apiVersion: "v1",
          kind: "Pod",
          metadata: { name: "e" },
          spec: { containers: [{ name: "c", Image: "scrapez:0.1.0" }] },
        } as KubeObject,
        { namespace: ns, dryRun: true },
      ),
    );
    expect(wrongCase.code).toBe(400);
    expect(wrongCase.message).toContain('strict decoding error: unknown field "spec.containers[0].Image"');
    await expect(kube.resource("example.com/v1", "Widget")).rejects.toThrow(/serves no kind Widget/);
  });

  it("refuses ScrapeConfigs breaking the CRD schema: its pattern and its CEL rule", async () => {
    const ns = "crd-schema";
    await kube.createNamespace(ns);
    const base = {
      apiVersion: "monitoring.coreos.com/v1alpha1",
      kind: "ScrapeConfig",
      metadata: { name: "bad" },
    };
    const pattern = await refusal(
      kube.apply({ ...base, spec: { scrapeInterval: "5 minutes" } } as KubeObject, { namespace: ns, dryRun: true }),
    );
    expect(pattern.code).toBe(422);
    expect(pattern.message).toMatch(
      /spec\.scrapeInterval: Invalid value: "5 minutes": spec\.scrapeInterval in body should match/,
    );
    const cel = await refusal(
      kube.apply(
        {
          ...base,
          spec: {
            basicAuth: { username: { name: "s", key: "u" }, password: { name: "s", key: "p" } },
            authorization: { credentials: { name: "s", key: "t" } },
          },
        } as KubeObject,
        { namespace: ns, dryRun: true },
      ),
    );
    expect(cel.code).toBe(422);
    expect(cel.message).toMatch(/at most one of basicAuth, authorization, or oauth2 can be configured/);
  });

  it("stores the ScrapeConfigs scrapez generate central and cluster --format operator write from examples/federation.yaml", async () => {
    const ns = "generated";
    await kube.createNamespace(ns);
    const fed = join(examples, "federation.yaml");
    const central = await cli(["generate", "central", "--config", fed, "--format", "operator"]);
    expect(central.code, central.stderr).toBe(0);
    const clusters = (YAML.parse(readFileSync(fed, "utf8")) as { clusters: { name: string }[] }).clusters.map(
      (c) => c.name,
    );
    expect(clusters.length).toBeGreaterThan(0);
    const generated = objectsOf(central.stdout);
    for (const c of clusters) {
      const cluster = await cli(["generate", "cluster", "--cluster", c, "--config", fed, "--format", "operator"]);
      expect(cluster.code, cluster.stderr).toBe(0);
      generated.push(...objectsOf(cluster.stdout));
    }
    expect(generated.length).toBe(2 * clusters.length);
    for (const o of generated) {
      expect(o.kind).toBe("ScrapeConfig");
      const { object, warnings } = await kube.apply(o, { namespace: ns });
      expect(warnings, o.metadata.name).toEqual([]);
      // Stored as written, plus the CRD's defaults: a relabeling's action is `replace` unless given.
      const live = await kube.get(o.apiVersion, o.kind, o.metadata.name, ns);
      const relabelings = (o.spec as { relabelings?: object[] }).relabelings;
      expect(live.spec, o.metadata.name).toEqual({
        ...(o.spec as object),
        ...(relabelings ? { relabelings: relabelings.map((r) => ({ action: "replace", ...r })) } : {}),
      });
      expect(object.metadata.uid).toBe(live.metadata.uid);
    }
    const labelled = await kube.list("monitoring.coreos.com/v1alpha1", "ScrapeConfig", {
      namespace: ns,
      labelSelector: "app.kubernetes.io/managed-by=scrapez",
    });
    expect(labelled.length).toBe(generated.length);
  });

  it("docs/kubernetes.md's install commands run as written against the server, and its merge patch of an existing Prometheus", async () => {
    const work = join(dir, "docs");
    const bin = join(work, "bin");
    mkdirSync(bin, { recursive: true });
    // The commands' own names on PATH: kubectl and helm built by setup, scrapez from this checkout.
    symlinkSync(kubectlBin(), join(bin, "kubectl"));
    symlinkSync(helmBin(), join(bin, "helm"));
    writeFileSync(join(bin, "scrapez"), `#!/bin/sh\nexec "${process.execPath}" "${cliPath}" "$@"\n`, { mode: 0o755 });
    const env = { ...helmEnv(dir), PATH: `${bin}:/usr/bin:/bin`, KUBECONFIG: kube.kubeconfig };
    const sh = (script: string) => runCommand("bash", ["-euo", "pipefail", "-c", script], { cwd: work, env });

    const doc = readFileSync(join(repoRoot, "docs/kubernetes.md"), "utf8");
    let install = /## Install each shape\n+```sh\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(install, "docs/kubernetes.md has an 'Install each shape' sh block").toBeTruthy();
    // The nodes, as registered kubelets would be (`kubectl get nodes` lists them), and the docs' own line that
    // names them (an earlier block) when the install block uses it.
    const nodes = ["node-1", "node-2"];
    for (const n of nodes) await kube.create({ apiVersion: "v1", kind: "Node", metadata: { name: n } });
    if (install!.includes("$NODES")) {
      const nodesLine = /^\s*(NODES=\$\(kubectl get nodes.*)$/m.exec(doc)?.[1];
      expect(nodesLine, "docs/kubernetes.md sets NODES with kubectl get nodes").toBeTruthy();
      install = `${nodesLine!}\n${install!}`;
    }
    // Relative paths as in the docs (run from a checkout), and the files the commands read: enrolled identities
    // (placeholders: the server stores Secrets without reading them) and federation.yaml.
    symlinkSync(join(repoRoot, "deploy"), join(work, "deploy"));
    copyFileSync(join(examples, "federation.yaml"), join(work, "federation.yaml"));
    const identityFiles = [...install!.matchAll(/=([\w.-]+\.json)\b/g)].map((m) => m[1]!);
    for (const f of [...identityFiles, ...nodes.map((n) => `${n}.json`)]) {
      writeFileSync(join(work, f), JSON.stringify({ ztAPI: "https://ctrl.example:1280", id: {} }));
    }
    // Two alternatives for the central side: the Deployment, "or" the Operator shape (the same release name).
    const [first, operatorShape] = install!.split(/^# or central.*\n/m) as [string, string];
    expect(operatorShape).toMatch(/helm install scrapez-central/);
    // The block creates the namespace itself (as written).
    expect(first).toMatch(/^kubectl create namespace monitoring\b/m);
    const r1 = await sh(first);
    expect(r1.code, `${r1.stdout}\n${r1.stderr}`).toBe(0);
    const secrets = (await kube.list("v1", "Secret", { namespace: "monitoring" })).map((s) => s.metadata.name);
    for (const s of [
      "scrapez-node-identities",
      "scrapez-cluster-a-bind",
      "scrapez-prometheus-cluster-a",
      "scrapez-prometheus-central",
      "scrapez-proxy-token",
    ]) {
      expect(secrets).toContain(s);
    }
    const nodeIds = await kube.get("v1", "Secret", "scrapez-node-identities", "monitoring");
    expect(Object.keys((nodeIds.data ?? {}) as object).sort()).toEqual(nodes.map((n) => `${n}.json`));
    const token = await kube.get("v1", "Secret", "scrapez-proxy-token", "monitoring");
    expect(Buffer.from((token.data as { token: string }).token, "base64").toString()).toMatch(/^[0-9a-f]{64}$/);
    const releases = await helm(["list", "-n", "monitoring", "-o", "json"]);
    expect((JSON.parse(releases.stdout) as { name: string; status: string }[]).map((x) => [x.name, x.status])).toEqual([
      ["scrapez-central", "deployed"],
      ["scrapez-cluster-a", "deployed"],
      ["scrapez-nodes", "deployed"],
    ]);

    // The Operator shape instead of the Deployment, with an existing Prometheus `k8s` patched as the docs say.
    expect((await helm(["uninstall", "scrapez-central", "-n", "monitoring"])).code).toBe(0);
    const r2 = await sh(operatorShape);
    expect(r2.code, `${r2.stdout}\n${r2.stderr}`).toBe(0);
    const scrapeConfigs = await kube.list("monitoring.coreos.com/v1alpha1", "ScrapeConfig", {
      namespace: "monitoring",
    });
    expect(scrapeConfigs.map((s) => s.metadata.name)).toContain("federate-cluster-a");
    await kube.apply(
      {
        apiVersion: "monitoring.coreos.com/v1",
        kind: "Prometheus",
        metadata: { name: "k8s", namespace: "monitoring" },
        spec: { replicas: 1, serviceAccountName: "prometheus-k8s" },
      },
      { fieldManager: "kube-prometheus" },
    );
    const patchBlock = /The Operator shape with an existing `Prometheus`[\s\S]*?```sh\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(patchBlock).toMatch(/kubectl -n monitoring patch prometheus k8s --type merge --patch-file patch.yaml/);
    const r3 = await sh(patchBlock!);
    expect(r3.code, `${r3.stdout}\n${r3.stderr}`).toBe(0);
    expect(r3.stdout).toMatch(/prometheus.monitoring.coreos.com\/k8s patched/);
    const patched = await kube.get("monitoring.coreos.com/v1", "Prometheus", "k8s", "monitoring");
    const patch = YAML.parse(readFileSync(join(work, "patch.yaml"), "utf8")) as {
      spec: { containers: unknown[]; volumes: unknown[] };
    };
    const spec = patched.spec as { containers: { name: string }[]; volumes: unknown[]; serviceAccountName: string };
    expect(spec.containers).toEqual(patch.spec.containers);
    expect(spec.volumes).toEqual(patch.spec.volumes);
    expect(spec.containers.map((c) => c.name)).toEqual(["scrapez-proxy"]);
    // The user's own fields stay.
    expect(spec.serviceAccountName).toBe("prometheus-k8s");
    // And a Prometheus written with the patch as its spec passes the strict dry run too (the patch is complete).
    const fromPatch = await kube.apply(
      { apiVersion: "monitoring.coreos.com/v1", kind: "Prometheus", metadata: { name: "existing" }, ...patch },
      { namespace: "monitoring", dryRun: true },
    );
    expect(fromPatch.warnings).toEqual([]);
  });
});
