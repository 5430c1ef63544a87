/**
 * What a running scrapez says about itself: its version, and the process metrics every Prometheus client exposes.
 *
 * Each of `scrapez bind` and `scrapez proxy` has one private prom-client Registry (nothing goes to prom-client's
 * global one, so a library user's registry never sees ours). Into it go `scrapez_build_info` and prom-client's
 * default metrics, **without a prefix**: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
 * `process_start_time_seconds`, `process_open_fds`, `nodejs_eventloop_lag_seconds`, `nodejs_heap_size_used_bytes`, ...
 * are the names every Prometheus client library and the usual dashboards and alerts use; a `scrapez_` prefix would
 * only hide them from those. Which process they describe is the scrape's `job`/`instance` (docs/configuration.md).
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { collectDefaultMetrics, Gauge, type Registry } from "prom-client";

const here = dirname(fileURLToPath(import.meta.url));

let cachedVersion: string | undefined;

/** scrapez's version from its package.json (dist/src/cli/ and src/cli/ layouts), or "unknown". */
export function version(): string {
  if (cachedVersion !== undefined) return cachedVersion;
  cachedVersion = "unknown";
  for (const p of [join(here, "../../../package.json"), join(here, "../../package.json")]) {
    try {
      const pkg = JSON.parse(readFileSync(p, "utf8")) as { name?: string; version?: string };
      if (pkg.name === "scrapez" && typeof pkg.version === "string") {
        cachedVersion = pkg.version;
        break;
      }
    } catch {
      /* try the next layout */
    }
  }
  return cachedVersion;
}

/** The labels of scrapez_build_info. */
export function buildInfoLabels(command: string): Record<string, string> {
  return { version: version(), node_version: process.version, command };
}

/**
 * Adds `scrapez_build_info{version,node_version,command} 1` and prom-client's default process metrics (no prefix)
 * to `registry`. Call once per registry, from the command that owns the process.
 */
export function registerProcessMetrics(registry: Registry, command: "bind" | "proxy"): void {
  const info = new Gauge({
    name: "scrapez_build_info",
    help: "Always 1; the labels say which scrapez (version), on which Node.js (node_version), runs which command.",
    labelNames: ["version", "node_version", "command"] as const,
    registers: [registry],
  });
  info.set(buildInfoLabels(command), 1);
  collectDefaultMetrics({ register: registry });
}
