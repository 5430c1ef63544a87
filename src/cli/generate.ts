/** `scrapez generate central|cluster`: federation configs from config/federation.yaml. */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { basename, dirname, extname, join } from "node:path";
import { parseArgs } from "node:util";
import { loadFederationConfig } from "../generate/config.js";
import { generateCentral, generateCentralOperator, generateCluster } from "../generate/generate.js";
import { UsageError, type Command } from "./registry.js";

const HELP = `Usage:
  scrapez generate central --config federation.yaml [-o prometheus.yml] [--format prometheus|operator]
  scrapez generate cluster --cluster <name> --config federation.yaml [-o <dir>] [--format prometheus|operator]

central: the central Prometheus's config, one federation job per cluster through scrapez proxy. With shards: N,
         N configs (-o x.yml writes x-shard-0.yml ... x-shard-<N-1>.yml).
cluster: the cluster Prometheus's scrape config for its exporters (http_sd + proxy_url through the cluster's
         scrapez proxy) and the scrapez bind config exposing only its /federate (-o <dir> writes
         <dir>/prometheus.yml (or scrapeconfig.yaml) and <dir>/bind.yaml).
Output is deterministic. Nothing is written unless everything is valid; missing directories of -o are created.
Exit status: 0 written, 1 invalid federation.yaml (the message names the field), 2 usage error.
See docs/federation.md.
`;

/**
 * Writes every file only after all were rendered, each atomically (temp file + rename). Missing directories are
 * created (`-o out/cluster-a` on a fresh checkout).
 */
function writeAll(files: [string, string][]): void {
  for (const d of new Set(files.map(([path]) => dirname(path)))) mkdirSync(d, { recursive: true });
  const tmps = files.map(([path, text]) => {
    const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
    writeFileSync(tmp, text);
    return [tmp, path] as const;
  });
  for (const [tmp, path] of tmps) renameSync(tmp, path);
}

export const command: Command = {
  async run(argv) {
    const [what, ...rest] = argv;
    const { values } = parseArgs({
      args: rest,
      options: {
        config: { type: "string", short: "c" },
        out: { type: "string", short: "o" },
        cluster: { type: "string" },
        format: { type: "string", default: "prometheus" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
    if (values.help || what === "--help" || what === "-h") {
      process.stdout.write(HELP);
      return 0;
    }
    if (what === "cluster" && !values.cluster) throw new UsageError("generate cluster needs --cluster <name>");
    if ((what !== "central" && what !== "cluster") || !values.config) {
      process.stderr.write(`scrapez generate: give central or cluster, and --config\n\n${HELP}`);
      return 2;
    }
    if (values.format !== "prometheus" && values.format !== "operator") {
      process.stderr.write(`scrapez generate: --format must be prometheus or operator, not "${values.format}"\n`);
      return 2;
    }
    const source = basename(values.config);
    try {
      const cfg = loadFederationConfig(values.config);
      const files: [string, string][] = [];
      if (what === "central") {
        if (values.format === "operator") {
          const text = generateCentralOperator(cfg, source);
          if (values.out) files.push([values.out, text]);
          else process.stdout.write(text);
        } else {
          const texts = generateCentral(cfg, source);
          if (values.out) {
            const ext = extname(values.out);
            const base = values.out.slice(0, values.out.length - ext.length);
            texts.forEach((t, i) => files.push([texts.length > 1 ? `${base}-shard-${i}${ext}` : values.out!, t]));
          } else process.stdout.write(texts.join("---\n"));
        }
      } else {
        const out = generateCluster(cfg, values.cluster!, source, values.format);
        if (values.out) {
          files.push([
            join(values.out, values.format === "operator" ? "scrapeconfig.yaml" : "prometheus.yml"),
            out.prometheus,
          ]);
          files.push([join(values.out, "bind.yaml"), out.bind]);
        } else process.stdout.write(`${out.prometheus}---\n${out.bind}`);
      }
      writeAll(files);
      for (const [p] of files) process.stderr.write(`wrote ${p}\n`);
      return 0;
    } catch (err) {
      process.stderr.write(`scrapez generate: ${(err as Error).message}\n`);
      return 1;
    }
  },
};
