/**
 * The example Prometheus configs we ship (config/compose/prometheus.yml) and show in docs/*.md send the scrapez
 * proxy's token as `Authorization: Bearer <token>`, on the scrape through proxy_url and on /sd, with a real
 * Prometheus 2.42 and 3.
 *
 * Why: Prometheus 2.42 sends an http_sd_configs `authorization: { credentials_file }` WITHOUT the `Bearer ` prefix
 * unless the block says `type: Bearer` (3.x adds it either way). The compose file and three docs examples once
 * omitted it, the proxy answered /sd with 401, and Prometheus 2 had no targets; no test saw it because the tests
 * wrote `type` themselves. Here every job of every example that reads a `credentials_file` runs unchanged except for
 * its addresses and file paths: both point at a recorder on loopback, which answers /sd with one target and the
 * proxied scrape with one sample, and records each request's Authorization header.
 */
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import YAML from "yaml";
import { repoRoot } from "../harness/binaries.js";
import { removeDir, tempDir } from "../harness/process.js";
import { PROMETHEUS_VERSIONS, Prometheus } from "../harness/prometheus.js";

type Job = Record<string, unknown> & { job_name: string };
interface Example {
  source: string;
  jobs: Job[];
}

/** Jobs (with a credentials_file) of one parsed YAML document: a whole prometheus.yml or a scrape_configs list. */
function jobsOf(doc: unknown): Job[] {
  const list = Array.isArray(doc)
    ? doc
    : doc && typeof doc === "object" && Array.isArray((doc as { scrape_configs?: unknown }).scrape_configs)
      ? (doc as { scrape_configs: unknown[] }).scrape_configs
      : [];
  return list.filter(
    (j): j is Job =>
      !!j &&
      typeof j === "object" &&
      typeof (j as Job).job_name === "string" &&
      JSON.stringify(j).includes('"credentials_file"'),
  );
}

function examples(): Example[] {
  const out: Example[] = [];
  const compose = "config/compose/prometheus.yml";
  out.push({ source: compose, jobs: jobsOf(YAML.parse(readFileSync(join(repoRoot, compose), "utf8"))) });
  for (const f of readdirSync(join(repoRoot, "docs")).filter((n) => n.endsWith(".md"))) {
    const md = readFileSync(join(repoRoot, "docs", f), "utf8");
    let i = 0;
    for (const m of md.matchAll(/```ya?ml\n([\s\S]*?)```/g)) {
      i++;
      let doc: unknown;
      try {
        doc = YAML.parse(m[1]!);
      } catch {
        continue; // a fragment with placeholders, not a config
      }
      const jobs = jobsOf(doc);
      if (jobs.length > 0) out.push({ source: `docs/${f} (yaml block ${i})`, jobs });
    }
  }
  return out;
}

/** Records Authorization per request; /sd answers one target, anything else (a proxied scrape) one sample. */
class Recorder {
  readonly seen: { what: string; authorization: string | undefined }[] = [];
  readonly #server: Server;
  port = 0;

  constructor() {
    this.#server = createServer((req: IncomingMessage, res) => {
      const url = req.url ?? "";
      const sd = url.startsWith("/sd");
      this.seen.push({ what: sd ? "/sd" : `scrape ${url}`, authorization: req.headers.authorization });
      if (sd) {
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify([{ targets: ["node-a"], labels: { __meta_ziti_service: "node-a" } }]));
      } else {
        res.setHeader("content-type", "text/plain; version=0.0.4");
        res.end("example_up 1\n");
      }
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.#server.listen(0, "127.0.0.1", r));
    this.port = (this.#server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((r) => this.#server.close(() => r()));
  }
}

/** The job with its addresses pointed at the recorder and every credentials_file at `tokenFile`; 1 s intervals. */
function localised(job: Job, port: number, tokenFile: string): Job {
  const rewrite = (v: unknown, key?: string): unknown => {
    if (Array.isArray(v)) return v.map((x) => rewrite(x));
    if (v && typeof v === "object") {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rewrite(x, k)]));
    }
    if (key === "credentials_file") return tokenFile;
    if ((key === "proxy_url" || key === "url") && typeof v === "string") {
      const u = new URL(v);
      return `http://127.0.0.1:${port}${key === "url" ? u.pathname + u.search : ""}`;
    }
    return v;
  };
  const j = rewrite(job) as Job;
  j.scrape_interval = "1s";
  j.scrape_timeout = "1s";
  for (const sd of (j.http_sd_configs as Record<string, unknown>[] | undefined) ?? []) sd.refresh_interval = "1s";
  return j;
}

const TOKEN = "example-token-7f3a";
const found = examples();
let dir: string;
let tokenFile: string;

beforeAll(() => {
  dir = tempDir("example-auth");
  tokenFile = join(dir, "token");
  writeFileSync(tokenFile, TOKEN, { mode: 0o600 });
});
afterAll(() => removeDir(dir));

it("finds the example configs that read a credentials file (compose and docs)", () => {
  const sources = found.map((e) => e.source);
  expect(sources).toContain("config/compose/prometheus.yml");
  expect(sources.some((s) => s.startsWith("docs/proxy.md"))).toBe(true);
  expect(sources.some((s) => s.startsWith("docs/kubernetes.md"))).toBe(true);
  expect(sources.some((s) => s.startsWith("docs/federation.md"))).toBe(true);
});

describe.each(PROMETHEUS_VERSIONS)("Prometheus %s", (version) => {
  it.each(found.map((e) => [e.source, e] as const))(
    "%s sends the proxy token as Authorization: Bearer on every request",
    async (_source, example) => {
      const rec = new Recorder();
      await rec.listen();
      let prom: Prometheus | undefined;
      try {
        const jobs = example.jobs.map((j) => localised(j, rec.port, tokenFile));
        prom = await Prometheus.start({ global: { scrape_interval: "1s" }, scrape_configs: jobs }, { version });
        // Every job has scraped through the recorder (and each http_sd job has asked /sd).
        await prom.waitForTargets(
          (ts) => jobs.every((j) => ts.some((t) => t.scrapePool === j.job_name && t.health === "up")),
          30_000,
          "every job's target up",
        );
        const hasSd = jobs.some((j) => Array.isArray(j.http_sd_configs));
        expect(rec.seen.some((s) => s.what === "/sd")).toBe(hasSd);
        expect(rec.seen.some((s) => s.what.startsWith("scrape"))).toBe(true);
        const wrong = rec.seen.filter((s) => s.authorization !== `Bearer ${TOKEN}`);
        expect(wrong, `requests without "Bearer <token>" from ${example.source}`).toEqual([]);
      } finally {
        await prom?.close();
        await rec.close();
      }
    },
  );
});
