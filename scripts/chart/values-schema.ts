/**
 * The Helm chart's values (deploy/helm/scrapez/values.yaml) as a zod schema: `npm run chart:schema` writes it as the
 * chart's values.schema.json (scripts/chart/write-schema.ts), which Helm checks on every install, upgrade, template
 * and lint, so a misspelled value (`--set sidecar.replica=3`) fails naming the field instead of rendering silently.
 *
 * The `config` sub-objects are bind.yaml's and proxy.yaml's own zod schemas (src/bind/config.ts, src/proxy/config.ts)
 * minus the fields the chart sets itself, so the chart's values and the config files cannot drift. The cross-field
 * checks of those files (duplicate services, timeouts, ...) are not JSON Schema: `scrapez check` and the process at
 * start still make them.
 *
 * Extending the chart: add the value to values.yaml and here, in the same place, then `npm run chart:schema`.
 * test/unit/chart-schema.test.ts fails while the two differ in a key, or while the committed JSON is stale.
 * - chart(...) for the chart's own settings (closed: unknown keys are refused; every key optional, as Helm merges
 *   values.yaml under what the user gives);
 * - open(...) / openList(...) for Kubernetes shapes passed through as they are (containers, volumes, affinity, ...);
 * - bindConfig / proxyConfig for the config files.
 */
import { z } from "zod";
import { BindConfigFields } from "../../src/bind/config.js";
import { ProxyConfigSchema } from "../../src/proxy/config.js";

/** A chart section: closed (unknown keys are errors), every key optional. */
const chart = <S extends z.ZodRawShape>(shape: S) => z.strictObject(shape).partial();
/** A Kubernetes object passed through to the rendered manifests as it is (a pod spec part, a selector, ...). */
const open = (description: string) => z.record(z.string(), z.unknown()).describe(description);
/** A list of such objects. */
const openList = (description: string) => z.array(z.record(z.string(), z.unknown())).describe(description);
const stringMap = (description: string) => z.record(z.string(), z.string()).describe(description);

/** Titles that mark a config file's schema (test/unit/chart-schema.test.ts compares values.yaml's keys up to them). */
export const CONFIG_TITLES = { bind: "bind.yaml", proxy: "proxy.yaml" } as const;

/**
 * bind.yaml without `identity` and `statusFile` (the chart sets them: templates/_helpers.tpl, scrapez.bindConfig).
 * `targets` may be empty or left out here: values.yaml's default is `[]`, and a `sidecars` entry's config is laid over
 * sidecar's; the template refuses a rendered pod without targets ("at least one target is required").
 */
export const bindConfig = BindConfigFields.omit({ identity: true, statusFile: true })
  .extend({ targets: z.array(BindConfigFields.shape.targets.element).optional() })
  .meta({
    title: CONFIG_TITLES.bind,
    description: "bind.yaml (docs/bind.md) without identity and statusFile: the chart sets those",
  });

/** proxy.yaml without `identities`, `auth` and `tls` (the chart sets them from Secrets: scrapez.proxyConfig). */
export const proxyConfig = ProxyConfigSchema.omit({ identities: true, auth: true, tls: true }).meta({
  title: CONFIG_TITLES.proxy,
  description: "proxy.yaml (docs/proxy.md) without identities, auth and tls: the chart sets those from Secrets",
});

const port = z.number().int().min(1).max(65535);
const seconds = z.number().int().min(1);
const podFields = {
  podLabels: stringMap("labels added to the pods"),
  podAnnotations: stringMap("annotations added to the pods"),
  nodeSelector: stringMap("the pod spec's nodeSelector"),
  tolerations: openList("the pod spec's tolerations"),
  affinity: open("the pod spec's affinity"),
  priorityClassName: z.string(),
};

/** An existing Secret holding an enrolled identity file (identities are never values). */
const identitySecret = chart({ secretName: z.string(), key: z.string().min(1) });

/** The settings of a scrapez proxy container (sidecar.proxy, proxy, operator.proxy share them). */
const proxyFields = {
  config: proxyConfig,
  identity: identitySecret,
  auth: chart({ bearerToken: chart({ secretName: z.string(), key: z.string().min(1) }) }),
  tls: chart({ secretName: z.string() }),
  resources: open("the container's resources (default: resources.proxy)"),
  probes: chart({ timeoutSeconds: seconds }),
  extraEnv: openList("more env of the scrapez proxy container"),
  extraVolumeMounts: openList("more volumeMounts of the scrapez proxy container"),
};

const sidecar = chart({
  enabled: z.boolean(),
  kind: z.enum(["DaemonSet", "Deployment"]),
  replicas: z.number().int().min(0),
  containers: openList("your exporter containers, as in a pod spec"),
  volumes: openList("their volumes, as in a pod spec"),
  files: stringMap('files for your containers: a ConfigMap mounted as the volume "files"'),
  hostNetwork: z.boolean(),
  hostPID: z.boolean(),
  attachTo: z
    .enum([
      "",
      "kube-prometheus-stack.prometheus-node-exporter",
      "prometheus-node-exporter",
      "kube-prometheus-stack.kube-state-metrics",
      "kube-state-metrics",
    ])
    .describe("scrapez bind joins the pod another chart runs: the values snippet for that chart"),
  serviceAccount: chart({
    create: z.boolean(),
    name: z.string(),
    annotations: stringMap("annotations of the created ServiceAccount"),
    automountServiceAccountToken: z.boolean(),
  }),
  rbac: chart({ create: z.boolean(), rules: openList("the ClusterRole's rules (for the exporter)") }),
  initContainers: openList("init containers of the pod"),
  extraVolumes: openList("more volumes of the pod"),
  ...podFields,
  bind: chart({
    config: bindConfig,
    identity: chart({
      secretName: z.string(),
      key: z.string().min(1),
      perNode: z.boolean(),
      enrollmentJwt: z.string().describe("a one-time enrollment token: scrapez enroll at the first start"),
      enrollmentJwtSecret: chart({ name: z.string(), key: z.string().min(1) }),
      store: chart({
        type: z.enum(["PersistentVolumeClaim", "emptyDir"]),
        size: z.string().min(1),
        storageClassName: z.string(),
        existingClaim: z.string(),
      }),
    }),
    extraEnv: openList("more env of the scrapez bind container"),
    extraVolumeMounts: openList("more volumeMounts of the scrapez bind container"),
    resources: open("the container's resources (default: resources.bind)"),
    probes: chart({ readinessPeriodSeconds: seconds, livenessPeriodSeconds: seconds, timeoutSeconds: seconds }),
  }),
  proxy: chart({ enabled: z.boolean(), ...proxyFields }),
  networkPolicy: chart({
    enabled: z.boolean(),
    egress: openList("NetworkPolicy egress rules (then egress is restricted to them)"),
  }),
});

/** More exporter pods of one release: each a `sidecar` laid over `sidecar`, with a name. */
const sidecarEntry = sidecar
  .omit({ enabled: true })
  .extend({ name: z.string().regex(/^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$/) });

const intOrPercent = z.union([z.number().int().min(0), z.string()]);

const proxy = chart({
  enabled: z.boolean(),
  replicas: z.number().int().min(0),
  ...proxyFields,
  service: chart({ port }),
  podDisruptionBudget: chart({ enabled: z.boolean(), maxUnavailable: intOrPercent, minAvailable: intOrPercent }),
  serviceMonitor: chart({
    enabled: z.boolean(),
    kind: z.enum(["ServiceMonitor", "PodMonitor"]),
    interval: z.string().min(1),
    scrapeTimeout: z.string(),
    labels: stringMap("more labels of the ServiceMonitor/PodMonitor"),
    tlsConfig: open("the Operator's TLS settings for the scrape"),
  }),
  initContainers: openList("init containers of the pod"),
  extraVolumes: openList("more volumes of the pod"),
  networkPolicy: chart({
    enabled: z.boolean(),
    from: openList("NetworkPolicy peers allowed to use the proxy"),
  }),
  ...podFields,
});

const operator = chart({
  enabled: z.boolean(),
  proxy: chart({ ...proxyFields, extraVolumes: openList("more volumes, added to the Prometheus's") }),
  prometheus: chart({
    create: z.boolean(),
    name: z.string(),
    spec: open("more Prometheus spec fields when create is true"),
  }),
  scrapeConfigs: z.string().describe("the output of `scrapez generate central|cluster --format operator`"),
});

/** The chart's values: values.yaml's keys, each with its type. */
export const ChartValues = chart({
  image: chart({
    repository: z.string().min(1),
    tag: z.string(),
    pullPolicy: z.enum(["Always", "IfNotPresent", "Never"]),
    user: z.number().int().min(1),
  }),
  imagePullSecrets: openList("the pod spec's imagePullSecrets"),
  nameOverride: z.string(),
  fullnameOverride: z.string(),
  commonLabels: stringMap("labels added to every object"),
  prometheusSelectorLabels: stringMap("labels a Prometheus Operator's selectors match (e.g. release)"),
  podSecurityContext: open("the pod securityContext of every workload"),
  containerSecurityContext: open("the securityContext of every container"),
  resources: chart({
    bind: open("scrapez bind's resources"),
    proxy: open("scrapez proxy's resources"),
  }),
  sidecar,
  sidecars: z.array(sidecarEntry),
  proxy,
  operator,
  /** Helm passes `global` to every chart (subcharts share it); this chart reads nothing from it. */
  global: open("values shared with subcharts (unused by this chart)"),
});

/** The JSON Schema Helm reads (values.schema.json), as an object. */
export function valuesJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(ChartValues, { io: "input", target: "draft-2020-12" }) as Record<string, unknown>;
}
