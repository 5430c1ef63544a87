/**
 * `npm run bench -- generate`: `scrapez generate central` for 1,000 clusters (issue 11's goal: under 1 s), timed as
 * the function (median of 5) and as the real CLI process (parse federation.yaml, generate, write), with 4 shards and
 * as Prometheus Operator resources. The reference is the same CLI generating for 1 cluster, so the ratio shows what
 * the 999 more clusters cost over the process start itself.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import YAML from "yaml";
import { parseFederationConfig } from "../src/generate/config.js";
import { generateCentral, generateCentralOperator } from "../src/generate/generate.js";
import { cliPath } from "../test/harness/scrapez.js";

function federation(n: number, shards: number): unknown {
  return {
    proxy: {
      url: "http://127.0.0.1:9480",
      auth: { bearerTokenFile: "/etc/token", bearerTokenSecret: { name: "s", key: "t" } },
    },
    match: ['{job=~".+"}'],
    scrapeInterval: "30s",
    scrapeTimeout: "25s",
    shards,
    clusterLabel: "cluster",
    clusters: Array.from({ length: n }, (_, i) => ({
      name: `cluster-${i}`,
      service: `prometheus-cluster-${i}`,
      externalLabels: { region: `r${i % 7}` },
    })),
  };
}

function timeMs(fn: () => void, runs = 5): number {
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    t.push(performance.now() - t0);
  }
  return t.sort((a, b) => a - b)[Math.floor(runs / 2)]!;
}

export function generateBench(): void {
  const dir = mkdtempSync(join(tmpdir(), "scrapez-bench-gen-"));
  try {
    const rows: string[][] = [["case", "time", "reference (1 cluster)", "goal"]];
    for (const [shards, format] of [
      [1, "plain"],
      [4, "plain"],
      [1, "operator"],
    ] as const) {
      const cfg = parseFederationConfig(federation(1000, shards));
      const fn = () => (format === "operator" ? generateCentralOperator(cfg, "bench") : generateCentral(cfg, "bench"));
      rows.push([
        `function, 1,000 clusters, ${shards} shard(s), ${format}`,
        `${timeMs(fn).toFixed(1)} ms`,
        "",
        "< 1 s",
      ]);
      const file = (n: number) => {
        const f = join(dir, `federation-${n}-${shards}.yaml`);
        writeFileSync(f, YAML.stringify(federation(n, shards)));
        return f;
      };
      const cli = (f: string) => () =>
        execFileSync(
          process.execPath,
          [
            cliPath,
            "generate",
            "central",
            "--config",
            f,
            "-o",
            join(dir, "prometheus.yml"),
            ...(format === "operator" ? ["--format", "operator"] : []),
          ],
          { stdio: "pipe" },
        );
      const big = timeMs(cli(file(1000)), 3);
      const one = timeMs(cli(file(1)), 3);
      rows.push([
        `scrapez generate central (CLI), 1,000 clusters, ${shards} shard(s), ${format}`,
        `${big.toFixed(0)} ms`,
        `${one.toFixed(0)} ms (ratio ${(big / one).toFixed(2)})`,
        "< 1 s",
      ]);
    }
    const w = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    process.stdout.write(`${rows.map((r) => r.map((x, i) => x.padEnd(w[i]!)).join("  ")).join("\n")}\n`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
