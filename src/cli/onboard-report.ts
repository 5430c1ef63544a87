/**
 * What one-command onboarding prints for the operator (src/cli/onboard.ts holds the rest): the prometheus.yml jobs,
 * the `ziti` commands that let an identity bind or dial, and each service's fate as it goes. Docs:
 * docs/bind.md#one-command-onboarding, docs/proxy.md#one-command-onboarding.
 */
import YAML from "yaml";
import { pathAllowed } from "../bind/paths.js";
import { nameToHost } from "../common/naming.js";

/** A word safe in a POSIX shell as it is, or single-quoted. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9@#%+=:,./_-]+$/.test(s) && !s.startsWith("#") ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** YAML as a prometheus.yml is written by hand: lists of plain values in flow style (`targets: [node]`). */
function promYaml(value: unknown): string {
  const doc = new YAML.Document(value);
  YAML.visit(doc, {
    Seq(_, node) {
      if (node.items.every((i) => YAML.isScalar(i))) node.flow = true;
    },
  });
  return doc.toString({ lineWidth: 0, flowCollectionPadding: false });
}

/** The role attribute the printed commands give a bound service and let the proxy's identity dial by. */
export const SCRAPE_ATTRIBUTE = "scrapez";

/**
 * The path Prometheus scrapes a target at, as the printed job and the "bound" line both say it: its first exact
 * path; with only `*` rules, /metrics when one of them allows it, else the first rule without its `*` (which that
 * rule allows: `/probe*` matches `/probe`).
 */
export function scrapePath(t: ReportTarget): string {
  const exact = t.paths.find((p) => !p.endsWith("*"));
  if (exact !== undefined) return exact;
  if (t.paths.length === 0 || pathAllowed(t.paths, "/metrics")) return "/metrics";
  return t.paths[0]!.slice(0, -1);
}

/**
 * The prometheus.yml jobs that scrape the bind's targets through the central scrapez proxy, for the operator to
 * paste (valid YAML, comments included; `promtool check config` accepts it as a whole file).
 */
export function bindSnippet(targets: readonly ReportTarget[], proxyUrl: string): string {
  const jobs = targets.map((t) => {
    const path = scrapePath(t);
    return {
      job_name: t.service,
      proxy_url: proxyUrl,
      ...(path !== "/metrics" ? { metrics_path: path } : {}),
      static_configs: [{ targets: [nameToHost(t.service)] }],
    };
  });
  return (
    "# For the central Prometheus (prometheus.yml), through its scrapez proxy. If it already has the job\n" +
    "# `scrapez proxy` prints (http_sd_configs), these services are discovered: add nothing. Otherwise:\n" +
    promYaml({ scrape_configs: jobs })
  );
}

/** What a bind prints when its identity cannot bind a service: the `ziti` commands that let it. */
export function bindPolicyHelp(service: string, identityName: string, reason: string): string {
  const s = shellQuote(service);
  const policy = shellQuote(`${service}-bind`);
  return (
    `scrapez bind: service "${service}" is not bound yet: ${reason}\n` +
    `# An OpenZiti administrator lets identity "${identityName}" bind it (skip the first line if the service exists;\n` +
    `# give it the attribute ${SCRAPE_ATTRIBUTE} so that the proxy's Dial policy covers it). scrapez bind keeps trying:\n` +
    `ziti edge create service ${s} --role-attributes ${SCRAPE_ATTRIBUTE}\n` +
    `ziti edge create service-policy ${policy} Bind --service-roles ${shellQuote(`@${service}`)} ` +
    `--identity-roles ${shellQuote(`@${identityName}`)}\n`
  );
}

/** What a proxy prints when its identity may dial no service yet. */
export function proxyPolicyHelp(identityName: string): string {
  return (
    `scrapez proxy: identity "${identityName}" may dial no service yet.\n` +
    `# An OpenZiti administrator lets it dial the services with the attribute ${SCRAPE_ATTRIBUTE}` +
    " (what `scrapez bind --jwt` prints gives\n# its services that attribute); the proxy finds them as they come:\n" +
    `ziti edge create service-policy ${shellQuote(`${identityName}-dial`)} Dial ` +
    `--service-roles ${shellQuote(`#${SCRAPE_ATTRIBUTE}`)} --identity-roles ${shellQuote(`@${identityName}`)}\n`
  );
}

/** The proxy's prometheus.yml job: proxy_url and http_sd_configs at the address it listens on. */
export function proxySnippet(addr: { host: string; port: number }, opts: { tls: boolean; auth: boolean }): string {
  const wildcard = addr.host === "0.0.0.0" || addr.host === "::";
  const host = wildcard ? "127.0.0.1" : addr.host.includes(":") ? `[${addr.host}]` : addr.host;
  const base = `${opts.tls ? "https" : "http"}://${host}:${addr.port}`;
  const job = {
    job_name: "ziti",
    proxy_url: base,
    http_sd_configs: [{ url: `${base}/sd` }],
    relabel_configs: [
      { source_labels: ["__meta_ziti_service"], target_label: "service" },
      { source_labels: ["__meta_ziti_replica"], target_label: "replica" },
    ],
  };
  const notes = [
    wildcard ? `# It listens on every address (${addr.host}); from another host, use this host's address.\n` : "",
    opts.tls || opts.auth
      ? "# Its listener has TLS or auth: add the job's tls_config and credentials (docs/proxy.md).\n"
      : "",
  ].join("");
  return (
    "# For prometheus.yml: every overlay service this proxy's identity may dial, found through /sd and scraped\n" +
    `# through the proxy.\n${notes}` +
    promYaml({ scrape_configs: [job] })
  );
}

/** A target as the report needs it: the bind's config targets and the flag targets both fit. */
export interface ReportTarget {
  service: string;
  paths: readonly string[];
}

/**
 * What `scrapez bind --jwt` (or without --config) prints on stdout as it goes: once authenticated, the Prometheus
 * jobs; for each service, once, that it is bound, or why not and the `ziti` commands that let it bind.
 */
export class BindReport {
  readonly #targets: readonly ReportTarget[];
  readonly #proxyUrl: string;
  readonly #out: (s: string) => void;
  readonly #bound = new Set<string>();
  readonly #helped = new Set<string>();
  #identity = "";

  constructor(
    targets: readonly ReportTarget[],
    proxyUrl: string,
    out: (s: string) => void = (s) => void process.stdout.write(s),
  ) {
    this.#targets = targets;
    this.#proxyUrl = proxyUrl;
    this.#out = out;
  }

  /** Authenticated as `identityName`: the jobs for the central Prometheus. */
  authenticated(identityName: string): void {
    this.#identity = identityName;
    this.#out(bindSnippet(this.#targets, this.#proxyUrl));
  }

  /** The services' states changed (BindServer.status()). */
  update(services: Readonly<Record<string, { state: string; lastError?: string }>>): void {
    for (const t of this.#targets) {
      const s = services[t.service];
      if (!s) continue;
      if (s.state === "bound" && !this.#bound.has(t.service)) {
        this.#bound.add(t.service);
        this.#out(
          `scrapez bind: service "${t.service}" bound; the central scrapez proxy reaches it as ` +
            `http://${nameToHost(t.service)}${scrapePath(t)}\n`,
        );
      } else if (s.state === "failed" && !this.#bound.has(t.service) && !this.#helped.has(t.service)) {
        this.#helped.add(t.service);
        this.#out(bindPolicyHelp(t.service, this.#identity, s.lastError ?? "unknown reason"));
      }
    }
  }
}

/** The proxy's catalog as the report reads it (src/proxy/catalog.ts's ServiceCatalog fits). */
export interface ReportCatalog {
  readonly loaded: boolean;
  groups(): readonly { labels: Readonly<Record<string, string>> }[];
}

/**
 * What `scrapez proxy --jwt` (or without --config) prints on stdout: the Prometheus job at once; once the service
 * list is loaded, the `ziti` command for a Dial policy if its identities may dial nothing; then each service as it
 * becomes scrapable. Polls the catalog every `everyMs` (cheap: it reads the list in memory) until stop().
 */
export class ProxyReport {
  readonly #out: (s: string) => void;
  readonly #seen = new Set<string>();
  #helped = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(out: (s: string) => void = (s) => void process.stdout.write(s)) {
    this.#out = out;
  }

  /** Listening at `addr`: the prometheus.yml job; then watches `catalog`. */
  start(
    addr: { host: string; port: number },
    opts: { tls: boolean; auth: boolean },
    catalog: ReportCatalog,
    identityNames: () => string[],
    everyMs = 1000,
  ): void {
    this.#out(proxySnippet(addr, opts));
    const check = () => {
      if (!catalog.loaded) return;
      const services = new Set(catalog.groups().map((g) => g.labels.__meta_ziti_service ?? ""));
      services.delete("");
      if (services.size === 0 && !this.#helped) {
        this.#helped = true;
        for (const name of identityNames()) this.#out(proxyPolicyHelp(name));
      }
      for (const s of services) {
        if (this.#seen.has(s)) continue;
        this.#seen.add(s);
        this.#out(`scrapez proxy: service "${s}" discovered: the job above scrapes it as target ${nameToHost(s)}\n`);
      }
    };
    this.#timer = setInterval(check, everyMs);
    this.#timer.unref();
    check();
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
