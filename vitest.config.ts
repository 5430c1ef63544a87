import { defineConfig } from "vitest/config";

// Fast unit tests (pure code), and integration tests (real ziti, Prometheus, node_exporter) on both OpenZiti lines:
// `integration` runs every integration file on v2.0.3 (the current LTS line); `compat-1.6` runs the compatibility
// subset on v1.6.3 (test/harness/binaries.ts picks the line from SCRAPEZ_ZITI_LINE; $SCRAPEZ_ZITI overrides both).
// Integration files each start their own overlay. Four run at a time on this 2-core machine: the suite mostly waits
// (healthcheck intervals, timers, real network round trips; load average 3-4 with three at a time, 5-6 with four),
// and each file spends 5-15 s starting its process and imports, when its slot is idle. Rehearsed from a fresh clone:
// Vitest 713 s with three, 604 s with four, 1700/1700 both.

/**
 * The v1.6.3 subset: SDK dial/bind/E2E with OpenZiti's Go peers (sdk), scrapez bind (bind), scrapez proxy with
 * Prometheus 2 and 3 (proxy), OIDC and legacy auth (oidc), HA failover (ha), caller verification (caller). The router
 * fault is the edge-router restart in bind.test.ts and sdk.test.ts (scrapes and binds recover without a restart).
 */
const COMPAT_FILES = ["sdk", "bind", "proxy", "oidc", "ha", "caller"].map((f) => `test/integration/${f}.test.ts`);

const integration = { testTimeout: 120_000, hookTimeout: 180_000, pool: "forks" as const };

export default defineConfig({
  test: {
    poolOptions: { forks: { maxForks: 4, minForks: 1 } },
    projects: [
      {
        test: {
          name: "unit",
          include: ["test/unit/**/*.test.ts"],
          testTimeout: 30_000,
        },
      },
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts"],
          // The image, compose and Helm tests run the scrapez image: its build starts at once (docker-prebuild.ts).
          globalSetup: ["test/harness/docker-prebuild.ts"],
          ...integration,
        },
      },
      {
        test: {
          name: "compat-1.6",
          include: COMPAT_FILES,
          env: { SCRAPEZ_ZITI_LINE: "1.6" },
          ...integration,
        },
      },
    ],
  },
});
