/**
 * One command from an enrollment token to a scraped exporter: `scrapez bind --jwt node.jwt --service node --upstream
 * http://127.0.0.1:9100` and `scrapez proxy --jwt proxy.jwt`. This module holds what both share: the state
 * directory (where the enrolled identity is kept), enrolling once and reusing the identity afterwards, the bind's
 * targets from flags. What is printed for the operator (the prometheus.yml lines, the `ziti` commands that let the
 * identity bind or dial) is in ./onboard-report.ts. Docs: docs/bind.md#one-command-onboarding,
 * docs/proxy.md#one-command-onboarding.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { AppErrorCodes, ScrapezError } from "../common/errors.js";
import { UsageError } from "./registry.js";
import { DEFAULT_PROXY_URL } from "../proxy/config.js";

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

/** What ensureIdentity takes from its caller's config and situation. */
export interface EnsureOptions {
  /** The config's egressProxy: enrollment reaches the controller the way the context will (unset: HTTPS_PROXY). */
  egressProxy?: string | undefined;
  /**
   * What else the operator can do when the identity's directory cannot be used (prepareDir's advice after "or"):
   * the default, another --state-dir, is refused beside --config, so a caller with a config file says what is not.
   */
  otherDir?: string | undefined;
  /**
   * How this command is pointed at another identity file, in the advice of an identity that does not match the
   * token ("To join <controller> too, <elsewhere>; ..."). Default: give this command another --state-dir.
   */
  elsewhere?: string | undefined;
}

/**
 * ensureIdentity's advice for the command line given: where the identity file came from decides how the operator
 * points the command at another one. --identity (or SCRAPEZ_IDENTITY) wins over the config file's `identity`
 * (`identities` for the proxy), which wins over the state directory; --state-dir is refused beside --config, so it
 * is advised only without one.
 */
export function identityAdvice(
  command: "bind" | "proxy",
  configFile: string | undefined,
  flags: Readonly<Record<string, unknown>>,
  env: NodeJS.ProcessEnv = process.env,
): Pick<EnsureOptions, "otherDir" | "elsewhere"> {
  const flag = flags.identity;
  if (typeof flag === "string" ? flag !== "" : Array.isArray(flag) && flag.length > 0) {
    return { otherDir: "give another --identity", elsewhere: "give this command another --identity" };
  }
  if (env.SCRAPEZ_IDENTITY) {
    return { otherDir: "set SCRAPEZ_IDENTITY to another file", elsewhere: "set SCRAPEZ_IDENTITY to another file" };
  }
  if (configFile) {
    const key = command === "bind" ? "identity" : "identities";
    return {
      otherDir: `change \`${key}\` in ${configFile} (or give --identity)`,
      elsewhere: `point \`${key}\` in ${configFile} at another file (or give --identity)`,
    };
  }
  return {};
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
export async function ensureIdentity(
  file: string,
  jwtFile: string | undefined,
  opts: EnsureOptions = {},
): Promise<EnsuredIdentity> {
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
    const elsewhere = opts.elsewhere ?? "give this command another --state-dir";
    const where = `controller ${controllers[0]}`;
    if (claims) {
      const issuer = originOf(claims.iss);
      if (!controllers.includes(issuer)) {
        throw new OnboardError(
          AppErrorCodes.IDENTITY_UNUSABLE,
          `${file} holds an identity of ${where}, but the token ${jwtFile} is from controller ${issuer}. ` +
            `To join ${issuer} too, ${elsewhere}; to move to it, remove ${file} ` +
            `(its identity on ${controllers[0]} is then no longer used here)`,
        );
      }
      if (claims.sub !== identity.name) {
        throw new OnboardError(
          AppErrorCodes.IDENTITY_UNUSABLE,
          `${file} holds identity ${identity.name} of ${where}, but the token ${jwtFile} is for identity ` +
            `${claims.sub}. To run as ${claims.sub}, ${elsewhere}, or remove ${file} ` +
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
  const warnings = prepareDir(dirname(file), "the identity's directory", opts.otherDir);
  let identity;
  try {
    identity = await enroll({
      jwt: jwtText,
      ...(opts.egressProxy !== undefined ? { egressProxy: opts.egressProxy } : {}),
    });
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
