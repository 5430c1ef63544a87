/**
 * Command-line flags and `SCRAPEZ_*` environment variables that override fields of a bind or proxy config file,
 * Prometheus-style: a flag wins over the environment, the environment over the file (docs/configuration.md).
 *
 * Overrides are merged into the raw config before it is validated, so a bad value gets the same check and the same
 * message as in the file, with its source named: `logLevel (from --log-level): Invalid option ...`.
 * Relative paths resolve against the config file's directory wherever they were set (one rule for all three).
 */

/**
 * One overridable field: its config key, its flag (without --) and its environment variable. `aliases` are other
 * names of the same flag: the earlier scrapez spellings (`--listen`, `--log-level`) beside the names Prometheus and
 * its exporters use (exporter-toolkit's `--web.listen-address`, `--log.level`; docs/configuration.md).
 */
export interface OverrideSpec {
  key: string;
  flag: string;
  aliases?: readonly string[];
  env: string;
  /**
   * `list`: a repeatable flag, or a comma-separated environment value. `number`: digits become a number.
   * `boolean`: a flag without a value (the variable: true or false).
   */
  kind: "string" | "number" | "list" | "boolean";
  help: string;
}

export const LOG_LEVEL: OverrideSpec = {
  key: "logLevel",
  flag: "log.level",
  aliases: ["log-level"],
  env: "SCRAPEZ_LOG_LEVEL",
  kind: "string",
  help: "debug, info, warn or error",
};

export const LOG_FORMAT: OverrideSpec = {
  key: "logFormat",
  flag: "log.format",
  aliases: ["log-format"],
  env: "SCRAPEZ_LOG_FORMAT",
  kind: "string",
  help: "json (one object a line) or logfmt",
};

export const DRAIN_SECONDS: OverrideSpec = {
  key: "drainSeconds",
  flag: "drain-seconds",
  env: "SCRAPEZ_DRAIN_SECONDS",
  kind: "number",
  help: "on SIGTERM/SIGINT, how long in-flight scrapes may take to finish (0-600)",
};

export const ZITI_AUTH: OverrideSpec = {
  key: "zitiAuth",
  flag: "ziti-auth",
  env: "SCRAPEZ_ZITI_AUTH",
  kind: "string",
  help: "auto (OIDC when the controller offers it), oidc or legacy",
};

export const RENEW_CERT_BEFORE_DAYS: OverrideSpec = {
  key: "renewCertBeforeDays",
  flag: "renew-cert-before-days",
  env: "SCRAPEZ_RENEW_CERT_BEFORE_DAYS",
  kind: "number",
  help: "renew the identity certificate this many days before it expires (0: never)",
};

export const EGRESS_PROXY: OverrideSpec = {
  key: "egressProxy",
  flag: "egress-proxy",
  env: "SCRAPEZ_EGRESS_PROXY",
  kind: "string",
  help: "http://[user:password@]host:port: the HTTP CONNECT proxy to the controller and routers, or direct (default: HTTPS_PROXY)",
};

export const BIND_OVERRIDES: readonly OverrideSpec[] = [
  {
    key: "identity",
    flag: "identity",
    env: "SCRAPEZ_IDENTITY",
    kind: "string",
    help: "the enrolled identity file",
  },
  LOG_LEVEL,
  LOG_FORMAT,
  {
    key: "statusFile",
    flag: "status-file",
    env: "SCRAPEZ_STATUS_FILE",
    kind: "string",
    help: "where the status file for `scrapez probe` is kept",
  },
  DRAIN_SECONDS,
  ZITI_AUTH,
  RENEW_CERT_BEFORE_DAYS,
  EGRESS_PROXY,
];

export const PROXY_OVERRIDES: readonly OverrideSpec[] = [
  {
    key: "identities",
    flag: "identity",
    env: "SCRAPEZ_IDENTITY",
    kind: "list",
    help: "identity file(s): the flag repeated, or comma-separated in the variable; replaces `identities`",
  },
  {
    key: "listen",
    flag: "web.listen-address",
    aliases: ["listen"],
    env: "SCRAPEZ_LISTEN",
    kind: "string",
    help: "host:port to listen on",
  },
  {
    key: "webConfigFile",
    flag: "web.config.file",
    env: "SCRAPEZ_WEB_CONFIG_FILE",
    kind: "string",
    help: "an exporter-toolkit web config (TLS, basic_auth_users, headers), re-read as the toolkit does",
  },
  {
    key: "enableLifecycle",
    flag: "web.enable-lifecycle",
    env: "SCRAPEZ_WEB_ENABLE_LIFECYCLE",
    kind: "boolean",
    help: "answer POST /-/reload (a reload, as SIGHUP)",
  },
  LOG_LEVEL,
  LOG_FORMAT,
  DRAIN_SECONDS,
  ZITI_AUTH,
  RENEW_CERT_BEFORE_DAYS,
  EGRESS_PROXY,
  {
    key: "workers",
    flag: "workers",
    env: "SCRAPEZ_WORKERS",
    kind: "number",
    help: "processes sharing the port, each with its own overlay contexts (default: CPUs, within the memory limit)",
  },
];

/** Flag values as node:util parseArgs returns them. */
export type FlagValues = Record<string, string | string[] | boolean | undefined>;

/** What was overridden and from where: `{ logLevel: "--log-level" }`. */
export type OverrideSources = Record<string, string>;

export interface Overrides {
  values: Record<string, unknown>;
  sources: OverrideSources;
}

export const NO_OVERRIDES: Overrides = { values: {}, sources: {} };

function coerce(spec: OverrideSpec, v: string | string[] | boolean): unknown {
  if (typeof v === "boolean") return v;
  if (spec.kind === "boolean" && typeof v === "string" && /^\s*(true|false)\s*$/i.test(v)) {
    return v.trim().toLowerCase() === "true";
  }
  if (spec.kind === "list") {
    const items = Array.isArray(v) ? v : v.split(",");
    return items.map((s) => s.trim()).filter((s) => s !== "");
  }
  const s = Array.isArray(v) ? v[v.length - 1]! : v;
  // Only plain decimals become numbers; anything else stays a string so the schema names it.
  if (spec.kind === "number" && /^\s*\d+(\.\d+)?\s*$/.test(s)) return Number(s);
  return s;
}

/** A flag given under two of its names (`--listen` and `--web.listen-address`): which one is meant is unclear. */
export class FlagConflictError extends Error {
  readonly code = "ERR_PARSE_ARGS_FLAG_CONFLICT";
  constructor(names: string[]) {
    super(`${names.map((n) => `--${n}`).join(" and ")} are the same flag: give it once`);
    this.name = "FlagConflictError";
  }
}

/** node:util parseArgs options for the overrides: each flag under its name and its aliases. */
export function overrideOptions(
  specs: readonly OverrideSpec[],
): Record<string, { type: "string" | "boolean"; multiple?: boolean }> {
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const s of specs) {
    for (const name of [s.flag, ...(s.aliases ?? [])]) {
      options[name] =
        s.kind === "boolean"
          ? { type: "boolean" }
          : { type: "string", ...(s.kind === "list" ? { multiple: true } : {}) };
    }
  }
  return options;
}

/**
 * The overrides in force: for each field, the flag if given (under any of its names; under two is a
 * FlagConflictError), else the variable if set and not empty.
 */
export function collectOverrides(
  specs: readonly OverrideSpec[],
  flags: FlagValues = {},
  env: NodeJS.ProcessEnv = process.env,
): Overrides {
  const out: Overrides = { values: {}, sources: {} };
  for (const spec of specs) {
    const given = [spec.flag, ...(spec.aliases ?? [])].filter((n) => {
      const f = flags[n];
      return typeof f === "string" || typeof f === "boolean" || (Array.isArray(f) && f.length > 0);
    });
    if (given.length > 1) throw new FlagConflictError(given);
    if (given.length === 1) {
      out.values[spec.key] = coerce(spec, flags[given[0]!]!);
      out.sources[spec.key] = `--${given[0]}`;
      continue;
    }
    const e = env[spec.env];
    if (e !== undefined && e !== "") {
      out.values[spec.key] = coerce(spec, e);
      out.sources[spec.key] = spec.env;
    }
  }
  return out;
}

/** The raw config with the overrides merged in (a non-object is returned as it is: the schema reports it). */
export function applyOverrides(raw: unknown, o: Overrides): unknown {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return raw;
  return { ...(raw as object), ...o.values };
}

/** `scrapez <cmd>` help lines for the overrides. */
export function overridesHelp(specs: readonly OverrideSpec[]): string {
  return specs
    .map((s) => {
      const arg = s.kind === "boolean" ? "" : s.kind === "number" ? " N" : s.kind === "list" ? " F" : " V";
      const flag = `--${s.flag}${arg}`;
      const aliases = s.aliases?.length ? ` (also ${s.aliases.map((a) => `--${a}`).join(", ")})` : "";
      return `  ${flag.padEnd(28)} ${s.env.padEnd(28)} ${s.key}: ${s.help}${aliases}\n`;
    })
    .join("");
}
