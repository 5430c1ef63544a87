/**
 * Enrollment from a one-time-token JWT, with our own code (no ziti CLI):
 *   1. parse the JWT; check method `ott`, expiry and issuer;
 *   2. fetch the issuer's TLS leaf certificate (unverified) and verify the JWT's signature with it;
 *   3. fetch the CA bundle (PKCS#7) over a connection pinned to that leaf;
 *   4. generate a key (EC P-256 by default, or RSA 2048) and a CSR; POST it to /enroll, trusting the bundle;
 *   5. return the identity (ztAPI, cert chain, key, CA bundle), ready to be saved with mode 0600.
 * The token is never logged nor put in error messages.
 */
import "reflect-metadata";
import { KeyObject, X509Certificate, createHash, webcrypto } from "node:crypto";
import tls from "node:tls";
import * as x509 from "@peculiar/x509";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { egressRoute, egressSocket, type EgressRoute } from "../transport/egress-proxy.js";
import { EgressAgent, httpsExchange, type ExchangeError } from "./https.js";
import { CLIENT_API_PATH, parseIdentity, type Identity } from "./identity.js";
import { errText, jwtError, parseEnrollmentJwt, verifyJwtSignature, type EnrollmentClaims } from "./jwt.js";

export { parseEnrollmentJwt, verifyJwtSignature, type EnrollmentClaims, type ParsedJwt } from "./jwt.js";

const log = debug("enroll");
const TIMEOUT_MS = 15_000;
const MAX_BODY_BYTES = 1024 * 1024;
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export interface EnrollOptions {
  /** The enrollment token (the content of the .jwt file). */
  jwt: string;
  /** Key to generate: EC P-256 (default) or RSA 2048. */
  keyType?: "EC" | "RSA";
  /** The egress proxy to the controller (as ContextOptions.egressProxy; unset: HTTPS_PROXY / NO_PROXY). */
  egressProxy?: string;
}

/** Checks the claims that can be checked offline; returns the issuer URL. */
function checkClaims(claims: EnrollmentClaims): URL {
  if (claims.em !== "ott") {
    throw new ZitiError(
      ErrorCodes.ENROLLMENT_FAILED,
      `enrollment method "${claims.em}" is not supported; only one-time tokens ("ott") are`,
    );
  }
  if (claims.exp !== undefined && claims.exp * 1000 <= Date.now()) {
    throw new ZitiError(
      ErrorCodes.ENROLLMENT_FAILED,
      `enrollment token expired at ${new Date(claims.exp * 1000).toISOString()}: create a new one ` +
        "(e.g. `ziti edge create enrollment ott <identity>`)",
    );
  }
  let iss: URL;
  try {
    iss = new URL(claims.iss);
  } catch (err) {
    throw jwtError(`the issuer "${claims.iss}" is not a URL`, err);
  }
  if (iss.protocol !== "https:") throw jwtError(`the issuer "${claims.iss}" is not an https:// URL`);
  return iss;
}

/** The TLS leaf certificate the server at `url` presents. Not verified here: the JWT signature vouches for it. */
async function fetchLeaf(url: URL, egress: EgressRoute): Promise<X509Certificate> {
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const port = Number(url.port || 443);
  const tunnel = await egressSocket(egress, host, port, TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      ...(tunnel ? { socket: tunnel } : { host, port }),
      rejectUnauthorized: false,
      ...(tlsIsIp(host) ? {} : { servername: host }),
    });
    s.setTimeout(TIMEOUT_MS, () => s.destroy(new Error(`no TLS handshake within ${TIMEOUT_MS} ms`)));
    s.once("secureConnect", () => {
      const cert = s.getPeerX509Certificate();
      s.destroy();
      if (!cert) reject(new Error("the server presented no certificate"));
      else resolve(cert);
    });
    s.once("error", reject);
  });
}

function tlsIsIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(":");
}

interface HttpResult {
  status: number;
  contentType: string;
  body: string;
}

/**
 * One HTTPS exchange on a fresh connection, bounded in time and size. With `pinned`, the server is not verified by
 * a CA but must present exactly that leaf certificate; otherwise it must verify with `ca`.
 */
async function httpsFetch(
  url: URL,
  opts: {
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    ca?: string;
    pinned?: X509Certificate;
    egress: EgressRoute;
  },
): Promise<HttpResult> {
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const pinned = opts.pinned;
  try {
    const r = await httpsExchange(url, {
      method: opts.method ?? "GET",
      ...(opts.headers ? { headers: opts.headers } : {}),
      body: opts.body,
      tls: {
        agent: new EgressAgent(opts.egress),
        ...(pinned ? { rejectUnauthorized: false } : { ca: opts.ca, rejectUnauthorized: true }),
        ...(tlsIsIp(host) ? {} : { servername: host }),
      },
      timeoutMs: TIMEOUT_MS,
      maxBodyBytes: MAX_BODY_BYTES,
      check: (res) => {
        if (!pinned) return undefined;
        const leaf = (res.socket as tls.TLSSocket).getPeerX509Certificate();
        return leaf && leaf.raw.equals(pinned.raw)
          ? undefined
          : new Error("the controller presented a different certificate than the one that signed the token");
      },
    });
    return { status: r.status, contentType: String(r.headers["content-type"] ?? ""), body: r.body.toString("utf8") };
  } catch (err) {
    throw (err as ExchangeError).cause;
  }
}

/** The controller's CA bundle (degenerate PKCS#7, base64), fetched over a connection pinned to `leaf`. */
async function fetchCaBundle(iss: URL, leaf: X509Certificate, egress: EgressRoute): Promise<x509.X509Certificate[]> {
  let res: HttpResult | undefined;
  let url: URL | undefined;
  for (const path of [`${CLIENT_API_PATH}/.well-known/est/cacerts`, "/.well-known/est/cacerts"]) {
    url = new URL(path, iss);
    res = await httpsFetch(url, { pinned: leaf, headers: { accept: "application/pkcs7-mime" }, egress });
    if (res.status !== 404) break;
  }
  if (!res || res.status !== 200) throw new Error(`GET ${url?.pathname} answered ${res?.status}`);
  const der = Buffer.from(res.body.replace(/\s+/g, ""), "base64");
  let certs: x509.X509Certificates;
  try {
    certs = new x509.X509Certificates(der);
  } catch (err) {
    throw new Error(`the CA bundle is not PKCS#7 (${errText(err)})`, { cause: err });
  }
  if (certs.length === 0) throw new Error("the controller's CA bundle is empty");
  return [...certs];
}

/** Parses the controller's error envelope; never includes the request URL (it carries the token). */
function apiError(res: HttpResult): { code: string; message: string; requestId: string } {
  try {
    const e = (JSON.parse(res.body) as { error?: Record<string, unknown> }).error ?? {};
    const cause = e.cause as { message?: string } | undefined;
    const message = [e.message, cause?.message].filter((x) => typeof x === "string" && x).join(": ");
    return {
      code: typeof e.code === "string" ? e.code : "",
      message: message || res.body.slice(0, 300),
      requestId: typeof e.requestId === "string" ? e.requestId : "",
    };
  } catch {
    return { code: "", message: res.body.replace(/\s+/g, " ").slice(0, 300), requestId: "" };
  }
}

/** Enrolls the identity named by a one-time-token JWT; returns it (not saved: see saveIdentity). */
export async function enroll(opts: EnrollOptions): Promise<Identity> {
  const jwt = parseEnrollmentJwt(opts.jwt);
  const { claims } = jwt;
  const iss = checkClaims(claims);
  const egress = egressRoute(opts.egressProxy);
  const fail = (msg: string, cause?: unknown) =>
    new ZitiError(ErrorCodes.ENROLLMENT_FAILED, `enrollment with ${iss.origin}: ${msg}`, cause ? { cause } : undefined);

  let leaf: X509Certificate;
  try {
    leaf = await fetchLeaf(iss, egress);
  } catch (err) {
    throw new ZitiError(
      ErrorCodes.CONTROLLER_UNREACHABLE,
      `cannot reach the controller at ${iss.origin} (the token's issuer): ${errText(err)}`,
      { cause: err },
    );
  }
  try {
    verifyJwtSignature(jwt, leaf.publicKey);
  } catch (err) {
    const kid = jwt.header.kid;
    const fp = createHash("sha1").update(leaf.raw).digest("hex");
    if (err instanceof ZitiError && typeof kid === "string" && kid.toLowerCase() !== fp) {
      err.message += ` (the token names signing certificate ${kid}; ${iss.origin} presents ${fp})`;
    }
    throw err;
  }
  log("token signature verified with %s", leaf.subject.replace(/\n/g, ", "));

  let cas: x509.X509Certificate[];
  try {
    cas = await fetchCaBundle(iss, leaf, egress);
  } catch (err) {
    throw fail(`cannot fetch the controller's CA bundle: ${errText(err)}`, err);
  }
  const caPem = cas.map((c) => c.toString("pem")).join("\n") + "\n";
  log("CA bundle: %d certificate(s)", cas.length);

  const alg =
    opts.keyType === "RSA"
      ? { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256", publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 }
      : { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
  const keys = (await webcrypto.subtle.generateKey(alg, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [claims.sub] }],
    keys,
    signingAlgorithm: alg,
  });
  const keyPem = KeyObject.from(keys.privateKey).export({ type: "pkcs8", format: "pem" }).toString();

  const url = new URL(`${CLIENT_API_PATH}/enroll?method=ott&token=${encodeURIComponent(claims.jti)}`, iss);
  let res: HttpResult;
  try {
    res = await httpsFetch(url, {
      method: "POST",
      ca: caPem,
      headers: { "content-type": "application/x-pem-file", accept: "application/json" },
      body: csr.toString("pem"),
      egress,
    });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    const why = /CERT|SELF_SIGNED|UNABLE_TO|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH|HOSTNAME_MISMATCH/.test(code)
      ? `the controller's certificate does not verify with the CA bundle it served (${code})`
      : errText(err);
    throw fail(`the enroll request failed: ${why}`, err);
  }
  if (res.status < 200 || res.status >= 300) {
    const e = apiError(res);
    const rid = e.requestId ? `, requestId ${e.requestId}` : "";
    if (e.code === "INVALID_ENROLLMENT_TOKEN" || res.status === 404) {
      throw fail(
        `the token was already used or is unknown to the controller (${e.code || res.status}${rid}): ` +
          "create a new enrollment for the identity (e.g. `ziti edge create enrollment ott <identity>`) " +
          "or a new identity",
      );
    }
    if (e.code === "ENROLLMENT_EXPIRED") {
      throw fail(`the token has expired (${e.code}${rid}): create a new enrollment for the identity`);
    }
    if (e.code === "COULD_NOT_PROCESS_CSR") {
      throw fail(`the controller could not process our certificate request: ${e.message}${rid}`);
    }
    throw fail(`the controller refused the enrollment: ${res.status} ${e.code} ${e.message}${rid}`.replace(/ +/g, " "));
  }
  let certPem: string | undefined;
  if (/json/i.test(res.contentType)) {
    try {
      const data = (JSON.parse(res.body) as { data?: { cert?: unknown } }).data;
      certPem = typeof data?.cert === "string" ? data.cert : undefined;
    } catch (err) {
      throw fail("the controller's answer is not JSON", err);
    }
  } else {
    certPem = res.body;
  }
  if (!certPem || !certPem.includes("-----BEGIN CERTIFICATE-----")) {
    throw fail("the controller's answer holds no certificate (data.cert)");
  }

  const ztAPI = `${claims.iss.replace(/\/+$/, "")}${CLIENT_API_PATH}`;
  try {
    const identity = await parseIdentity(
      {
        ztAPI,
        ztAPIs: null,
        configTypes: null,
        id: { key: `pem:${keyPem}`, cert: `pem:${certPem}`, ca: `pem:${caPem}` },
        enableHa: false,
      },
      process.cwd(),
      `enrolled for ${claims.sub}`,
    );
    log("enrolled %s", identity.name);
    return identity;
  } catch (err) {
    throw fail(`the certificate the controller issued is unusable: ${errText(err)}`, err);
  }
}
