import { defineConfig } from "vitest/config";

// Two projects: fast unit tests (pure code) and integration tests (real ziti, Prometheus, node_exporter).
// Integration files each start their own overlay; two at a time fit this 2-core machine.
export default defineConfig({
  test: {
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
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
          testTimeout: 120_000,
          hookTimeout: 180_000,
          pool: "forks",
        },
      },
    ],
  },
});
