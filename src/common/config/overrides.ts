/**
 * Command-line flags and `SCRAPEZ_*` environment variables that override fields of a bind or proxy config file,
 * Prometheus-style: a flag wins over the environment, the environment over the file (docs/configuration.md).
 *
 * Overrides are merged into the raw config before it is validated, so a bad value gets the same check and the same
 * message as in the file, with its source named: `logLevel (from --log-level): Invalid option ...`.
 * Relative paths resolve against the config file's directory wherever they were set (one rule for all three).
 */

/** One overridable field: its config key, its flag (without --) and its environment variable. */
export interface OverrideSpec {
  key: string;
  flag: string;
  env: string;
  /** `list`: a repeatable flag, or a comma-separated environment value. `number`: digits become a number. */
  kind: "string" | "number" | "list";
  help: string;
}

export const LOG_LEVEL: OverrideSpec = {
  key: "logLevel",
  flag: "log-level",
  env: "SCRAPEZ_LOG_LEVEL",
  kind: "string",
  help: "debug, info, warn or error",
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

export const BIND_OVERRIDES: readonly OverrideSpec[] = [
  {
    key: "identity",
    flag: "identity",
    env: "SCRAPEZ_IDENTITY",
    kind: "string",
    help: "the enrolled identity file",
  },
  LOG_LEVEL,
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
    flag: "listen",
    env: "SCRAPEZ_LISTEN",
    kind: "string",
    help: "host:port to listen on",
  },
  LOG_LEVEL,
  DRAIN_SECONDS,
  ZITI_AUTH,
  RENEW_CERT_BEFORE_DAYS,
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

function coerce(spec: OverrideSpec, v: string | string[]): unknown {
  if (spec.kind === "list") {
    const items = Array.isArray(v) ? v : v.split(",");
    return items.map((s) => s.trim()).filter((s) => s !== "");
  }
  const s = Array.isArray(v) ? v[v.length - 1]! : v;
  // Only plain decimals become numbers; anything else stays a string so the schema names it.
  if (spec.kind === "number" && /^\s*\d+(\.\d+)?\s*$/.test(s)) return Number(s);
  return s;
}

/** The overrides in force: for each field, the flag if given, else the variable if set and not empty. */
export function collectOverrides(
  specs: readonly OverrideSpec[],
  flags: FlagValues = {},
  env: NodeJS.ProcessEnv = process.env,
): Overrides {
  const out: Overrides = { values: {}, sources: {} };
  for (const spec of specs) {
    const f = flags[spec.flag];
    if (typeof f === "string" || (Array.isArray(f) && f.length > 0)) {
      out.values[spec.key] = coerce(spec, f);
      out.sources[spec.key] = `--${spec.flag}`;
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
      const flag = `--${s.flag} ${s.kind === "number" ? "N" : s.kind === "list" ? "F" : "V"}`;
      return `  ${flag.padEnd(20)} ${s.env.padEnd(22)} ${s.key}: ${s.help}\n`;
    })
    .join("");
}
