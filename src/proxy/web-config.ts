/**
 * The proxy listener's `--web.config.file`: Prometheus exporter-toolkit's web configuration format, the one
 * node_exporter and Prometheus itself read (https://prometheus.io/docs/prometheus/latest/configuration/https/):
 *
 *   tls_server_config:   cert_file/key_file (or inline cert/key), client_auth_type, client_ca_file (or client_ca),
 *                        client_allowed_sans, min_version, max_version, cipher_suites, curve_preferences,
 *                        prefer_server_cipher_suites
 *   http_server_config:  headers (the toolkit's five), http2
 *   basic_auth_users:    user: bcrypt hash
 *
 * Re-read as the toolkit does: it parses the file on every request (users, headers) and again with the certificate
 * files on every TLS handshake. Here each request and each new connection stats the file and the files it names,
 * and parses them again only when one changed, so a scrape pays a few stat calls, not a YAML parse. bcrypt results
 * are cached as the toolkit caches them (user, hash and password together, 100 entries, random eviction), so only
 * the first request with a given password pays for bcrypt. That runs in a worker thread, never on the event loop
 * (bcryptjs is pure JavaScript, and its async form only slices the work on the main thread), with at most 64
 * comparisons waiting: a request beyond that is refused (401), not queued.
 *
 * What Node's TLS cannot do as Go's does is refused by name (an unknown cipher suite or curve, `rate_limit`); a
 * file that is invalid at start stops the proxy; one that becomes invalid while it runs fails every request (500)
 * and handshake until it is fixed, as in the toolkit: an edit meant to remove a user never leaves the old users in.
 */
import { createHash, X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, isAbsolute, resolve } from "node:path";
import { createSecureContext, type SecureContextOptions } from "node:tls";
import { Worker } from "node:worker_threads";
import YAML from "yaml";
import { z } from "zod";
import { ConfigError, invalidConfig } from "../common/config/errors.js";
import type { Logger } from "../common/log.js";

/** exporter-toolkit's client_auth_type values (Go's tls.ClientAuthType names). */
export const CLIENT_AUTH_TYPES = [
  "NoClientCert",
  "RequestClientCert",
  "RequireAnyClientCert",
  "VerifyClientCertIfGiven",
  "RequireAndVerifyClientCert",
] as const;
export type ClientAuthType = (typeof CLIENT_AUTH_TYPES)[number];

const TLS_VERSIONS = { TLS10: "TLSv1", TLS11: "TLSv1.1", TLS12: "TLSv1.2", TLS13: "TLSv1.3" } as const;

/**
 * Go's cipher suite names (what the toolkit's cipher_suites takes) and OpenSSL's for the same suite. Go applies
 * the list to TLS 1.2 and below only; so does this (TLS 1.3 suites are accepted and, as in Go, not configurable).
 * Go's insecure suites that Node's OpenSSL no longer offers (RC4, 3DES) are not here and are refused by name.
 */
export const CIPHER_SUITES: Readonly<Record<string, string>> = {
  TLS_RSA_WITH_AES_128_CBC_SHA: "AES128-SHA",
  TLS_RSA_WITH_AES_256_CBC_SHA: "AES256-SHA",
  TLS_RSA_WITH_AES_128_CBC_SHA256: "AES128-SHA256",
  TLS_RSA_WITH_AES_128_GCM_SHA256: "AES128-GCM-SHA256",
  TLS_RSA_WITH_AES_256_GCM_SHA384: "AES256-GCM-SHA384",
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA: "ECDHE-ECDSA-AES128-SHA",
  TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA: "ECDHE-ECDSA-AES256-SHA",
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA: "ECDHE-RSA-AES128-SHA",
  TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA: "ECDHE-RSA-AES256-SHA",
  TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256: "ECDHE-ECDSA-AES128-SHA256",
  TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256: "ECDHE-RSA-AES128-SHA256",
  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: "ECDHE-RSA-AES128-GCM-SHA256",
  TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: "ECDHE-ECDSA-AES128-GCM-SHA256",
  TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: "ECDHE-RSA-AES256-GCM-SHA384",
  TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: "ECDHE-ECDSA-AES256-GCM-SHA384",
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-RSA-CHACHA20-POLY1305",
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: "ECDHE-ECDSA-CHACHA20-POLY1305",
  TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305: "ECDHE-RSA-CHACHA20-POLY1305",
  TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305: "ECDHE-ECDSA-CHACHA20-POLY1305",
};
const TLS13_SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];

/** Go's curve names and OpenSSL's. */
export const CURVES: Readonly<Record<string, string>> = {
  CurveP256: "P-256",
  CurveP384: "P-384",
  CurveP521: "P-521",
  X25519: "X25519",
};

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

const str = z.string();
const TlsServerSchema = z
  .object({
    cert_file: str.optional(),
    key_file: str.optional(),
    cert: str.optional(),
    key: str.optional(),
    client_auth_type: z.enum(["", ...CLIENT_AUTH_TYPES]).optional(),
    client_ca_file: str.optional(),
    client_ca: str.optional(),
    client_allowed_sans: z.array(str.min(1)).nullish(),
    min_version: z.enum(Object.keys(TLS_VERSIONS) as [keyof typeof TLS_VERSIONS]).optional(),
    max_version: z.enum(Object.keys(TLS_VERSIONS) as [keyof typeof TLS_VERSIONS]).optional(),
    cipher_suites: z.array(str).nullish(),
    curve_preferences: z.array(str).nullish(),
    prefer_server_cipher_suites: z.boolean().optional(),
  })
  .strict();

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

export interface WebTls {
  /** For tls.createSecureContext / Server.setSecureContext. */
  secure: SecureContextOptions;
  clientAuth: ClientAuthType;
  /** The TLSSocket settings the client auth type maps to (the handshake asks for / verifies a certificate). */
  requestCert: boolean;
  rejectUnauthorized: boolean;
  /** A client certificate must carry one of these SANs (DNS, e-mail, IP or URI), as exporter-toolkit checks it. */
  allowedSans?: readonly string[];
  /** The files read (to notice a change). */
  files: readonly string[];
}

/** Whether this client auth type makes the handshake verify a client certificate against client_ca_file. */
export function verifiesClients(t: ClientAuthType): boolean {
  return t === "RequireAndVerifyClientCert" || t === "VerifyClientCertIfGiven";
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

function tlsOf(t: z.infer<typeof TlsServerSchema>, dir: string, issues: string[]): WebTls | undefined {
  const at = (p: string) => (isAbsolute(p) ? p : resolve(dir, p));
  const files: string[] = [];
  const read = (field: string, p: string): Buffer | undefined => {
    const f = at(p);
    files.push(f);
    try {
      return readFileSync(f);
    } catch (err) {
      issues.push(
        `tls_server_config.${field}: cannot read ${f}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
      return undefined;
    }
  };
  const pick = (inline: string | undefined, fileField: string, path: string | undefined, name: string) => {
    if (inline && path) issues.push(`tls_server_config: give ${name} or ${fileField}, not both`);
    if (inline) return Buffer.from(inline);
    if (path) return read(fileField, path);
    return undefined;
  };
  const cert = pick(t.cert, "cert_file", t.cert_file, "cert");
  const key = pick(t.key, "key_file", t.key_file, "key");
  const ca = pick(t.client_ca, "client_ca_file", t.client_ca_file, "client_ca");
  if (!t.cert && !t.cert_file)
    issues.push("tls_server_config.cert_file: missing (TLS needs a certificate and its key)");
  if (!t.key && !t.key_file) issues.push("tls_server_config.key_file: missing (TLS needs a certificate and its key)");
  const clientAuth: ClientAuthType = t.client_auth_type || "NoClientCert";
  if ((t.client_ca_file || t.client_ca) && clientAuth === "NoClientCert") {
    issues.push(
      "tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert: set client_auth_type " +
        "(RequireAndVerifyClientCert to require a certificate it signed)",
    );
  }
  if (verifiesClients(clientAuth) && !t.client_ca_file && !t.client_ca) {
    issues.push(
      `tls_server_config.client_ca_file: missing: client_auth_type ${clientAuth} verifies client certificates ` +
        "against it (scrapez does not fall back to the system's public CAs)",
    );
  }
  const sans = t.client_allowed_sans ?? undefined;
  if (sans?.length && !verifiesClients(clientAuth)) {
    issues.push(
      `tls_server_config.client_allowed_sans: needs a verified client certificate: set client_auth_type to ` +
        `RequireAndVerifyClientCert (or VerifyClientCertIfGiven), not ${clientAuth}`,
    );
  }
  const tls12: string[] = [];
  (t.cipher_suites ?? []).forEach((name, i) => {
    if (TLS13_SUITES.includes(name)) return; // as in Go: TLS 1.3 suites are not configurable
    const openssl = CIPHER_SUITES[name];
    if (openssl) tls12.push(openssl);
    else {
      issues.push(
        `tls_server_config.cipher_suites[${i}]: ${name} is not a cipher suite Node's TLS offers (use Go's names, ` +
          `e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256; docs/configuration.md lists them)`,
      );
    }
  });
  const curves: string[] = [];
  (t.curve_preferences ?? []).forEach((name, i) => {
    const openssl = CURVES[name];
    if (openssl) curves.push(openssl);
    else
      issues.push(
        `tls_server_config.curve_preferences[${i}]: ${name} is not supported (use ${Object.keys(CURVES).join(", ")})`,
      );
  });
  const min = TLS_VERSIONS[t.min_version ?? "TLS12"];
  const max = t.max_version ? TLS_VERSIONS[t.max_version] : undefined;
  if (max && max < min) issues.push(`tls_server_config.max_version: ${t.max_version} is below min_version`);
  if (!cert || !key || issues.length) return undefined;
  const secure: SecureContextOptions = {
    cert,
    key,
    ...(ca ? { ca } : {}),
    minVersion: min,
    maxVersion: max ?? "TLSv1.3",
    // Only TLS 1.2 suites listed: TLS 1.3 keeps its defaults, as in Go (Node would otherwise turn TLS 1.3 off).
    ...(tls12.length ? { ciphers: [...TLS13_SUITES, ...tls12].join(":") } : {}),
    ...(curves.length ? { ecdhCurve: curves.join(":") } : {}),
    ...(t.prefer_server_cipher_suites ? { honorCipherOrder: true } : {}),
  };
  try {
    new X509Certificate(cert);
  } catch (err) {
    issues.push(`tls_server_config.cert_file: not a PEM certificate: ${(err as Error).message}`);
    return undefined;
  }
  try {
    createSecureContext(secure); // a key that does not match its certificate, a bad CA, a cipher list OpenSSL refuses
  } catch (err) {
    issues.push(`tls_server_config: cannot use the certificate, key, client CA or ciphers: ${(err as Error).message}`);
    return undefined;
  }
  return {
    secure,
    clientAuth,
    requestCert: clientAuth !== "NoClientCert",
    rejectUnauthorized: clientAuth === "RequireAndVerifyClientCert",
    ...(sans?.length ? { allowedSans: sans } : {}),
    files,
  };
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

/**
 * A client certificate's SANs as exporter-toolkit compares them: DNS names, e-mail addresses, IP addresses and URIs.
 * `subjectaltname` is Node's `DNS:a, IP Address:1.2.3.4, URI:spiffe://x, email:m@x` string.
 */
export function certSans(subjectaltname: string | undefined): string[] {
  if (!subjectaltname) return [];
  const out: string[] = [];
  // Values may be quoted ("DNS:\"a,b\"") when they hold a comma; split outside quotes.
  for (const m of subjectaltname.matchAll(/([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)(?:,\s*|$)/g)) {
    const kind = m[1]!.trim();
    let v = m[2]!;
    if (v.startsWith('"')) v = JSON.parse(v) as string;
    if (["DNS", "IP Address", "URI", "email"].includes(kind)) out.push(v);
  }
  return out;
}

/** Whether a client certificate's SANs include one of `allowed` (exact match, as exporter-toolkit). */
export function sansAllowed(subjectaltname: string | undefined, allowed: readonly string[]): boolean {
  return certSans(subjectaltname).some((s) => allowed.includes(s));
}

/** A fixed hash checked for an unknown user, so timing does not tell which users exist (as the toolkit does). */
const UNKNOWN_USER_HASH = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
const CACHE_SIZE = 100;
/** bcrypt comparisons waiting for the worker, at most; a request that would be one more is refused (401). */
export const BCRYPT_MAX_PENDING = 64;
/** At most one warning per this long about requests refused because the queue was full. */
const REFUSED_WARN_MS = 10_000;

/**
 * The worker's code. bcryptjs is pure JavaScript: its "async" form runs in ~100 ms slices scheduled with
 * process.nextTick, so on the main thread one cost-10 comparison holds the event loop for tens of milliseconds.
 * In a worker thread it holds only the worker. The code is evaluated (CommonJS) rather than loaded from a file, so
 * the same thing runs from dist/ and from the TypeScript sources (the tests); bcryptjs is required by the path
 * this module resolves.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const bcrypt = require(workerData.bcrypt);
parentPort.on("message", (m) => {
  let same = false, error;
  try { same = bcrypt.compareSync(m.password, m.hash); } catch (err) { error = String((err && err.message) || err); }
  parentPort.postMessage({ id: m.id, same, error });
});
`;

/**
 * One worker thread that runs bcrypt comparisons one after another: started on the first comparison, unref'd (it
 * never keeps the process alive, even with comparisons pending: those belong to requests whose sockets do), and
 * started again on the next comparison after it dies (the comparisons it was running fail).
 */
export class BcryptWorker {
  #worker: Worker | undefined;
  readonly #waiting = new Map<number, (r: boolean | Error) => void>();
  #next = 0;
  /** Threads started: 1, plus one per restart after a death. */
  started = 0;

  /** Comparisons sent and not yet answered. */
  get pending(): number {
    return this.#waiting.size;
  }

  compare(password: string, hash: string): Promise<boolean> {
    const w = this.#worker ?? this.#start();
    const id = this.#next++;
    return new Promise<boolean>((resolve, reject) => {
      this.#waiting.set(id, (r) => (r instanceof Error ? reject(r) : resolve(r)));
      w.postMessage({ id, password, hash });
    });
  }

  /** Stops the thread (its comparisons fail); the next comparison starts a new one. */
  async terminate(): Promise<void> {
    const w = this.#worker;
    if (w) await w.terminate();
  }

  #start(): Worker {
    const w = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { bcrypt: createRequire(import.meta.url).resolve("bcryptjs") },
    });
    this.started++;
    this.#worker = w;
    w.on("message", (m: { id: number; same: boolean; error?: string }) => {
      const done = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      done?.(m.error !== undefined ? new Error(`bcrypt: ${m.error}`) : m.same);
    });
    const dead = (err: Error) => {
      if (this.#worker !== w) return;
      this.#worker = undefined;
      const all = [...this.#waiting.values()];
      this.#waiting.clear();
      for (const done of all) done(err);
    };
    w.on("error", dead);
    w.on("exit", (code) => dead(new Error(`bcrypt worker exited (code ${code})`)));
    // After the listeners: adding a 'message' listener refs the worker again.
    w.unref();
    return w;
  }
}

/** The process's bcrypt worker: one is enough (a comparison is CPU, and the proxy has one event loop to protect). */
let shared: BcryptWorker | undefined;
function sharedWorker(): BcryptWorker {
  return (shared ??= new BcryptWorker());
}

export interface BcryptCacheOptions {
  /** Where the comparisons run (default: the process's one worker thread). */
  worker?: BcryptWorker;
  /** Comparisons waiting at most (default BCRYPT_MAX_PENDING); one more is refused, not queued. */
  maxPending?: number;
  /** Warned (at most every 10 s, with counts; never a user or password) when requests are refused. */
  log?: Pick<Logger, "warn">;
}

/**
 * bcrypt results by (user, hash, password), as exporter-toolkit caches them: 100 entries, a random one evicted.
 * The key is a SHA-256 of the three, so no password is kept in memory as it was sent. bcrypt itself never runs on
 * the event loop: a comparison the cache cannot answer goes to a worker thread (BcryptWorker), and when
 * `maxPending` are already waiting for it the check is refused (false, not cached) instead of queued.
 */
export class BcryptCache {
  readonly #entries = new Map<string, boolean>();
  readonly #pending = new Map<string, Promise<boolean>>();
  readonly #worker: BcryptWorker | undefined;
  readonly #maxPending: number;
  readonly #log: Pick<Logger, "warn"> | undefined;
  #lastWarn = -Infinity;
  #refusedSinceWarn = 0;
  /** bcrypt comparisons actually run (not answered from the cache). */
  computed = 0;
  /** Checks refused because `maxPending` comparisons were already waiting, or because the worker failed. */
  refused = 0;

  constructor(options: BcryptCacheOptions = {}) {
    this.#worker = options.worker;
    this.#maxPending = options.maxPending ?? BCRYPT_MAX_PENDING;
    this.#log = options.log;
  }

  static key(user: string, hash: string, password: string): string {
    return createHash("sha256").update(`${user}\0${hash}\0${password}`).digest("hex");
  }

  get(key: string): boolean | undefined {
    return this.#entries.get(key);
  }

  set(key: string, ok: boolean): void {
    if (!this.#entries.has(key) && this.#entries.size >= CACHE_SIZE) {
      const drop = [...this.#entries.keys()][Math.floor(Math.random() * this.#entries.size)]!;
      this.#entries.delete(drop);
    }
    this.#entries.set(key, ok);
  }

  /** Comparisons waiting for the worker now. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Whether `password` is `user`'s in `users`: from the cache, else bcrypt in the worker thread (fills the cache).
   * Requests with the same credentials at once share one comparison. An unknown user costs one comparison against a
   * fixed hash, as a known one does. False, and nothing cached, when the queue is full or the worker failed.
   */
  check(users: ReadonlyMap<string, string>, user: string, password: string): Promise<boolean> {
    const hash = users.get(user);
    const key = BcryptCache.key(user, hash ?? UNKNOWN_USER_HASH, password);
    const cached = this.get(key);
    if (cached !== undefined) return Promise.resolve(cached);
    let p = this.#pending.get(key);
    if (p) return p;
    if (this.#pending.size >= this.#maxPending) {
      this.#refuse("queue full");
      return Promise.resolve(false);
    }
    this.computed++;
    p = (this.#worker ?? sharedWorker())
      .compare(password, hash ?? UNKNOWN_USER_HASH)
      .then(
        (same) => {
          const ok = same && hash !== undefined;
          this.set(key, ok);
          return ok;
        },
        (err: unknown) => {
          this.#refuse(err instanceof Error ? err.message : String(err));
          return false;
        },
      )
      .finally(() => this.#pending.delete(key));
    this.#pending.set(key, p);
    return p;
  }

  /** The cache's answer for these credentials, if it holds one. */
  cached(users: ReadonlyMap<string, string>, user: string, password: string): boolean | undefined {
    return this.get(BcryptCache.key(user, users.get(user) ?? UNKNOWN_USER_HASH, password));
  }

  /** Whether the cache already holds the answer for these credentials. */
  has(users: ReadonlyMap<string, string>, user: string, password: string): boolean {
    return this.cached(users, user, password) !== undefined;
  }

  #refuse(reason: string): void {
    this.refused++;
    this.#refusedSinceWarn++;
    const now = performance.now();
    if (!this.#log || now - this.#lastWarn < REFUSED_WARN_MS) return;
    this.#log.warn("web config basic_auth_users: requests refused (401) without a bcrypt check", {
      reason,
      refused: this.#refusedSinceWarn,
      maxPending: this.#maxPending,
    });
    this.#lastWarn = now;
    this.#refusedSinceWarn = 0;
  }
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
