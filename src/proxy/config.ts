/** `scrapez proxy` configuration: strict schema from unknown YAML; errors name the field path. */
import { isIP } from "node:net";
import { z } from "zod";
import { invalidConfig, type LoadOptions } from "../common/config/errors.js";
import { EgressProxyField, egressEnvProblem } from "../common/config/egress.js";
import { pathResolver, readConfigFile } from "../common/config/load.js";
import { LOG_FORMATS, LOG_LEVELS } from "../common/log.js";
import { applyOverrides, collectOverrides, PROXY_OVERRIDES, type FlagValues } from "../common/config/overrides.js";

export const DEFAULT_PORT = 9480;
/** A proxy on its default listen address: what `scrapez status` asks and `scrapez onboard` prints when not told. */
export const DEFAULT_PROXY_URL = `http://127.0.0.1:${DEFAULT_PORT}`;
/**
 * Keep-alive pools kept at once. It must exceed the targets one proxy scrapes, or scrapes evict each other's pools
 * and each one dials anew: with 1,024 (the old default) 2,000 targets made 133 dials a second, which swamped a
 * local controller and failed three scrapes in four (bench/scale.ts). Pools exist only for listed services and
 * replicas, so a larger bound costs nothing until the overlay is that big (about 40 KB per idle pool).
 */
export const DEFAULT_MAX_POOLS = 8192;

const selector = z
  .string()
  .min(1)
  .refine((v) => v !== "#", "expected a name glob (node-*) or #attribute");

/** proxy.yaml's schema; the Helm chart's values schema reuses it (scripts/chart/values-schema.ts). */
export const ProxyConfigSchema = z
  .object({
    identities: z.array(z.string().min(1)).min(1, "at least one identity file is required"),
    listen: z
      .string()
      .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, "expected host:port, e.g. 127.0.0.1:9480")
      .default(`127.0.0.1:${DEFAULT_PORT}`),
    logLevel: z.enum(LOG_LEVELS).default("info"),
    /** The log's line format: json (one object a line) or logfmt (`--log.format`). */
    logFormat: z.enum(LOG_FORMATS).default("json"),
    /**
     * An exporter-toolkit web config for the listener (`--web.config.file`): tls_server_config, basic_auth_users
     * (bcrypt), http_server_config.headers; re-read as the toolkit does (src/proxy/web-config.ts).
     */
    webConfigFile: z.string().min(1).optional(),
    /** Answer `POST /-/reload` (`--web.enable-lifecycle`), as Prometheus does: what SIGHUP does. */
    enableLifecycle: z.boolean().default(false),
    /** How the identities authenticate to the controller: auto (OIDC when offered), oidc or legacy. */
    zitiAuth: z.enum(["auto", "oidc", "legacy"]).default("auto"),
    /** Renew identity certificates this many days before they expire (default: a third of the lifetime; 0: never). */
    renewCertBeforeDays: z.number().nonnegative().optional(),
    /** The HTTP proxy to the controller and routers (CONNECT), or direct; unset: HTTPS_PROXY / NO_PROXY. */
    egressProxy: EgressProxyField,
    /** On SIGTERM/SIGINT: how long in-flight scrapes and tunnels may take to finish before they are closed. */
    drainSeconds: z.number().min(0).max(600).default(10),
    /**
     * Processes sharing the listening port, each with its own overlay contexts (docs/proxy.md, Workers). Unset: the
     * number of CPUs (os.availableParallelism()); 1: one process, no cluster.
     */
    workers: z.number().int().min(1).max(64).optional(),
    auth: z
      .object({
        bearerTokenFile: z.string().optional(),
        basic: z
          .object({ username: z.string().min(1), passwordFile: z.string() })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
    tls: z.object({ cert: z.string(), key: z.string(), clientCA: z.string().optional() }).strict().optional(),
    insecureAllowUnauthenticated: z.boolean().default(false),
    /**
     * Host names (port ignored, case-insensitive) accepted on origin-form requests (/sd, /scrape/..., /metrics)
     * besides localhost, IP literals and the listen host: the DNS-rebinding guard. Not checked when auth is set.
     */
    allowedHosts: z
      .array(
        z
          .string()
          .min(1)
          .max(253)
          .regex(/^[A-Za-z0-9._-]+$/, "expected a host name without port or scheme, e.g. scrapez-proxy.monitoring"),
      )
      .default([]),
    discovery: z
      .object({
        /** Offer only services matching one of these: a name glob (`node-*`) or `#attribute` (a role attribute). */
        include: z.array(selector).min(1).optional(),
        /** Then drop services matching one of these (same forms). */
        exclude: z.array(selector).optional(),
        /** Re-list services this often (they are also re-listed at once on the overlay's servicesChanged). */
        refreshSeconds: z.number().min(1).max(3600).default(30),
        /** Dial each target /sd lists ahead of its first scrape, paced by the controller (default true; warmup.ts). */
        warmUp: z.boolean().optional(),
      })
      .strict()
      .default({ refreshSeconds: 30 }),
    timeouts: z
      .object({
        dialSeconds: z.number().positive().max(300).default(10),
        defaultScrapeSeconds: z.number().positive().max(600).default(10),
      })
      .strict()
      .default({ dialSeconds: 10, defaultScrapeSeconds: 10 }),
    agent: z
      .object({
        maxSocketsPerService: z.number().int().min(1).max(1024).default(4),
        keepAliveSeconds: z.number().positive().default(60),
        /** Keep-alive pools (one per service or replica) kept at once; the least recently used idle one goes. */
        maxPools: z.number().int().min(1).max(100_000).default(DEFAULT_MAX_POOLS),
      })
      .strict()
      .default({ maxSocketsPerService: 4, keepAliveSeconds: 60, maxPools: DEFAULT_MAX_POOLS }),
    tunnels: z
      .object({
        /** CONNECT tunnels open (or being dialed) at once; over it, 503. */
        maxConcurrent: z.number().int().min(1).max(100_000).default(256),
        /** Close a tunnel when no byte moved either way for this long. */
        idleSeconds: z.number().positive().max(86_400).default(300),
      })
      .strict()
      .default({ maxConcurrent: 256, idleSeconds: 300 }),
  })
  .strict();

export type ProxyConfig = z.infer<typeof ProxyConfigSchema> & { listenHost: string; listenPort: number };

/**
 * Whether the proxy config itself authenticates every client (bearer, basic or verified client certificates): the
 * rule for a listener off loopback, here at load and in web-listener.ts with the web config's own users and TLS.
 */
export function configAuthenticates(c: Pick<ProxyConfig, "auth" | "tls">): boolean {
  return !!(c.auth?.bearerTokenFile || c.auth?.basic || c.tls?.clientCA);
}

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || (isIP(h) === 4 && h.startsWith("127."));
}

/**
 * Validates a parsed config. `where` names the source in messages; relative file paths resolve against `baseDir`.
 * `SCRAPEZ_*` variables in `env` and command-line `flags` override fields (src/common/config/overrides.ts); `env`
 * defaults to none here (the CLI passes process.env), so a parse in a test does not depend on its environment.
 */
export function parseProxyConfig(
  raw: unknown,
  where = "config",
  baseDir = process.cwd(),
  env: NodeJS.ProcessEnv = {},
  flags: FlagValues = {},
  opts: LoadOptions = {},
): ProxyConfig {
  const checkFiles = opts.checkFiles ?? true;
  const o = collectOverrides(PROXY_OVERRIDES, flags, env);
  const r = ProxyConfigSchema.safeParse(applyOverrides(raw, o));
  const bad = (issues: Parameters<typeof invalidConfig>[1]) => invalidConfig(where, issues, o.sources);
  if (!r.success) throw bad(r.error.issues);
  const c = r.data;
  const envProxy = c.egressProxy === undefined ? egressEnvProblem(env) : undefined;
  if (envProxy) throw bad([envProxy]);
  const { file: mustExist } = pathResolver(baseDir, checkFiles, (issue) => {
    throw bad([issue]);
  });
  c.identities = c.identities.map((p, i) => mustExist(`identities[${i}]`, p));
  if (c.auth?.bearerTokenFile) c.auth.bearerTokenFile = mustExist("auth.bearerTokenFile", c.auth.bearerTokenFile);
  if (c.auth?.basic) c.auth.basic.passwordFile = mustExist("auth.basic.passwordFile", c.auth.basic.passwordFile);
  if (c.tls) {
    c.tls.cert = mustExist("tls.cert", c.tls.cert);
    c.tls.key = mustExist("tls.key", c.tls.key);
    if (c.tls.clientCA) c.tls.clientCA = mustExist("tls.clientCA", c.tls.clientCA);
  }
  const i = c.listen.lastIndexOf(":");
  const listenHost = c.listen.slice(0, i).replace(/^\[|\]$/g, "");
  const listenPort = Number(c.listen.slice(i + 1));
  if (listenPort > 65535) throw bad(["listen: port must be 0-65535"]);
  if (c.webConfigFile) c.webConfigFile = mustExist("webConfigFile", c.webConfigFile);
  const authenticated = configAuthenticates(c);
  // With a web config, its users or required client certificates may be the auth: the proxy checks it with the
  // file read (src/proxy/server.ts), and again each time the file changes.
  if (!isLoopback(listenHost) && !authenticated && !c.insecureAllowUnauthenticated && !c.webConfigFile) {
    throw bad([
      `listen: ${c.listen} is not a loopback address, so auth is required: set auth.bearerTokenFile, auth.basic, ` +
        "tls.clientCA or a webConfigFile with basic_auth_users (or insecureAllowUnauthenticated: true to waive it knowingly)",
    ]);
  }
  return { ...c, listenHost, listenPort };
}

export function loadProxyConfig(
  file: string,
  env = process.env,
  flags: FlagValues = {},
  opts: LoadOptions = {},
): ProxyConfig {
  const { raw, baseDir } = readConfigFile(file);
  return parseProxyConfig(raw, file, baseDir, env, flags, opts);
}
