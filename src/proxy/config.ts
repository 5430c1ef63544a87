/** `scrapez proxy` configuration: strict schema from unknown YAML; errors name the field path. */
import { existsSync, readFileSync } from "node:fs";
import { isIP } from "node:net";
import { dirname, isAbsolute, resolve } from "node:path";
import YAML from "yaml";
import { z } from "zod";
import { ConfigError, invalidConfig, type LoadOptions } from "../config/errors.js";

export const DEFAULT_PORT = 9480;

const selector = z
  .string()
  .min(1)
  .refine((v) => v !== "#", "expected a name glob (node-*) or #attribute");

const ProxyConfigSchema = z
  .object({
    identities: z.array(z.string().min(1)).min(1, "at least one identity file is required"),
    listen: z
      .string()
      .regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, "expected host:port, e.g. 127.0.0.1:9480")
      .default(`127.0.0.1:${DEFAULT_PORT}`),
    logLevel: z.enum(["debug", "info", "warn", "error"]).default("info"),
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
    discovery: z
      .object({
        /** Offer only services matching one of these: a name glob (`node-*`) or `#attribute` (a role attribute). */
        include: z.array(selector).min(1).optional(),
        /** Then drop services matching one of these (same forms). */
        exclude: z.array(selector).optional(),
        /** Re-list services this often (they are also re-listed at once on the overlay's servicesChanged). */
        refreshSeconds: z.number().min(1).max(3600).default(30),
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
      })
      .strict()
      .default({ maxSocketsPerService: 4, keepAliveSeconds: 60 }),
  })
  .strict();

export type ProxyConfig = z.infer<typeof ProxyConfigSchema> & { listenHost: string; listenPort: number };

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "");
  return h === "localhost" || h === "::1" || (isIP(h) === 4 && h.startsWith("127."));
}

export function parseProxyConfig(
  raw: unknown,
  where = "config",
  baseDir = process.cwd(),
  opts: LoadOptions = {},
): ProxyConfig {
  const checkFiles = opts.checkFiles ?? true;
  const r = ProxyConfigSchema.safeParse(raw);
  const bad = (lines: string[]) => invalidConfig(where, lines);
  if (!r.success) throw invalidConfig(where, r.error.issues);
  const c = r.data;
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  const mustExist = (field: string, p: string) => {
    const full = abs(p);
    if (checkFiles && !existsSync(full)) throw bad([`${field}: file ${full} does not exist`]);
    return full;
  };
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
  const authenticated = !!(c.auth?.bearerTokenFile || c.auth?.basic || c.tls?.clientCA);
  if (!isLoopback(listenHost) && !authenticated && !c.insecureAllowUnauthenticated) {
    throw bad([
      `listen: ${c.listen} is not a loopback address, so auth is required: set auth.bearerTokenFile, auth.basic or ` +
        "tls.clientCA (or insecureAllowUnauthenticated: true to waive it knowingly)",
    ]);
  }
  return { ...c, listenHost, listenPort };
}

export function loadProxyConfig(file: string, opts: LoadOptions = {}): ProxyConfig {
  let raw: unknown;
  try {
    raw = YAML.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ConfigError(`cannot read config ${file}: ${(err as Error).message}`);
  }
  return parseProxyConfig(raw, file, dirname(resolve(file)), opts);
}
