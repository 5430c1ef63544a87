/** Where the real binaries are. `ziti` comes from scripts/setup.sh (npm run setup). */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";

export const repoRoot = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, "package.json"))) {
    const up = dirname(d);
    if (up === d) throw new Error("cannot find the repository root");
    d = up;
  }
  return d;
})();

function onPath(name: string): string | undefined {
  try {
    return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The OpenZiti lines the tests run on: "2" (v2.0.3, the current LTS line and the default) and "1.6" (v1.6.3, the
 * compatibility line). $SCRAPEZ_ZITI_LINE picks one (vitest.config.ts's compat-1.6 project sets it to 1.6).
 */
export type ZitiLineName = "2" | "1.6";
const LINE_BINARIES: Record<ZitiLineName, string> = { "2": "ziti-v2", "1.6": "ziti" };

function requestedLine(): ZitiLineName {
  const v = process.env.SCRAPEZ_ZITI_LINE ?? "2";
  if (v === "2" || v === "1.6") return v;
  throw new Error(`SCRAPEZ_ZITI_LINE=${v}: use 2 (v2.0.3, the default) or 1.6 (v1.6.3)`);
}

/**
 * The ziti CLI: $SCRAPEZ_ZITI if set, else the line's build from `npm run setup` (<repo>/.cache/ziti-v2 for line 2,
 * <repo>/.cache/ziti for 1.6), else `ziti` on PATH.
 */
export function zitiBin(): string {
  const env = process.env.SCRAPEZ_ZITI;
  if (env) {
    if (!existsSync(env)) throw new Error(`SCRAPEZ_ZITI=${env} does not exist: run \`npm run setup\` or fix it`);
    return env;
  }
  const cached = join(repoRoot, ".cache", LINE_BINARIES[requestedLine()]);
  for (const c of [cached, onPath("ziti")]) if (c && existsSync(c)) return c;
  throw new Error(
    `the ziti CLI was not found (no $SCRAPEZ_ZITI, no ${cached}, none on PATH): run \`npm run setup\`, ` +
      "which builds the pinned versions",
  );
}

/** The build of one line from `npm run setup`, whatever the environment picks (a test that needs both lines). */
export function zitiBinOf(line: ZitiLineName): string {
  const p = join(repoRoot, ".cache", LINE_BINARIES[line]);
  if (!existsSync(p)) throw new Error(`${p} was not found: run \`npm run setup\`, which builds ziti line ${line}`);
  return p;
}

let version: string | undefined;
/** What `ziti version` of zitiBin() prints, e.g. "v2.0.3" (read once per process). */
export function zitiVersion(): string {
  version ??= execFileSync(zitiBin(), ["version"], { encoding: "utf8" }).trim().split("\n").pop()!.trim();
  return version;
}

/**
 * The major line of the ziti under test, from its own `ziti version` (so $SCRAPEZ_ZITI pointing at any build is
 * judged by what it is): "2" for v2.x, "1" for v1.x. Tests whose expectation differs per line branch on this.
 */
export function zitiLine(): "1" | "2" {
  const m = /^v?(\d+)\./.exec(zitiVersion());
  if (m?.[1] === "2") return "2";
  if (m?.[1] === "1") return "1";
  throw new Error(`${zitiBin()} says it is version ${zitiVersion()}: the tests know lines 1.x and 2.x`);
}

function debianBin(name: string, pkg: string): string {
  const p = onPath(name);
  if (!p) throw new Error(`${name} was not found: run \`npm run setup\` (installs the Debian package ${pkg})`);
  return p;
}

export const prometheusBin = () => debianBin("prometheus", "prometheus");
export const promtoolBin = () => debianBin("promtool", "prometheus");
export const nodeExporterBin = () => debianBin("prometheus-node-exporter", "prometheus-node-exporter");

/**
 * Prometheus 3 (the version most users run), built from its Go module by scripts/setup.sh (pinned in
 * tools/prometheus3/go.mod): $SCRAPEZ_PROMETHEUS3 if set, else <repo>/.cache/prometheus3.
 */
export function prometheus3Bin(): string {
  const env = process.env.SCRAPEZ_PROMETHEUS3;
  if (env) {
    if (!existsSync(env)) throw new Error(`SCRAPEZ_PROMETHEUS3=${env} does not exist: run \`npm run setup\` or fix it`);
    return env;
  }
  const c = join(repoRoot, ".cache", "prometheus3");
  if (existsSync(c)) return c;
  throw new Error(
    "Prometheus 3 was not found (no $SCRAPEZ_PROMETHEUS3, no .cache/prometheus3): run `npm run setup`, which builds " +
      "the pinned version",
  );
}

/** A tool scripts/setup.sh builds and links as <repo>/.cache/<name> (helm, kube-apiserver, ...). */
function cachedBin(name: string, what: string): string {
  const p = join(repoRoot, ".cache", name);
  if (!existsSync(p)) throw new Error(`${p} was not found: run \`npm run setup\`, which builds ${what}`);
  return p;
}

/** Helm, pinned in tools/helm/go.mod. */
export const helmBin = () => cachedBin("helm", "the pinned Helm (tools/helm)");
export const registryBin = () => cachedBin("registry", "the OCI registry (tools/registry)");
/** The conformance test's exporter (client_golang's promhttp; tools/format-exporter). */
export const formatExporterBin = () => cachedBin("format-exporter", "the format exporter (tools/format-exporter)");
/** kube-state-metrics, pinned in tools/kube-state-metrics/go.mod (the Helm test's kube-state-metrics pod). */
export const kubeStateMetricsBin = () =>
  cachedBin("kube-state-metrics", "kube-state-metrics (tools/kube-state-metrics)");

/**
 * kube-apiserver, built by scripts/setup.sh from k8s.io/kubernetes pinned in tools/kube-apiserver/go.mod (v1.37.2),
 * for the chart tests that a real API server judges (test/harness/kube.ts).
 */
export const kubeApiServerBin = () => cachedBin("kube-apiserver", "kube-apiserver (tools/kube-apiserver)");
/** etcd, the API server's store: Debian's etcd-server. */
export const etcdBin = () => debianBin("etcd", "etcd-server");
/** kubectl, built by scripts/setup.sh from the same module graph as kube-apiserver. */
export const kubectlBin = () => cachedBin("kubectl", "kubectl (tools/kube-apiserver)");
/**
 * The Prometheus Operator's CRDs (example/prometheus-operator-crd/*.yaml of the operator's Go module at the version
 * and hash scripts/setup.sh pins): a directory linked as .cache/operator-crds.
 */
export const operatorCrdsDir = () => cachedBin("operator-crds", "the Prometheus Operator CRDs (from its Go module)");
