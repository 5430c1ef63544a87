/**
 * One command from an enrollment token to a scraped exporter: `scrapez bind --jwt node.jwt --service node --upstream
 * http://127.0.0.1:9100` and `scrapez proxy --jwt proxy.jwt`. This module holds what both share: the state
 * directory (where the enrolled identity is kept), enrolling once and reusing the identity afterwards, the bind's
 * targets from flags, and what is printed for the operator (the prometheus.yml lines, the `ziti` commands that let
 * the identity bind or dial). Docs: docs/bind.md#one-command-onboarding, docs/proxy.md#one-command-onboarding.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import YAML from "yaml";
import { AppErrorCodes, ScrapezError } from "../common/errors.js";
import { nameToHost } from "../common/naming.js";
import { UsageError } from "./registry.js";

/** The flags of onboarding, beside --config and the overrides (node:util parseArgs options). */
export const ONBOARD_OPTIONS = {
  jwt: { type: "string" },
  "state-dir": { type: "string" },
} as const;

/** The bind's: targets from the command line, and the proxy address to print in the Prometheus snippet. */
export const BIND_ONBOARD_OPTIONS = {
  ...ONBOARD_OPTIONS,
  service: { type: "string", multiple: true },
  upstream: { type: "string", multiple: true },
  "proxy-url": { type: "string" },
} as const;

export const STATE_DIR_ENV = "SCRAPEZ_STATE_DIR";
/** Where `scrapez proxy` listens unless told otherwise, and so what the bind prints as proxy_url by default. */
export const DEFAULT_PROXY_URL = "http://127.0.0.1:9480";

/** The help lines of the onboarding flags (laid out as overridesHelp lays out the others). */
export function onboardHelp(command: "bind" | "proxy"): string {
  const row = (flag: string, env: string, text: string) => `  ${flag.padEnd(28)} ${env.padEnd(28)} ${text}\n`;
  return (
    `One-command onboarding, without a config file or with one (docs/${command}.md#one-command-onboarding):\n` +
    row("--jwt F", "", "enroll from this one-time token if the identity is not enrolled yet; print what to add") +
    row("--state-dir D", STATE_DIR_ENV, `where the identity is kept without --config (default ${defaultStateDir()})`) +
    (command === "bind"
      ? row("--service S", "", "an exporter's service, without --config (repeat with --upstream for several)") +
        row("--upstream URL", "", "its exporter: http://host:port serves /metrics, http://host:port/p serves /p") +
        row("--proxy-url URL", "", `the central scrapez proxy, for the printed job (default ${DEFAULT_PROXY_URL})`)
      : "")
  );
}

/**
 * The state directory: where `--jwt` keeps the enrolled identity when there is no config file. `/var/lib/scrapez`
 * for root (a system service), else the XDG state directory (`$XDG_STATE_HOME/scrapez`, `~/.local/state/scrapez`).
 */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env, uid = process.getuid?.() ?? -1): string {
  if (uid === 0) return "/var/lib/scrapez";
  const xdg = env.XDG_STATE_HOME;
  if (xdg && isAbsolute(xdg)) return join(xdg, "scrapez");
  return join(env.HOME || homedir(), ".local", "state", "scrapez");
}

/** The state directory in force: --state-dir, else SCRAPEZ_STATE_DIR, else the default. */
export function stateDirOf(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return resolve(flag || env[STATE_DIR_ENV] || defaultStateDir(env));
}

/** The identity file in the state directory of each command (a bind and a proxy can share the directory). */
export function stateIdentityFile(stateDir: string, command: "bind" | "proxy"): string {
  return join(stateDir, `${command}-identity.json`);
}

/** Onboarding cannot go on: the state directory, the token or the identity already there. */
export class OnboardError extends ScrapezError {}

/**
 * Makes sure `dir` exists (created 0700) and this process can create files in it; throws an OnboardError naming
 * the directory, why, and what to do. Checked before enrolling: a token is good once, and an identity enrolled into
 * a directory it cannot be written to would be lost with it. Returns warnings (a directory others can read).
 */
export function prepareDir(
  dir: string,
  what = "the state directory",
  other = `choose another with --state-dir (or ${STATE_DIR_ENV})`,
): string[] {
  const fix =
    `scrapez keeps the enrolled identity there. Make it writable for this user (uid ${process.getuid?.() ?? "?"}), ` +
    `or ${other}`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === "EEXIST" || e.code === "ENOTDIR" ? "is not a directory" : `cannot be made (${e.code})`;
    throw new OnboardError(AppErrorCodes.STATE_DIR_UNUSABLE, `${what} ${dir} ${why}: ${fix}`);
  }
  const st = statSync(dir);
  if (!st.isDirectory()) {
    throw new OnboardError(AppErrorCodes.STATE_DIR_UNUSABLE, `${what} ${dir} is not a directory: ${fix}`);
  }
  const probe = join(dir, `.scrapez-write-test-${process.pid}`);
  try {
    closeSync(openSync(probe, "wx", 0o600));
    unlinkSync(probe);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new OnboardError(
      AppErrorCodes.STATE_DIR_UNUSABLE,
      `${what} ${dir} is not writable (${e.code ?? e.message}): ${fix}`,
    );
  }
  return st.mode & 0o077
    ? [
        `${what} ${dir} is open to other users (mode ${(st.mode & 0o777).toString(8)}); the identity file in it is ` +
          `0600, but chmod 700 ${dir} keeps its name and the status file private too`,
      ]
    : [];
}

/** What ensureIdentity did. */
export interface EnsuredIdentity {
  file: string;
  /** True when it enrolled now; false when the identity was there already. */
  enrolled: boolean;
  /** One line for the operator: what happened, with the identity's id, controller and key pin. */
  message: string;
  /** Things worth a warning (a state directory open to others). */
  warnings: string[];
}

const originOf = (u: string): string => {
  try {
    return new URL(u).origin;
  } catch {
    return u;
  }
};

/**
 * Makes sure `file` holds an enrolled identity. When it exists, it is used as it is: the token (if given and
 * readable) must be for the same controller and the same identity, or the command stops, naming both (a token is
 * good once, so a second run with the same command finds the identity and needs the token no more; even a token file
 * deleted since is fine). When it does not exist, the token is enrolled into it (mode 0600; the directory is made
 * 0700 and checked writable first).
 */
export async function ensureIdentity(file: string, jwtFile: string | undefined): Promise<EnsuredIdentity> {
  const { enroll, identityKeyPin, loadIdentity, parseEnrollmentJwt, saveIdentity } = await import("../ziti/index.js");
  let jwtText: string | undefined;
  let jwtUnreadable: string | undefined;
  if (jwtFile !== undefined) {
    try {
      jwtText = readFileSync(jwtFile, "utf8").trim();
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      jwtUnreadable = `cannot read the token file ${jwtFile} (${e.code ?? e.message})`;
    }
  }
  const tokenProblem = (err: unknown) =>
    new OnboardError(
      AppErrorCodes.IDENTITY_UNUSABLE,
      `the token ${jwtFile}: ${(err as Error).message}`.replace(/: enrollment token: /, ": "),
      { cause: err },
    );
  let claims: { iss: string; sub: string } | undefined;
  if (jwtText !== undefined) {
    try {
      claims = parseEnrollmentJwt(jwtText).claims;
    } catch (err) {
      throw tokenProblem(err);
    }
  }

  if (existsSync(file)) {
    let identity;
    try {
      identity = await loadIdentity(file);
    } catch (err) {
      throw new OnboardError(
        AppErrorCodes.IDENTITY_UNUSABLE,
        `${(err as Error).message}. Remove ${file} to enroll again from a new token`,
        { cause: err },
      );
    }
    const controllers = [identity.ztAPI, ...(identity.ztAPIs ?? [])].map(originOf);
    const where = `controller ${controllers[0]}`;
    if (claims) {
      const issuer = originOf(claims.iss);
      if (!controllers.includes(issuer)) {
        throw new OnboardError(
          AppErrorCodes.IDENTITY_UNUSABLE,
          `${file} holds an identity of ${where}, but the token ${jwtFile} is from controller ${issuer}. ` +
            `To join ${issuer} too, give this command another --state-dir; to move to it, remove ${file} ` +
            `(its identity on ${controllers[0]} is then no longer used here)`,
        );
      }
      if (claims.sub !== identity.name) {
        throw new OnboardError(
          AppErrorCodes.IDENTITY_UNUSABLE,
          `${file} holds identity ${identity.name} of ${where}, but the token ${jwtFile} is for identity ` +
            `${claims.sub}. To run as ${claims.sub}, give this command another --state-dir, or remove ${file} ` +
            "and run it again",
        );
      }
    }
    const token =
      jwtFile === undefined
        ? ""
        : jwtUnreadable
          ? ` (${jwtUnreadable}: not needed, the identity is enrolled)`
          : `; the token ${jwtFile} is not needed any more`;
    return {
      file,
      enrolled: false,
      message:
        `using the identity enrolled earlier: ${file} (identity ${identity.name}, ${where}, ` +
        `key ${identityKeyPin(identity.certPem)})${token}`,
      warnings: [],
    };
  }

  if (jwtFile === undefined) {
    throw new OnboardError(
      AppErrorCodes.IDENTITY_UNUSABLE,
      `no identity in ${file} yet: give --jwt <token file> (the identity's one-time enrollment token, e.g. from ` +
        "`ziti edge create identity <name> -o <name>.jwt`) to enroll it",
    );
  }
  if (jwtText === undefined) {
    throw new OnboardError(
      AppErrorCodes.IDENTITY_UNUSABLE,
      `${jwtUnreadable}, and ${file} holds no identity yet: give the path of the identity's enrollment token`,
    );
  }
  const warnings = prepareDir(dirname(file), "the identity's directory");
  let identity;
  try {
    identity = await enroll({ jwt: jwtText });
  } catch (err) {
    throw tokenProblem(err);
  }
  try {
    await saveIdentity(file, identity);
  } catch (err) {
    throw new OnboardError(
      AppErrorCodes.STATE_DIR_UNUSABLE,
      `enrolled identity ${identity.name}, but ${(err as Error).message}; the token is used now: create a new ` +
        "enrollment for the identity (`ziti edge create enrollment ott <identity>`) and run again",
      { cause: err },
    );
  }
  return {
    file,
    enrolled: true,
    message:
      `enrolled identity id ${identity.name} of controller ${originOf(identity.ztAPI)} into ${file} (mode 0600), ` +
      `key ${identityKeyPin(identity.certPem)}; the token ${jwtFile} is used up and can be deleted`,
    warnings,
  };
}

/** One exporter given on the command line. */
export interface FlagTarget {
  service: string;
  /** scheme://host:port */
  upstream: string;
  paths: string[];
}

/**
 * The bind's targets from `--service S --upstream URL` pairs (in order). A URL's path, if any, is the one path the
 * target serves (`http://127.0.0.1:8080/actuator/prometheus`); without one it serves /metrics.
 */
export function targetsFromFlags(services: readonly string[], upstreams: readonly string[]): FlagTarget[] {
  if (services.length !== upstreams.length) {
    throw new UsageError(
      `--service and --upstream go in pairs, one --upstream for each --service (here ${services.length} ` +
        `--service and ${upstreams.length} --upstream)`,
    );
  }
  return services.map((service, i) => {
    const raw = upstreams[i]!;
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw new UsageError(`--upstream ${raw} (for --service ${service}) is not a URL: give http://host:port`);
    }
    if ((u.protocol !== "http:" && u.protocol !== "https:") || !u.hostname) {
      throw new UsageError(`--upstream ${raw} (for --service ${service}) is not an http(s) URL: give http://host:port`);
    }
    if (u.search || u.hash || u.username || u.password) {
      throw new UsageError(
        `--upstream ${raw} (for --service ${service}): give scheme://host:port and at most a path, ` +
          "without a query, fragment or credentials",
      );
    }
    const path = u.pathname === "/" || u.pathname === "" ? "/metrics" : u.pathname;
    return { service, upstream: u.origin, paths: [path] };
  });
}

/** --proxy-url: the central proxy's http(s) URL (scheme, host, port), as Prometheus's proxy_url takes it. */
export function proxyUrlFlag(v: string | undefined): string {
  if (v === undefined) return DEFAULT_PROXY_URL;
  let u: URL | undefined;
  try {
    u = new URL(v);
  } catch {
    u = undefined;
  }
  if (!u || (u.protocol !== "http:" && u.protocol !== "https:") || !u.hostname || u.pathname !== "/" || u.search) {
    throw new UsageError(`--proxy-url ${v} is not the proxy's address: give http://host:port (what proxy_url says)`);
  }
  return `${u.protocol}//${u.host}`;
}

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
 * The prometheus.yml jobs that scrape the bind's targets through the central scrapez proxy, for the operator to
 * paste (valid YAML, comments included; `promtool check config` accepts it as a whole file).
 */
export function bindSnippet(targets: readonly FlagTarget[], proxyUrl: string): string {
  const jobs = targets.map((t) => ({
    job_name: t.service,
    proxy_url: proxyUrl,
    ...(t.paths[0] !== "/metrics" ? { metrics_path: t.paths[0] } : {}),
    static_configs: [{ targets: [nameToHost(t.service)] }],
  }));
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
    const targets = this.#targets.map((t) => ({
      service: t.service,
      upstream: "",
      paths: [t.paths.find((p) => !p.endsWith("*")) ?? "/metrics"],
    }));
    this.#out(bindSnippet(targets, this.#proxyUrl));
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
            `http://${nameToHost(t.service)}${t.paths[0]!.replace(/\*$/, "")}\n`,
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
