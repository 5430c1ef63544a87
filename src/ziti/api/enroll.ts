/**
 * Enrollment from a one-time-token JWT, with our own code (no ziti CLI):
 *   1. parse the JWT; check method `ott`, expiry and issuer;
 *   2. fetch the issuer's TLS leaf certificate and verify the JWT's signature with it;
 *   3. fetch the CA bundle (PKCS#7) over a connection pinned to that leaf;
 *   4. generate a key (EC P-256 by default, or RSA 2048) and a CSR; POST it to /enroll;
 *   5. return the identity (ztAPI, cert chain, key, CA bundle) ready to be saved with mode 0600.
 */
import "reflect-metadata";
import { X509Certificate, createPublicKey, verify as cryptoVerify, webcrypto, type KeyObject } from "node:crypto";
import https from "node:https";
import tls from "node:tls";
import * as x509 from "@peculiar/x509";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { parseIdentity, type Identity } from "./identity.js";

const log = debug("enroll");
const TIMEOUT_MS = 15_000;
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export interface EnrollmentClaims {
  em: string;
  iss: string;
  sub: string;
  jti: string;
  exp?: number;
}

export interface ParsedJwt {
  header: { alg: string; kid?: string; typ?: string };
  claims: EnrollmentClaims;
  signingInput: Buffer;
  signature: Buffer;
}

function jwtError(msg: string, cause?: unknown): ZitiError {
  return new ZitiError(ErrorCodes.JWT_INVALID, `enrollment token: ${msg}`, cause ? { cause } : undefined);
}

function b64urlJson(part: string, what: string): unknown {
  if (!/^[A-Za-z0-9_-]*$/.test(part)) throw jwtError(`${what} is not base64url`);
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch (err) {
    throw jwtError(`${what} is not JSON`, err);
  }
}

/** Parses an enrollment JWT without verifying it. Throws JWT_INVALID naming what is wrong. */
export function parseEnrollmentJwt(text: string): ParsedJwt {
  const parts = text.trim().split(".");
  if (parts.length !== 3) throw jwtError(`expected 3 dot-separated parts, found ${parts.length}; is this a .jwt file?`);
  const [h, p, s] = parts as [string, string, string];
  const header = b64urlJson(h, "header") as ParsedJwt["header"];
  const claims = b64urlJson(p, "payload") as Partial<EnrollmentClaims>;
  if (!header || typeof header.alg !== "string") throw jwtError("header has no alg");
  for (const k of ["em", "iss", "sub", "jti"] as const) {
    if (typeof claims[k] !== "string" || !claims[k]) throw jwtError(`payload has no "${k}" claim`);
  }
  if (!/^[A-Za-z0-9_-]+$/.test(s)) throw jwtError("signature is not base64url");
  return {
    header,
    claims: claims as EnrollmentClaims,
    signingInput: Buffer.from(`${h}.${p}`),
    signature: Buffer.from(s, "base64url"),
  };
}

/** Verifies the JWT signature (RS256/384/512, ES256/384/512) with the given public key. */
export function verifyJwtSignature(jwt: ParsedJwt, key: KeyObject): void {
  const m = /^(RS|ES|PS)(256|384|512)$/.exec(jwt.header.alg);
  if (!m) throw jwtError(`unsupported signature algorithm "${jwt.header.alg}"`);
  const hash = `sha${m[2]}`;
  const keyType = key.asymmetricKeyType;
  if ((m[1] === "ES") !== (keyType === "ec"))
    throw jwtError(`algorithm ${jwt.header.alg} does not match the issuer's ${keyType} key`);
  const opts =
    m[1] === "ES"
      ? { key, dsaEncoding: "ieee-p1363" as const }
      : m[1] === "PS"
        ? { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */ }
        : { key };
  let ok = false;
  try {
    ok = cryptoVerify(hash, jwt.signingInput, opts, jwt.signature);
  } catch (err) {
    throw jwtError(`signature check failed: ${(err as Error).message}`, err);
  }
  if (!ok)
    throw jwtError(
      "signature does not verify against the issuing controller's certificate (tampered or foreign token)",
    );
}

/** The TLS leaf certificate the server at `url` presents (not verified: it is pinned, then checked by the JWT). */
function fetchLeaf(url: URL): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      host: url.hostname,
      port: Number(url.port || 443),
      rejectUnauthorized: false,
      ...(/^[\d.:]+$/.test(url.hostname) ? {} : { servername: url.hostname }),
    });
    s.setTimeout(TIMEOUT_MS, () => s.destroy(new Error("timed out")));
    s.once("secureConnect", () => {
      const cert = s.getPeerX509Certificate();
      s.end();
      if (!cert) reject(new Error("no certificate presented"));
      else resolve(cert);
    });
    s.once("error", reject);
  });
}

interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function httpsRequest(url: URL, opts: https.RequestOptions, body?: string): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, { ...opts, timeout: TIMEOUT_MS }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
        if (text.length > 4 * 1024 * 1024) req.destroy(new Error("response too large"));
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on("timeout", () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
    req.on("error", reject);
    req.end(body);
  });
}

/** GET the CA bundle over a connection whose server leaf must equal `pinned`. */
async function fetchCaBundle(iss: URL, pinned: X509Certificate): Promise<string[]> {
  const url = new URL("/.well-known/est/cacerts", iss);
  const agent = new https.Agent({ rejectUnauthorized: false, maxCachedSessions: 0 });
  const res = await new Promise<HttpResult>((resolve, reject) => {
    const req = https.request(url, { agent, timeout: TIMEOUT_MS }, (r) => {
      const leaf = (r.socket as tls.TLSSocket).getPeerX509Certificate();
      if (!leaf || !leaf.raw.equals(pinned.raw)) {
        req.destroy(new Error("the controller presented a different certificate than the one that verified the token"));
        return;
      }
      let text = "";
      r.setEncoding("utf8");
      r.on("data", (d: string) => (text += d));
      r.on("end", () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body: text }));
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
    req.end();
  });
  agent.destroy();
  if (res.status !== 200) throw new Error(`GET ${url.pathname} answered ${res.status}`);
  const der = Buffer.from(res.body.replace(/\s+/g, ""), "base64");
  const certs = new x509.X509Certificates();
  certs.import(der);
  if (certs.length === 0) throw new Error("the controller's CA bundle is empty");
  return certs.map((c) => c.toString("pem"));
}

export interface EnrollOptions {
  jwt: string;
  keyType?: "EC" | "RSA";
}

export async function enroll(opts: EnrollOptions): Promise<Identity> {
  const jwt = parseEnrollmentJwt(opts.jwt);
  const { claims } = jwt;
  if (claims.em !== "ott") {
    throw new ZitiError(
      ErrorCodes.ENROLLMENT_FAILED,
      `enrollment method "${claims.em}" is not supported (only one-time tokens, "ott")`,
    );
  }
  if (claims.exp !== undefined && claims.exp * 1000 < Date.now()) {
    throw new ZitiError(
      ErrorCodes.ENROLLMENT_FAILED,
      `enrollment token expired at ${new Date(claims.exp * 1000).toISOString()}: ask for a new one (e.g. re-create the identity's enrollment)`,
    );
  }
  let iss: URL;
  try {
    iss = new URL(claims.iss);
  } catch (err) {
    throw jwtError(`issuer "${claims.iss}" is not a URL`, err);
  }
  if (iss.protocol !== "https:") throw jwtError(`issuer "${claims.iss}" is not an https URL`);
  const fail = (msg: string, cause?: unknown) =>
    new ZitiError(ErrorCodes.ENROLLMENT_FAILED, `enrollment with ${iss.origin}: ${msg}`, cause ? { cause } : undefined);

  let leaf: X509Certificate;
  try {
    leaf = await fetchLeaf(iss);
  } catch (err) {
    throw new ZitiError(
      ErrorCodes.CONTROLLER_UNREACHABLE,
      `cannot reach the controller at ${iss.origin}: ${(err as Error).message}`,
      {
        cause: err,
      },
    );
  }
  verifyJwtSignature(jwt, createPublicKey(leaf.publicKey.export({ type: "spki", format: "pem" })));
  log("token signature verified by %s", leaf.subject.replace(/\n/g, ","));

  let caPems: string[];
  try {
    caPems = await fetchCaBundle(iss, leaf);
  } catch (err) {
    throw fail(`cannot fetch the CA bundle: ${(err as Error).message}`, err);
  }
  const caPem = caPems.join("\n");

  const alg =
    opts.keyType === "RSA"
      ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256", publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 }
      : { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${claims.sub}`,
    keys,
    signingAlgorithm: alg,
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8
    .toString("base64")
    .replace(/(.{64})/g, "$1\n")
    .replace(/\n?$/, "\n")}-----END PRIVATE KEY-----\n`;

  const url = new URL(`/edge/client/v1/enroll?method=ott&token=${encodeURIComponent(claims.jti)}`, iss);
  let res: HttpResult;
  try {
    res = await httpsRequest(
      url,
      { method: "POST", ca: caPem, headers: { "content-type": "application/x-pem-file", accept: "application/json" } },
      csr.toString("pem"),
    );
  } catch (err) {
    throw fail(`the enroll request failed: ${(err as Error).message}`, err);
  }
  if (res.status < 200 || res.status >= 300) {
    let code = "";
    let message = res.body.slice(0, 300);
    try {
      const e = JSON.parse(res.body) as { error?: { code?: string; message?: string } };
      code = e.error?.code ?? "";
      message = e.error?.message ?? message;
    } catch {
      /* not JSON: keep the text */
    }
    if (code === "INVALID_ENROLLMENT_TOKEN" || res.status === 404) {
      throw fail(
        `the token was already used or is unknown (${code || res.status}): create a new enrollment for this identity`,
      );
    }
    if (code === "ENROLLMENT_EXPIRED") throw fail("the token has expired: create a new enrollment for this identity");
    throw fail(`the controller refused: ${res.status} ${code} ${message}`);
  }
  let certPem: string | undefined;
  if (/json/.test(String(res.headers["content-type"]))) {
    try {
      certPem = (JSON.parse(res.body) as { data?: { cert?: string } }).data?.cert;
    } catch (err) {
      throw fail("the controller's answer is not JSON", err);
    }
  } else certPem = res.body;
  if (!certPem || !certPem.includes("BEGIN CERTIFICATE")) throw fail("the controller returned no certificate");

  const ztAPI = new URL("/edge/client/v1", iss).toString();
  return parseIdentity(
    { ztAPI, id: { cert: `pem:${certPem}`, key: `pem:${keyPem}`, ca: `pem:${caPem}` } },
    process.cwd(),
    `enrolled for ${claims.sub}`,
  );
}
