/**
 * The proxy listener's `--web.config.file`: Prometheus exporter-toolkit's web configuration format, the one
 * node_exporter and Prometheus itself read (https://prometheus.io/docs/prometheus/latest/configuration/https/):
 *
 *   tls_server_config:   cert_file/key_file (or inline cert/key), client_auth_type, client_ca_file (or client_ca),
 *                        client_allowed_sans, min_version, max_version, cipher_suites, curve_preferences,
 *                        prefer_server_cipher_suites (checked and mapped to Node's TLS in ./web-config-tls.ts)
 *   http_server_config:  headers (the toolkit's five), http2
 *   basic_auth_users:    user: bcrypt hash (checked, with the toolkit's result cache, in ./bcrypt.ts)
 *
 * Re-read as the toolkit does: it parses the file on every request (users, headers) and again with the certificate
 * files on every TLS handshake. Here each request and each new connection stats the file and the files it names,
 * and parses them again only when one changed, so a scrape pays a few stat calls, not a YAML parse.
 *
 * What Node's TLS cannot do as Go's does is refused by name (an unknown cipher suite or curve, `rate_limit`); a
 * file that is invalid at start stops the proxy; one that becomes invalid while it runs fails every request (500)
 * and handshake until it is fixed, as in the toolkit: an edit meant to remove a user never leaves the old users in.
 */
import { readFileSync, statSync } from "node:fs";
import { dirname } from "node:path";
import YAML from "yaml";
import { z } from "zod";
import { ConfigError, invalidConfig } from "../common/config/errors.js";
import { tlsOf, TlsServerSchema, type WebTls } from "./web-config-tls.js";

/**
 * The response headers the toolkit lets a web config set, and the values it allows (undefined: any). Anything
 * else is refused, as there.
 */
export const ALLOWED_HEADERS: Readonly<Record<string, readonly string[] | undefined>> = {
  "Strict-Transport-Security": undefined,
  "X-Content-Type-Options": ["nosniff"],
  "X-Frame-Options": ["deny", "sameorigin"],
  "X-XSS-Protection": undefined,
  "Content-Security-Policy": undefined,
};

/** `$2a$`, `$2b$`, `$2y$` with a cost and 53 characters of salt and hash: what htpasswd -B and Go's bcrypt make. */
const BCRYPT = /^\$2[aby]?\$(\d\d)\$[./A-Za-z0-9]{53}$/;
/** The file's schema: the toolkit's fields and no others (it parses strictly too). */
export const WebConfigSchema = z
  .object({
    tls_server_config: TlsServerSchema.nullish(),
    http_server_config: z
      .object({ http2: z.boolean().optional(), headers: z.record(z.string(), z.string()).nullish() })
      .strict()
      .nullish(),
    basic_auth_users: z.record(z.string(), z.string()).nullish(),
    rate_limit: z.unknown().optional(),
  })
  .strict();

/** A parsed, checked web config, its files read. */
export interface WebConfig {
  /** The file it came from. */
  file: string;
  /** undefined: the listener serves plain HTTP (no cert_file/key_file, as in the toolkit). */
  tls?: WebTls;
  /** Response headers added to every answer. */
  headers: Readonly<Record<string, string>>;
  /** User name → bcrypt hash; empty: no basic auth. */
  users: ReadonlyMap<string, string>;
}
/** Parses and checks a web config (`raw`: its YAML), reading the TLS files it names. Throws a ConfigError. */
export function parseWebConfig(raw: unknown, file: string): WebConfig {
  const where = `web config ${file}`;
  const r = WebConfigSchema.safeParse(raw ?? {});
  if (!r.success) throw invalidConfig(where, r.error.issues);
  const c = r.data;
  const issues: string[] = [];
  if (c.rate_limit !== undefined) {
    issues.push("rate_limit: not supported by scrapez proxy (remove it; limit scrapers in front of the proxy)");
  }
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(c.http_server_config?.headers ?? {})) {
    const known = Object.keys(ALLOWED_HEADERS).find((h) => h.toLowerCase() === name.toLowerCase());
    if (!known) {
      issues.push(
        `http_server_config.headers.${name}: this header can not be configured (allowed: ${Object.keys(ALLOWED_HEADERS).join(", ")})`,
      );
      continue;
    }
    const allowed = ALLOWED_HEADERS[known];
    if (allowed && !allowed.includes(value)) {
      issues.push(`http_server_config.headers.${name}: expected one of ${allowed.join(", ")}, got "${value}"`);
      continue;
    }
    if (/[\r\n\0]/.test(value)) {
      issues.push(`http_server_config.headers.${name}: a header value cannot hold a line break`);
      continue;
    }
    headers[known] = value;
  }
  const users = new Map<string, string>();
  for (const [user, hash] of Object.entries(c.basic_auth_users ?? {})) {
    const m = BCRYPT.exec(hash);
    if (!m || Number(m[1]) < 4 || Number(m[1]) > 31) {
      issues.push(
        `basic_auth_users.${user}: not a bcrypt hash (expected $2y$<cost>$<53 characters>, e.g. from ` +
          "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
      );
      continue;
    }
    if (user.includes(":")) {
      issues.push(`basic_auth_users.${user}: a user name cannot contain ":" (Basic auth splits on it)`);
      continue;
    }
    users.set(user, hash);
  }
  let tlsConfig: WebTls | undefined;
  const t = c.tls_server_config;
  if (t && (t.cert_file || t.key_file || t.cert || t.key || t.client_ca_file || t.client_ca || t.client_auth_type)) {
    tlsConfig = tlsOf(t, dirname(file), issues);
  }
  if (issues.length) throw invalidConfig(where, issues);
  return { file, tls: tlsConfig, headers, users };
}
/** Reads and checks a web config file. Throws a ConfigError naming the file and the field. */
export function loadWebConfig(file: string): WebConfig {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read web config ${file}: ${(err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = YAML.parse(text);
  } catch (err) {
    throw new ConfigError(`web config ${file} is not valid YAML: ${(err as Error).message}`);
  }
  return parseWebConfig(raw, file);
}
type Stamp = string;
function stamp(file: string): Stamp {
  try {
    const s = statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
  } catch (err) {
    return `missing:${(err as NodeJS.ErrnoException).code ?? ""}`;
  }
}

/** What the web config is now: the parsed file, or why it cannot be used. */
export type WebConfigState =
  { ok: true; config: WebConfig; generation: number } | { ok: false; error: Error; generation: number };

/**
 * A web config file as it is now. `current()` stats the file and the TLS files it names and parses them again when
 * one changed (or is gone): what the toolkit does on each request and handshake, for the price of a few stat calls.
 * `check` runs on each newly parsed config (the proxy's own rules, e.g. TLS cannot be turned on or off while it
 * runs); what it throws makes the state invalid as a parse error does. `onChange` hears each new state.
 */
export class WebConfigFile {
  readonly file: string;
  #stamps: [string, Stamp][] = [];
  #state: WebConfigState;
  #generation = 0;
  readonly #check: (c: WebConfig) => void;
  readonly #onChange: (s: WebConfigState) => void;

  /** Throws the ConfigError of a file that is invalid now (at start, the proxy does not run with it). */
  constructor(
    file: string,
    check: (c: WebConfig) => void = () => undefined,
    onChange: (s: WebConfigState) => void = () => undefined,
  ) {
    this.file = file;
    this.#check = check;
    this.#onChange = onChange;
    this.#state = this.#load();
    if (!this.#state.ok) throw this.#state.error;
  }

  #load(): WebConfigState {
    const generation = ++this.#generation;
    const before = stamp(this.file);
    try {
      const config = loadWebConfig(this.file);
      this.#check(config);
      this.#stamps = [[this.file, before], ...(config.tls?.files ?? []).map((f): [string, Stamp] => [f, stamp(f)])];
      return { ok: true, config, generation };
    } catch (err) {
      this.#stamps = [[this.file, before]];
      return { ok: false, error: err as Error, generation };
    }
  }

  /**
   * The config now: parsed again if the file or a file it names changed since the last look (while it is invalid,
   * on every call, as the toolkit does, so a fix to any file it names is seen; `onChange` hears only a new outcome).
   */
  current(): WebConfigState {
    const before = this.#state;
    if (!before.ok || this.#stamps.some(([f, s]) => stamp(f) !== s)) {
      const next = this.#load();
      if (!before.ok && !next.ok && next.error.message === before.error.message) {
        this.#state = { ...next, generation: before.generation };
        return this.#state;
      }
      this.#state = next;
      this.#onChange(next);
    }
    return this.#state;
  }

  /** The config as last looked at (no stat). */
  get last(): WebConfigState {
    return this.#state;
  }
}
