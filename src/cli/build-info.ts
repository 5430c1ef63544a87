/**
 * What a running scrapez says about itself: its version, and the process metrics every Prometheus client exposes.
 *
 * Each of `scrapez bind` and `scrapez proxy` has one private prom-client Registry (nothing goes to prom-client's
 * global one, so a library user's registry never sees ours). Into it go `scrapez_build_info` and prom-client's
 * default metrics, **without a prefix**: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
 * `process_start_time_seconds`, `process_open_fds`, `nodejs_eventloop_lag_seconds`, `nodejs_heap_size_used_bytes`, ...
 * are the names every Prometheus client library and the usual dashboards and alerts use; a `scrapez_` prefix would
 * only hide them from those. Which process they describe is the scrape's `job`/`instance` (docs/configuration.md).
 *
 * `scrapez_build_info` carries the labels Prometheus's own `prometheus_build_info` has, where they apply: version,
 * revision, branch, and nodeversion (for goversion). Revision and branch are build-time facts, taken from the first
 * of: SCRAPEZ_BUILD_REVISION / SCRAPEZ_BUILD_BRANCH (the image sets them from its build arguments), a
 * `build-info.json` beside package.json (`{"revision": ..., "branch": ...}`, written when the package is packed:
 * scripts/build-info.mjs), the git checkout it runs from (read from .git, no git process); else "unknown".
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { collectDefaultMetrics, Gauge, type Registry } from "prom-client";

const here = dirname(fileURLToPath(import.meta.url));

let cachedPackage: { root: string; version: string } | null | undefined;

/** The package's root directory and version (dist/src/cli/ and src/cli/ layouts), read once; null when not found. */
function packageInfo(): { root: string; version: string } | null {
  if (cachedPackage !== undefined) return cachedPackage;
  cachedPackage = null;
  for (const d of [join(here, "../../.."), join(here, "../..")]) {
    try {
      const pkg = JSON.parse(readFileSync(join(d, "package.json"), "utf8")) as { name?: string; version?: string };
      if (pkg.name === "scrapez") {
        cachedPackage = { root: d, version: typeof pkg.version === "string" ? pkg.version : "unknown" };
        break;
      }
    } catch {
      /* try the next layout */
    }
  }
  return cachedPackage;
}

/** scrapez's version from its package.json, or "unknown". */
export function version(): string {
  return packageInfo()?.version ?? "unknown";
}

/** Revision and branch from a git directory, read as files: HEAD, then the ref it names (loose or packed). */
export function gitInfo(gitDir: string): { revision?: string; branch?: string } {
  try {
    // A worktree or submodule has a .git file: `gitdir: <path>`.
    if (statSync(gitDir).isFile()) {
      const m = /^gitdir:\s*(.+)$/m.exec(readFileSync(gitDir, "utf8"));
      if (!m) return {};
      gitDir = resolve(dirname(gitDir), m[1]!.trim());
    }
    const head = readFileSync(join(gitDir, "HEAD"), "utf8").trim();
    const ref = /^ref:\s*(\S+)$/.exec(head)?.[1];
    if (!ref) return /^[0-9a-f]{40,64}$/.test(head) ? { revision: head } : {};
    const branch = ref.replace(/^refs\/heads\//, "");
    // A linked worktree keeps its refs in the common directory.
    const common = existsSync(join(gitDir, "commondir"))
      ? resolve(gitDir, readFileSync(join(gitDir, "commondir"), "utf8").trim())
      : gitDir;
    for (const d of [gitDir, common]) {
      try {
        const rev = readFileSync(join(d, ref), "utf8").trim();
        if (/^[0-9a-f]{40,64}$/.test(rev)) return { revision: rev, branch };
      } catch {
        /* not loose here */
      }
      try {
        const packed = readFileSync(join(d, "packed-refs"), "utf8");
        const line = packed.split("\n").find((l) => l.endsWith(` ${ref}`));
        if (line) return { revision: line.split(" ")[0]!, branch };
      } catch {
        /* no packed refs */
      }
    }
    return { branch };
  } catch {
    return {};
  }
}

let cachedBuild: { revision: string; branch: string } | undefined;

/** The revision and branch scrapez was built from ("unknown" when nothing says). */
export function buildRevision(env: NodeJS.ProcessEnv = process.env): { revision: string; branch: string } {
  const fromEnv = { revision: env.SCRAPEZ_BUILD_REVISION || undefined, branch: env.SCRAPEZ_BUILD_BRANCH || undefined };
  if (!cachedBuild) {
    let found: { revision?: string; branch?: string } = {};
    const root = packageInfo()?.root;
    if (root) {
      try {
        const f = JSON.parse(readFileSync(join(root, "build-info.json"), "utf8")) as Record<string, unknown>;
        found = {
          ...(typeof f.revision === "string" && f.revision ? { revision: f.revision } : {}),
          ...(typeof f.branch === "string" && f.branch ? { branch: f.branch } : {}),
        };
      } catch {
        if (existsSync(join(root, ".git"))) found = gitInfo(join(root, ".git"));
      }
    }
    cachedBuild = { revision: found.revision ?? "unknown", branch: found.branch ?? "unknown" };
  }
  return { revision: fromEnv.revision ?? cachedBuild.revision, branch: fromEnv.branch ?? cachedBuild.branch };
}

/** The labels of scrapez_build_info. */
export function buildInfoLabels(command: string): Record<string, string> {
  return { version: version(), ...buildRevision(), nodeversion: process.version, command };
}

/**
 * Adds `scrapez_build_info{version,revision,branch,nodeversion,command} 1` and prom-client's default process metrics (no prefix)
 * to `registry`. Call once per registry, from the command that owns the process.
 */
export function registerProcessMetrics(registry: Registry, command: "bind" | "proxy"): void {
  const info = new Gauge({
    name: "scrapez_build_info",
    help:
      "Always 1; the labels say which scrapez (version, and the revision and branch it was built from), on which " +
      "Node.js (nodeversion), runs which command.",
    labelNames: ["version", "revision", "branch", "nodeversion", "command"] as const,
    registers: [registry],
  });
  info.set(buildInfoLabels(command), 1);
  collectDefaultMetrics({ register: registry });
}
