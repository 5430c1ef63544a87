/** Federation generators: golden outputs, determinism, invalid input, and the Operator ScrapeConfig schema. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import YAML from "yaml";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { parseBindConfig } from "../../src/bind/config.js";
import { upstreamTimeoutMs } from "../../src/bind/server.js";
import { parseFederationConfig, type FederationConfig } from "../../src/generate/config.js";
import { parseTargetHost } from "../../src/common/naming.js";
import { generateCentral, generateCentralOperator, generateCluster } from "../../src/generate/generate.js";

const golden = join(import.meta.dirname, "..", "golden");
const UPDATE = process.env.UPDATE_GOLDEN === "1";

function matchesGolden(name: string, text: string): void {
  const file = join(golden, name);
  if (UPDATE) writeFileSync(file, text);
  expect(text).toBe(readFileSync(file, "utf8"));
}

const base = {
  proxy: {
    url: "http://127.0.0.1:9480",
    auth: { bearerTokenFile: "/run/secrets/token", bearerTokenSecret: { name: "scrapez-proxy", key: "token" } },
  },
  clusters: [
    {
      name: "cluster-a",
      service: "prometheus-cluster-a",
      externalLabels: { region: "eu-west", env: "prod" },
      prometheusUrl: "http://127.0.0.1:9090",
      bindIdentity: "/etc/scrapez/a.json",
      proxy: {
        url: "http://127.0.0.1:9481",
        auth: { bearerTokenFile: "/run/secrets/a-token", bearerTokenSecret: { name: "scrapez-proxy-a", key: "token" } },
      },
      exporters: { attributes: ["cluster-a-exporters"] },
    },
    { name: "cluster-b", service: "prometheus cluster b", match: ['{job="node"}', "up"] },
    { name: "cluster-c", service: "prometheus-cluster-c" },
  ],
};
const cfg = (over: object = {}): FederationConfig => parseFederationConfig({ ...base, ...over }, "federation.yaml");

describe("scrapez generate: golden outputs", () => {
  it("central prometheus.yml", () => matchesGolden("central.yml", generateCentral(cfg(), "federation.yaml")[0]!));
  it("central with shards: 2", () => {
    const shards = generateCentral(cfg({ shards: 2 }), "federation.yaml");
    expect(shards).toHaveLength(2);
    shards.forEach((s, i) => matchesGolden(`central-shard-${i}.yml`, s));
  });
  it("central as Operator ScrapeConfigs", () =>
    matchesGolden("central-operator.yaml", generateCentralOperator(cfg(), "federation.yaml")));
  it("cluster-side configs", () => {
    const out = generateCluster(cfg(), "cluster-a", "federation.yaml", "prometheus");
    matchesGolden("cluster-a-prometheus.yml", out.prometheus);
    matchesGolden("cluster-a-bind.yaml", out.bind);
    matchesGolden(
      "cluster-a-operator.yaml",
      generateCluster(cfg(), "cluster-a", "federation.yaml", "operator").prometheus,
    );
  });
  it("is deterministic: the same input gives the same bytes", () => {
    expect(generateCentral(cfg({ shards: 3 }), "f")).toEqual(generateCentral(cfg({ shards: 3 }), "f"));
    expect(generateCentralOperator(cfg(), "f")).toBe(generateCentralOperator(cfg(), "f"));
  });
  it("maps a service name that is not a host name the way scrapez proxy expects", () => {
    const doc = YAML.parse(generateCentral(cfg(), "f")[0]!) as {
      scrape_configs: { static_configs: { targets: string[] }[] }[];
    };
    const [target] = doc.scrape_configs[1]!.static_configs[0]!.targets;
    expect(target).toMatch(/^x--[0-9a-f]+$/);
    expect(parseTargetHost(target!)).toEqual({ service: "prometheus cluster b" });
  });
});

describe("scrapez generate cluster: the bind config honours the federation scrapeTimeout", () => {
  /** The generated bind config as scrapez bind loads it, and the upstream timeout it gives the federation scrape. */
  function bindFor(over: object) {
    const c = cfg(over);
    const dir = mkdtempSync(join(tmpdir(), "scrapez-gen-bind-"));
    try {
      writeFileSync(join(dir, "id.json"), "{}");
      const text = generateCluster(c, "cluster-a", "f", "prometheus").bind;
      const target = parseBindConfig(YAML.parse(text), "bind.yaml", dir, { SCRAPEZ_IDENTITY: "id.json" }).targets[0]!;
      const header = String(toSeconds(c.scrapeTimeout));
      return { text, target, ms: upstreamTimeoutMs(header, target.timeoutSeconds, target.maxTimeoutSeconds) };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const toSeconds = (d: string) => Number(/^(\d+)(s|m)$/.exec(d)![1]) * (d.endsWith("m") ? 60 : 1);

  it("the default 25s fits bind's default cap (60s): nothing extra written, the whole timeout used", () => {
    const { text, target, ms } = bindFor({});
    expect(text).not.toMatch(/maxTimeoutSeconds/);
    expect(target.maxTimeoutSeconds).toBe(60);
    expect(ms).toBe(24_500);
  });

  it("a longer scrapeTimeout raises maxTimeoutSeconds to match", () => {
    const { text, target, ms } = bindFor({ scrapeInterval: "5m", scrapeTimeout: "2m" });
    expect(text).toMatch(/^\s+maxTimeoutSeconds: 120$/m);
    expect(target.maxTimeoutSeconds).toBe(120);
    expect(ms).toBe(119_500);
  });

  it("refuses a scrapeTimeout longer than bind can wait", () => {
    expect(() =>
      generateCluster(cfg({ scrapeInterval: "20m", scrapeTimeout: "11m" }), "cluster-a", "f", "prometheus"),
    ).toThrow(/scrapeTimeout: 11m is longer than scrapez bind waits for an upstream \(600s at most\)/);
  });
});

describe("scrapez generate: match[] selectors", () => {
  it.each([
    ['{job=~".+"}'],
    ['up{job="node", instance!~"x.*"}'],
    // Prometheus 3's UTF-8 names: a quoted metric name inside the braces, quoted label names.
    ['{"http.server.duration"}'],
    ['{"http.server.duration", job="api"}'],
    ['{"service.name"="checkout", "k8s.namespace"=~"prod-.*"}'],
    ['{"a \\" quote"="v"}'],
  ])("accepts %s and passes it on unchanged", (sel) => {
    const c = parseFederationConfig({ ...base, match: [sel] }, "federation.yaml");
    expect(c.match).toEqual([sel]);
    const doc = YAML.parse(generateCentral(c, "f")[0]!) as { scrape_configs: { params: { "match[]": string[] } }[] };
    // Every cluster without its own `match` gets it, byte for byte.
    const own = c.clusters.filter((x) => !x.match).length;
    expect(own).toBeGreaterThan(0);
    expect(doc.scrape_configs.filter((j) => j.params["match[]"].join() === sel)).toHaveLength(own);
  });
});

describe("scrapez generate: invalid input names the field", () => {
  it.each([
    [
      "duplicate cluster names",
      { clusters: [base.clusters[2], base.clusters[2]] },
      /clusters\[1\]\.name: duplicate cluster "cluster-c"/,
    ],
    ["a bad selector", { match: ["{job=node}"] }, /match\[0\]: not a series selector/],
    ["an unterminated quoted name", { match: ['{"http.duration}'] }, /match\[0\]: not a series selector/],
    ["a quoted name with no value", { match: ['{"service.name"=}'] }, /match\[0\]: not a series selector/],
    ["an empty selector", { match: ["{}"] }, /match\[0\]: a selector needs/],
    ["a missing field", { clusters: [{ name: "x" }] }, /clusters\[0\]\.service/],
    ["shards < 1", { shards: 0 }, /shards: shards must be at least 1/],
    ["fractional shards", { shards: 1.5 }, /shards: shards must be a whole number/],
    ["bad cluster name", { clusters: [{ name: "Cluster_A", service: "s" }] }, /clusters\[0\]\.name/],
    ["timeout over interval", { scrapeInterval: "10s", scrapeTimeout: "20s" }, /scrapeTimeout: must not be longer/],
    ["bad duration", { scrapeInterval: "10 seconds" }, /scrapeInterval: a Prometheus duration/],
    ["unknown key", { colour: 1 }, /colour/],
    [
      "cluster label in externalLabels",
      { clusters: [{ name: "a", service: "s", externalLabels: { cluster: "x" } }] },
      /externalLabels\.cluster/,
    ],
    ["no proxy", { proxy: undefined }, /proxy/],
  ])("rejects %s", (_n, over, msg) => {
    expect(() => parseFederationConfig({ ...base, ...over }, "federation.yaml")).toThrow(msg);
  });

  it("asks for a Secret for Operator output and for cluster-side fields", () => {
    const fileOnly = cfg({ proxy: { url: "http://p:1", auth: { bearerTokenFile: "/t" } } });
    expect(() => generateCentralOperator(fileOnly, "f")).toThrow(/proxy\.auth\.bearerTokenSecret/);
    expect(() => generateCluster(cfg(), "cluster-c", "f", "prometheus")).toThrow(
      /clusters\[2\]\.prometheusUrl: required/,
    );
    expect(() => generateCluster(cfg(), "nope", "f", "prometheus")).toThrow(
      /no such cluster \(known: cluster-a, cluster-b, cluster-c\)/,
    );
  });
});

/** The parts of the monitoring.coreos.com/v1alpha1 ScrapeConfig CRD schema this output uses: required fields and types. */
const SecretKeySelector = z.object({ name: z.string().min(1), key: z.string().min(1) }).strict();
const SafeAuthorization = z.object({ type: z.string(), credentials: SecretKeySelector }).strict();
const ScrapeConfigCRD = z
  .object({
    apiVersion: z.literal("monitoring.coreos.com/v1alpha1"),
    kind: z.literal("ScrapeConfig"),
    metadata: z.object({
      name: z
        .string()
        .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/)
        .max(253),
      labels: z.record(z.string(), z.string()),
    }),
    spec: z
      .object({
        honorLabels: z.boolean().optional(),
        metricsPath: z.string().optional(),
        params: z.record(z.string(), z.array(z.string())).optional(),
        scrapeInterval: z
          .string()
          .regex(/^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$/)
          .optional(),
        scrapeTimeout: z
          .string()
          .regex(/^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$/)
          .optional(),
        proxyUrl: z
          .string()
          .regex(/^(http|https|socks5):\/\/.+$/)
          .optional(),
        authorization: SafeAuthorization.optional(),
        staticConfigs: z
          .array(
            z
              .object({ targets: z.array(z.string()).min(1), labels: z.record(z.string(), z.string()).optional() })
              .strict(),
          )
          .optional(),
        httpSDConfigs: z
          .array(
            z
              .object({
                url: z.string().regex(/^http(s)?:\/\/.+$/),
                refreshInterval: z.string().optional(),
                authorization: SafeAuthorization.optional(),
              })
              .strict(),
          )
          .optional(),
        relabelings: z
          .array(
            z.object({ sourceLabels: z.array(z.string()).optional(), targetLabel: z.string().optional() }).strict(),
          )
          .optional(),
      })
      .strict(),
  })
  .strict();

describe("Operator output matches the ScrapeConfig schema", () => {
  it("central and cluster resources validate", () => {
    const docs = [
      ...YAML.parseAllDocuments(generateCentralOperator(cfg(), "f")).map((d) => d.toJS() as unknown),
      YAML.parse(generateCluster(cfg(), "cluster-a", "f", "operator").prometheus) as unknown,
    ];
    expect(docs).toHaveLength(4);
    for (const d of docs) expect(() => ScrapeConfigCRD.parse(d)).not.toThrow();
  });
});
