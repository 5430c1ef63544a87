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

/** The ziti CLI: $SCRAPEZ_ZITI if set, else <repo>/.cache/ziti (made by `npm run setup`), else `ziti` on PATH. */
export function zitiBin(): string {
  const env = process.env.SCRAPEZ_ZITI;
  if (env) {
    if (!existsSync(env)) throw new Error(`SCRAPEZ_ZITI=${env} does not exist: run \`npm run setup\` or fix it`);
    return env;
  }
  for (const c of [join(repoRoot, ".cache", "ziti"), onPath("ziti")]) if (c && existsSync(c)) return c;
  throw new Error(
    "the ziti CLI was not found (no $SCRAPEZ_ZITI, no .cache/ziti, none on PATH): run `npm run setup`, " +
      "which builds the pinned version",
  );
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

/** A tool scripts/setup.sh builds and links as <repo>/.cache/<name> (helm, k8scheck). */
function cachedBin(name: string, what: string): string {
  const p = join(repoRoot, ".cache", name);
  if (!existsSync(p)) throw new Error(`${p} was not found: run \`npm run setup\`, which builds ${what}`);
  return p;
}

/** Helm, pinned in tools/helm/go.mod. */
export const helmBin = () => cachedBin("helm", "the pinned Helm (tools/helm)");
/** The strict Kubernetes object checker of tools/k8scheck. */
export const k8scheckBin = () => cachedBin("k8scheck", "tools/k8scheck");
