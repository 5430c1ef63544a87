/**
 * `scrapez bind` configuration, parsed from unknown YAML with a strict schema: unknown keys are errors and every
 * message names the field path.
 */
import { z } from "zod";
import { ConfigError, invalidConfig, type LoadOptions } from "../common/config/errors.js";
import { EgressProxyField, egressEnvProblem } from "../common/config/egress.js";
import { pathResolver, readConfigFile } from "../common/config/load.js";
import { LOG_FORMATS, LOG_LEVELS } from "../common/log.js";
import { applyOverrides, BIND_OVERRIDES, collectOverrides, type FlagValues } from "../common/config/overrides.js";
import { normalizePath } from "./paths.js";

const httpUrl = z.string().superRefine((v, ctx) => {
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    ctx.addIssue({ code: "custom", message: "not an http(s) URL" });
    return;
  }
  if ((u.protocol !== "http:" && u.protocol !== "https:") || u.hostname === "") {
    ctx.addIssue({ code: "custom", message: "not an http(s) URL" });
  } else if (u.pathname !== "/" || u.search || u.hash) {
    ctx.addIssue({
      code: "custom",
      message: "give only scheme://host:port; the scraped path comes from the request and is checked against `paths`",
    });
  }
});

const PIN = /^sha256:[A-Za-z0-9_-]{43}$/;

/**
 * A caller allow-list: identity names, and for each the pin of its key (printed by `scrapez identity key`). Only
 * verified callers are admitted: by a caller proof whose key matches a pin, or by name when a v2.0+ router asserts
 * the dialer's identity. A name without a pin cannot be verified on v1.x routers (see unpinnedCallers).
 */
const Allow = z
  .object({
    identities: z.array(z.string().min(1)).min(1),
    keys: z
      .record(
        z.string(),
        z.string().regex(PIN, {
          error: "not a key pin: expected sha256:<43 base64url characters>, as `scrapez identity key` prints it",
        }),
      )
      .optional(),
  })
  .strict()
  .superRefine((a, ctx) => {
    const byPin = new Map<string, string>();
    for (const [name, pin] of Object.entries(a.keys ?? {})) {
      if (!a.identities.includes(name)) {
        ctx.addIssue({
          code: "custom",
          path: ["keys", name],
          message: `"${name}" is not in allow.identities: add it there or remove its key`,
        });
      }
      const other = byPin.get(pin);
      if (other !== undefined) {
        ctx.addIssue({ code: "custom", path: ["keys", name], message: `same key as "${other}": one key, one name` });
      }
      byPin.set(pin, name);
    }
  });

export type BindAllow = z.infer<typeof Allow>;

const path = z
  .string()
  .regex(/^\/[^\s?#]*\*?$/, "a path starts with / (a trailing * matches a prefix)")
  .superRefine((v, ctx) => {
    if (!/^\/[^\s?#]*\*?$/.test(v)) return;
    const base = v.endsWith("*") ? v.slice(0, -1) : v;
    const n = normalizePath(base);
    if ("reason" in n) ctx.addIssue({ code: "custom", message: n.reason });
    else if (n.path !== base) ctx.addIssue({ code: "custom", message: `write it in normal form: ${n.path}` });
  });

/** maxTimeoutSeconds when not set: 60, or timeoutSeconds if that is larger (so older configs stay valid). */
function maxTimeoutOf(t: { maxTimeoutSeconds?: number | undefined; timeoutSeconds: number }): number {
  return t.maxTimeoutSeconds ?? Math.max(60, t.timeoutSeconds);
}

const Target = z
  .object({
    service: z.string().min(1, "required"),
    upstream: httpUrl,
    paths: z.array(path).min(1).default(["/metrics"]),
    allow: Allow.optional(),
    bindUsingEdgeIdentity: z.boolean().default(true),
    cost: z.number().int().min(0).max(65535).optional(),
    precedence: z.enum(["default", "required", "failed"]).optional(),
    timeoutSeconds: z.number().positive().max(600).default(10),
    /** Cap on the scraper's X-Prometheus-Scrape-Timeout-Seconds (default: 60, or timeoutSeconds if larger). */
    maxTimeoutSeconds: z.number().positive().max(600).optional(),
    /** An overlay connection must deliver a complete request head within this (from open, or first byte). */
    headersTimeoutSeconds: z.number().positive().max(600).default(10),
    /** A kept-alive overlay connection with no request in flight is closed after this. */
    idleTimeoutSeconds: z.number().positive().max(3600).default(300),
    /** A whole exchange (request head to last response byte) (default: maxTimeoutSeconds + 30). */
    requestTimeoutSeconds: z.number().positive().max(3600).optional(),
    /** Concurrent overlay connections to this service; more are closed at once. */
    maxConnections: z.number().int().min(1).max(65535).default(64),
    /** Pipe raw bytes to the upstream (TLS end to end from the scraper, e.g. `scheme: https` via CONNECT). */
    passthrough: z.boolean().default(false),
    tls: z
      .object({
        ca: z.string().optional(),
        cert: z.string().optional(),
        key: z.string().optional(),
        insecureSkipVerify: z.boolean().default(false),
      })
      .strict()
      .optional(),
  })
  .strict();

/**
 * bind.yaml's fields, before the cross-field checks below: the Helm chart's values schema reuses them
 * (scripts/chart/values-schema.ts), so the chart's `config` and this file cannot drift.
 */
export const BindConfigFields = z
  .object({
    identity: z.string().min(1, "required: the path of an enrolled identity file"),
    logLevel: z.enum(LOG_LEVELS).default("info"),
    /** The log's line format: json (one object a line) or logfmt (`--log.format`). */
    logFormat: z.enum(LOG_FORMATS).default("json"),
    statusFile: z.string().optional(),
    /** How the identity authenticates to the controller: auto (OIDC when offered), oidc or legacy. */
    zitiAuth: z.enum(["auto", "oidc", "legacy"]).default("auto"),
    /** Renew the identity's certificate this many days before it expires (default: a third of its lifetime; 0: never). */
    renewCertBeforeDays: z.number().nonnegative().optional(),
    /** The HTTP proxy to the controller and routers (CONNECT), or direct; unset: HTTPS_PROXY / NO_PROXY. */
    egressProxy: EgressProxyField,
    /** On SIGTERM/SIGINT: how long in-flight scrapes may take to finish before the process closes them. */
    drainSeconds: z.number().min(0).max(600).default(10),
    targets: z.array(Target).min(1, "at least one target is required"),
    self: z
      .object({
        service: z.string().min(1),
        allow: Allow.optional(),
      })
      .strict()
      .optional(),
  })
  .strict();

const BindConfigSchema = BindConfigFields.superRefine((c, ctx) => {
  const seen = new Map<string, number>();
  c.targets.forEach((t, i) => {
    const prev = seen.get(t.service);
    if (prev !== undefined) {
      ctx.addIssue({
        code: "custom",
        path: ["targets", i, "service"],
        message: `duplicate service "${t.service}" (also targets[${prev}])`,
      });
    }
    seen.set(t.service, i);
    if (t.upstream.startsWith("http:") && t.tls) {
      ctx.addIssue({ code: "custom", path: ["targets", i, "tls"], message: "tls is only for https upstreams" });
    }
    if (t.passthrough && t.tls) {
      ctx.addIssue({
        code: "custom",
        path: ["targets", i, "tls"],
        message: "passthrough targets carry the scraper's own TLS; drop tls",
      });
    }
    if (t.passthrough && (t.paths.length !== 1 || t.paths[0] !== "/metrics")) {
      ctx.addIssue({
        code: "custom",
        path: ["targets", i, "paths"],
        message: "paths cannot be checked on an encrypted passthrough target",
      });
    }
    if (t.maxTimeoutSeconds !== undefined && t.maxTimeoutSeconds < t.timeoutSeconds) {
      ctx.addIssue({
        code: "custom",
        path: ["targets", i, "maxTimeoutSeconds"],
        message: `must be at least timeoutSeconds (${t.timeoutSeconds})`,
      });
    }
    const maxTimeout = maxTimeoutOf(t);
    if (t.requestTimeoutSeconds !== undefined && t.requestTimeoutSeconds <= maxTimeout) {
      ctx.addIssue({
        code: "custom",
        path: ["targets", i, "requestTimeoutSeconds"],
        message: `must be longer than maxTimeoutSeconds (${maxTimeout}), or a 504 could never reach the scraper`,
      });
    }
    if (t.tls && (t.tls.cert === undefined) !== (t.tls.key === undefined)) {
      ctx.addIssue({ code: "custom", path: ["targets", i, "tls"], message: "cert and key go together" });
    }
  });
  if (c.self && seen.has(c.self.service)) {
    ctx.addIssue({
      code: "custom",
      path: ["self", "service"],
      message: `"${c.self.service}" is also a target's service`,
    });
  }
});

type ParsedConfig = z.infer<typeof BindConfigSchema>;
type ParsedTarget = ParsedConfig["targets"][number];
/** A target with its derived defaults filled in. */
export type BindTarget = ParsedTarget & { maxTimeoutSeconds: number; requestTimeoutSeconds: number };
export type BindConfig = Omit<ParsedConfig, "targets"> & { targets: BindTarget[] };

/** The derived defaults: maxTimeoutSeconds 60 (or timeoutSeconds if larger), requestTimeoutSeconds max + 30. */
function withDefaults(t: ParsedTarget): BindTarget {
  const maxTimeoutSeconds = maxTimeoutOf(t);
  return { ...t, maxTimeoutSeconds, requestTimeoutSeconds: t.requestTimeoutSeconds ?? maxTimeoutSeconds + 30 };
}

export { ConfigError };

/**
 * Validates a parsed config. `where` names the source in messages; relative file paths resolve against `baseDir`.
 * `SCRAPEZ_*` variables in `env` and command-line `flags` override fields (src/common/config/overrides.ts).
 */
export function parseBindConfig(
  raw: unknown,
  where = "config",
  baseDir = process.cwd(),
  env = process.env,
  flags: FlagValues = {},
  opts: LoadOptions = {},
): BindConfig {
  const checkFiles = opts.checkFiles ?? true;
  const o = collectOverrides(BIND_OVERRIDES, flags, env);
  const invalid = (issues: Parameters<typeof invalidConfig>[1]) => invalidConfig(where, issues, o.sources);
  const r = BindConfigSchema.safeParse(applyOverrides(raw, o));
  if (!r.success) throw invalid(r.error.issues);
  const envProxy = r.data.egressProxy === undefined ? egressEnvProblem(env) : undefined;
  if (envProxy) throw invalid([envProxy]);
  const c: BindConfig = { ...r.data, targets: r.data.targets.map(withDefaults) };
  const { abs, file } = pathResolver(baseDir, checkFiles, (issue) => {
    throw invalid([issue]);
  });
  c.identity = file("identity", c.identity, "enroll one with `scrapez enroll`");
  c.targets.forEach((t, i) => {
    for (const k of ["ca", "cert", "key"] as const) {
      const v = t.tls?.[k];
      if (v !== undefined) t.tls![k] = file(`targets[${i}].tls.${k}`, v);
    }
  });
  if (c.statusFile) c.statusFile = abs(c.statusFile);
  return c;
}

export function loadBindConfig(
  file: string,
  env = process.env,
  flags: FlagValues = {},
  opts: LoadOptions = {},
): BindConfig {
  const { raw, baseDir } = readConfigFile(file);
  return parseBindConfig(raw, file, baseDir, env, flags, opts);
}

/**
 * Allow-listed names without a pinned key: on OpenZiti v1.x routers such a caller cannot be verified and is
 * refused (only v2.0+ routers assert the dialer's name). For a warning at start.
 */
export function unpinnedCallers(c: BindConfig): { service: string; identity: string }[] {
  const out: { service: string; identity: string }[] = [];
  const add = (service: string, allow: BindAllow | undefined) => {
    for (const identity of allow?.identities ?? []) if (!allow?.keys?.[identity]) out.push({ service, identity });
  };
  for (const t of c.targets) add(t.service, t.allow);
  if (c.self) add(c.self.service, c.self.allow);
  return out;
}

/**
 * The warning for an unpinned caller (`scrapez check` and the bind's start and reloads print it): what happens on
 * each router version, and the fix.
 */
export function unpinnedWarning(u: { service: string; identity: string }): string {
  return (
    `service "${u.service}" allows "${u.identity}" by name only (no pin in allow.keys): OpenZiti v1.x routers do ` +
    "not assert the dialer's identity, so there this caller cannot be verified and every scrape from it is refused " +
    `(403). Fix: pin its key: \`scrapez identity key --identity <${u.identity}'s identity file>\` prints the line ` +
    "for allow.keys. (OpenZiti v2.0+ routers assert the dialer's identity, so a name-only entry works there: its " +
    "audit lines say verified_by: router)"
  );
}

/** Whether a normalized request path is allowed by a target's `paths` (see ./paths.ts). */
export { pathAllowed } from "./paths.js";
