/**
 * The TLS part of the proxy listener's `--web.config.file` (the format is ./web-config.ts): exporter-toolkit's
 * tls_server_config checked and turned into Node's TLS server options, Go's names for client auth types, versions,
 * cipher suites and curves mapped to OpenSSL's, and client_allowed_sans as the toolkit checks them.
 *
 * What Node's TLS cannot do as Go's does is refused by name (an unknown cipher suite or curve).
 */
import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { createSecureContext, type SecureContextOptions } from "node:tls";
import { z } from "zod";

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
const str = z.string();
/** tls_server_config: the toolkit's fields and no others. */
export const TlsServerSchema = z
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
/**
 * The Node TLS server options of a tls_server_config (`dir`: where relative file names start), reading the files
 * it names. Each problem is pushed onto `issues` (field first); undefined when there is one.
 */
export function tlsOf(t: z.infer<typeof TlsServerSchema>, dir: string, issues: string[]): WebTls | undefined {
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
