/**
 * `config/federation.yaml`: the clusters a central Prometheus federates over the overlay. Strict schema from
 * unknown YAML; every error names the field path.
 */
import { z } from "zod";
import { invalidConfig } from "../common/config/errors.js";
import { readConfigFile } from "../common/config/load.js";

const duration = z.string().regex(/^(\d+(ms|s|m|h|d|w|y))+$/, 'a Prometheus duration such as "30s" or "1m"');
const labelName = z.string().regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, "not a valid label name");
/** A double-quoted PromQL string. */
const QUOTED = String.raw`"(?:[^"\\]|\\.)*"`;
/**
 * One item between braces: `label op "value"`, where Prometheus 3 also takes a quoted (UTF-8) label name, or (3.x)
 * a quoted metric name on its own: `{"http.server.duration", job="api"}`.
 */
const ITEM = String.raw`(?:(?:[a-zA-Z_][a-zA-Z0-9_]*|${QUOTED})\s*(?:=|!=|=~|!~)\s*${QUOTED}|${QUOTED})`;
/** A series selector for match[]: `metric{...}`, `{...}` with at least one matcher. */
const selector = z
  .string()
  .regex(
    new RegExp(String.raw`^([a-zA-Z_:][a-zA-Z0-9_:]*)?(\{\s*(${ITEM}\s*,?\s*)*\})?$`),
    'not a series selector (e.g. {job=~".+"}, up{job="node"}, or with Prometheus 3 {"http.server.duration"})',
  )
  .refine((s) => s.trim() !== "" && s !== "{}", "a selector needs a metric name or at least one matcher");

const Auth = z
  .object({
    bearerTokenFile: z.string().min(1).optional(),
    /** Operator output: the Secret holding the token. */
    bearerTokenSecret: z
      .object({ name: z.string().min(1), key: z.string().min(1) })
      .strict()
      .optional(),
  })
  .strict();

const Proxy = z
  .object({
    url: z.string().regex(/^https?:\/\/[^/\s]+\/?$/, "the proxy's base URL, e.g. http://127.0.0.1:9480"),
    auth: Auth.optional(),
    tls: z
      .object({
        caFile: z.string().optional(),
        certFile: z.string().optional(),
        keyFile: z.string().optional(),
        serverName: z.string().optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

const Cluster = z
  .object({
    name: z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/, "lowercase letters, digits and -, as in a Kubernetes name"),
    /** The overlay service of this cluster's Prometheus (bound by scrapez bind, /federate only). */
    service: z.string().min(1),
    externalLabels: z.record(labelName, z.string()).default({}),
    match: z.array(selector).min(1).optional(),
    /** For `generate cluster`: where the cluster's Prometheus listens, next to its scrapez bind. */
    prometheusUrl: z
      .string()
      .regex(/^https?:\/\/[^/\s]+\/?$/, "scheme://host:port of the cluster's Prometheus")
      .optional(),
    /** For `generate cluster`: the identity file its scrapez bind uses. */
    bindIdentity: z.string().min(1).optional(),
    /** For `generate cluster`: the cluster's own scrapez proxy, through which it scrapes its local exporters. */
    proxy: Proxy.optional(),
    /** For `generate cluster`: which overlay services are this cluster's exporters (http_sd filters). */
    exporters: z
      .object({ services: z.array(z.string().min(1)).optional(), attributes: z.array(z.string().min(1)).optional() })
      .strict()
      .optional(),
  })
  .strict();

const Federation = z
  .object({
    proxy: Proxy,
    match: z.array(selector).min(1).default(['{job=~".+"}']),
    scrapeInterval: duration.default("30s"),
    scrapeTimeout: duration.default("25s"),
    shards: z.number().int("shards must be a whole number").min(1, "shards must be at least 1").max(64).default(1),
    /** Label the central Prometheus adds to every federated series. */
    clusterLabel: labelName.default("cluster"),
    clusters: z.array(Cluster).min(1, "at least one cluster is required"),
  })
  .strict()
  .superRefine((c, ctx) => {
    const names = new Map<string, number>();
    const services = new Map<string, number>();
    c.clusters.forEach((cl, i) => {
      if (names.has(cl.name)) {
        ctx.addIssue({
          code: "custom",
          path: ["clusters", i, "name"],
          message: `duplicate cluster "${cl.name}" (also clusters[${names.get(cl.name)}])`,
        });
      }
      names.set(cl.name, i);
      if (services.has(cl.service)) {
        ctx.addIssue({
          code: "custom",
          path: ["clusters", i, "service"],
          message: `service "${cl.service}" is also clusters[${services.get(cl.service)}]'s`,
        });
      }
      services.set(cl.service, i);
      if (c.clusterLabel in cl.externalLabels) {
        ctx.addIssue({
          code: "custom",
          path: ["clusters", i, "externalLabels", c.clusterLabel],
          message: `"${c.clusterLabel}" is set from the cluster name`,
        });
      }
    });
    if (toMs(c.scrapeTimeout) > toMs(c.scrapeInterval)) {
      ctx.addIssue({ code: "custom", path: ["scrapeTimeout"], message: "must not be longer than scrapeInterval" });
    }
  });

export type FederationConfig = z.infer<typeof Federation>;
export type ClusterConfig = FederationConfig["clusters"][number];
export type ProxyRef = z.infer<typeof Proxy>;

/** A Prometheus duration ("1m30s") in ms. */
export function toMs(d: string): number {
  const unit: Record<string, number> = { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7, w: 6.048e8, y: 3.1536e10 };
  let total = 0;
  for (const m of d.matchAll(/(\d+)(ms|s|m|h|d|w|y)/g)) total += Number(m[1]) * unit[m[2]!]!;
  return total;
}

export function parseFederationConfig(raw: unknown, where = "config"): FederationConfig {
  const r = Federation.safeParse(raw);
  if (!r.success) throw invalidConfig(where, r.error.issues);
  return r.data;
}

export function loadFederationConfig(file: string): FederationConfig {
  return parseFederationConfig(readConfigFile(file).raw, file);
}
