/**
 * A caller proof: how a dialer proves which key it holds to the hosting side, over OpenZiti v1.x routers that
 * relay only the dialer's self-declared CallerId.
 *
 * The dialer puts in its AppData (relayed untouched by the routers) its identity certificate and a signature, by
 * its identity key, over a domain-separated message naming the service and this connection's ephemeral
 * end-to-end key-exchange public key:
 *
 *   {"scrapez":{"v":1,"cert":"<base64 DER leaf>","sig":"<base64 signature>"}}
 *   signed message = "scrapez caller proof v1\0" + service + "\0" + kxPublicKey (32 bytes)
 *
 * The host checks the certificate against the overlay's CA bundle, the signature against the certificate's key
 * and the kx key the router relayed, and reports the key's pin `sha256:<base64url SHA-256 of the SPKI DER>`.
 * Replaying a captured proof is useless: it names the original dialer's kx key, and the end-to-end session keys
 * need that key's private half. So proofs exist only on services that require encryption (the OpenZiti default).
 *
 * A certificate's subject proves nothing (the controller signs whatever subject a CSR carries): the proof is bound
 * to a KEY, and the host maps pinned keys to names it trusts. Pure: no I/O.
 */
import { X509Certificate, createHash, createPrivateKey, sign, verify, type KeyObject } from "node:crypto";

/** The AppData key under which the proof travels; its presence also marks the dialer as scrapez. */
export const PROOF_KEY = "scrapez";
export const PROOF_VERSION = 1;
/** Largest AppData we parse (a proof is ~1-3 KiB: one certificate and one signature). */
export const MAX_PROOF_BYTES = 16 * 1024;
const DOMAIN = Buffer.from("scrapez caller proof v1\0");
const KX_KEY_BYTES = 32;
const PIN_RE = /^sha256:[A-Za-z0-9_-]{43}$/;
const B64_RE = /^[A-Za-z0-9+/]+={0,2}$/;

/** What a dialer needs to sign: its identity's certificate (PEM, leaf first) and private key (PEM). */
export interface ProofSigner {
  certPem: string;
  keyPem: string;
}

export type ProofResult = { ok: true; spkiSha256: string; cert: X509Certificate } | { ok: false; reason: string };

/** The message a proof signs. */
export function proofMessage(service: string, kxPublicKey: Uint8Array): Buffer {
  return Buffer.concat([DOMAIN, Buffer.from(service, "utf8"), Buffer.from([0]), Buffer.from(kxPublicKey)]);
}

/** `sha256:<base64url>` of a public key's SPKI DER: what `allow.keys` pins. */
export function keyPin(key: KeyObject): string {
  const der = key.export({ type: "spki", format: "der" });
  return `sha256:${createHash("sha256").update(der).digest("base64url")}`;
}

/** Whether `v` looks like a pin (`sha256:` and 43 base64url characters). */
export function isKeyPin(v: string): boolean {
  return PIN_RE.test(v);
}

/** The pin of the identity certificate's key (the leaf: the first CERTIFICATE block of `certPem`). */
export function identityKeyPin(certPem: string): string {
  return keyPin(leafCert(certPem).publicKey);
}

function leafCert(certPem: string): X509Certificate {
  const m = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(certPem);
  if (!m) throw new Error("no PEM certificate in the identity's cert");
  return new X509Certificate(m[0]);
}

/** Hash for a key type: none for EdDSA (it hashes itself), SHA-256 otherwise (EC P-256/P-384, RSA PKCS#1 v1.5). */
function digestFor(key: KeyObject): string | null {
  return key.asymmetricKeyType === "ed25519" || key.asymmetricKeyType === "ed448" ? null : "sha256";
}

/**
 * Makes proofs for one identity; parses its certificate and key once. `make()` returns the object to put under
 * `scrapez` in AppData.
 */
export class CallerProver {
  readonly #certB64: string;
  readonly #key: KeyObject;
  readonly pin: string;

  constructor(identity: ProofSigner) {
    const leaf = leafCert(identity.certPem);
    this.#certB64 = leaf.raw.toString("base64");
    this.#key = createPrivateKey(identity.keyPem);
    this.pin = keyPin(leaf.publicKey);
  }

  make(service: string, kxPublicKey: Uint8Array): { v: number; cert: string; sig: string } {
    return this.#proof(sign(digestFor(this.#key), proofMessage(service, kxPublicKey), this.#key));
  }

  /**
   * make(), with the signature computed on libuv's thread pool. An RSA-4096 identity key (what `ziti edge enroll`
   * makes by default) takes ~5 ms per signature: a proxy dialing 2,000 targets at start-up spent 10 s of its one
   * thread on them, every scrape waited behind, and timed-out scrapes dialed again (bench/scale.ts).
   */
  makeAsync(service: string, kxPublicKey: Uint8Array): Promise<{ v: number; cert: string; sig: string }> {
    return new Promise((resolve, reject) =>
      sign(digestFor(this.#key), proofMessage(service, kxPublicKey), this.#key, (err, sig) =>
        err ? reject(err) : resolve(this.#proof(sig)),
      ),
    );
  }

  #proof(sig: Buffer): { v: number; cert: string; sig: string } {
    return { v: PROOF_VERSION, cert: this.#certB64, sig: sig.toString("base64") };
  }
}

/** The AppData JSON for a dial: `{"scrapez":{...}}`. */
export function makeCallerProof(identity: ProofSigner, service: string, kxPublicKey: Uint8Array): Buffer {
  return Buffer.from(JSON.stringify({ [PROOF_KEY]: new CallerProver(identity).make(service, kxPublicKey) }));
}

/** Every CERTIFICATE block in a PEM bundle, parsed; unparsable blocks are skipped. */
export function parseCaBundle(pem: string): X509Certificate[] {
  const out: X509Certificate[] = [];
  for (const m of pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)) {
    try {
      out.push(new X509Certificate(m[0]));
    } catch {
      /* not a certificate: it cannot anchor anything */
    }
  }
  return out;
}

function within(cert: X509Certificate, now: number): boolean {
  return Date.parse(cert.validFrom) <= now && now <= Date.parse(cert.validTo);
}

/** A certificate that passed the checks that do not depend on time, with the validity windows still to check. */
export interface CheckedCert {
  cert: X509Certificate;
  key: KeyObject;
  pin: string;
  issuer: X509Certificate;
}

/**
 * Parses a proof's certificate and checks what does not depend on time: an identity (not a CA) certificate whose
 * issuer is in the CA bundle. Every bundle certificate is a trust anchor (the identity file's CA bundle is what the
 * operator trusts; OpenZiti puts the enrollment signer's intermediates in it). Returns a reason on failure.
 */
function checkCert(der: Buffer, bundle: readonly X509Certificate[]): CheckedCert | string {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch {
    return 'caller proof: "cert" is not an X.509 certificate';
  }
  if (cert.ca) return "caller proof: the certificate is a CA certificate, not an identity's";
  const issuer = bundle.find((c) => c.ca && cert.checkIssued(c) && safeVerify(cert, c.publicKey));
  if (!issuer) return `its certificate (issuer "${oneLine(cert.issuer)}") was not issued by this overlay's CA`;
  return { cert, key: cert.publicKey, pin: keyPin(cert.publicKey), issuer };
}

/** Why a checked certificate is not valid at `now`, or undefined. */
function timeError(c: CheckedCert, now: number): string | undefined {
  if (!within(c.cert, now))
    return `its certificate is expired or not yet valid (${c.cert.validFrom} - ${c.cert.validTo})`;
  if (!within(c.issuer, now)) return `its issuing CA "${oneLine(c.issuer.subject)}" is expired or not yet valid`;
  return undefined;
}

function safeVerify(cert: X509Certificate, key: KeyObject): boolean {
  try {
    return cert.verify(key);
  } catch {
    return false;
  }
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ", ").slice(0, 200);
}

function b64(v: unknown): Buffer | undefined {
  if (typeof v !== "string" || v.length === 0 || v.length % 4 !== 0 || !B64_RE.test(v)) return undefined;
  return Buffer.from(v, "base64");
}

/**
 * Verifies the proof in a dialer's AppData for `service` and the kx public key the router relayed. Never throws;
 * every failure comes back as a one-line reason. `trusted` is the overlay CA bundle (PEM or parsed).
 */
export function verifyCallerProof(
  appData: Buffer | undefined,
  service: string,
  kxPublicKey: Uint8Array | undefined,
  trusted: string | readonly X509Certificate[],
  now: number = Date.now(),
  cache?: CertCache,
): ProofResult {
  const no = (reason: string): ProofResult => ({ ok: false, reason });
  if (!appData || appData.length === 0) return no("no caller proof (the dialer sent no AppData)");
  if (appData.length > MAX_PROOF_BYTES) return no(`AppData of ${appData.length} bytes is over ${MAX_PROOF_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(appData.toString("utf8"));
  } catch {
    return no("no caller proof (AppData is not JSON)");
  }
  const p = json && typeof json === "object" && !Array.isArray(json) ? (json as Record<string, unknown>)[PROOF_KEY] : 0;
  if (p === undefined || p === 0) return no(`no caller proof (AppData has no "${PROOF_KEY}" object)`);
  if (!p || typeof p !== "object" || Array.isArray(p)) return no(`AppData's "${PROOF_KEY}" is not an object`);
  const { v, cert, sig } = p as Record<string, unknown>;
  if (v !== PROOF_VERSION) return no(`unsupported caller proof version ${JSON.stringify(v) ?? "(none)"}`);
  if (cert === undefined && sig === undefined) return no("no caller proof (the dialer sent a marker only)");
  const certDer = b64(cert);
  const sigBytes = b64(sig);
  if (!certDer) return no('caller proof: "cert" is not base64');
  if (!sigBytes) return no('caller proof: "sig" is not base64');
  if (!kxPublicKey || kxPublicKey.length !== KX_KEY_BYTES) {
    return no("the connection is not end-to-end encrypted, so a proof cannot be bound to it");
  }
  const bundle = typeof trusted === "string" ? parseCaBundle(trusted) : trusted;
  let checked = cache?.get(cert as string);
  if (!checked) {
    const r = checkCert(certDer, bundle);
    if (typeof r === "string") return no(r);
    checked = r;
    cache?.set(cert as string, r);
  }
  const timeErr = timeError(checked, now);
  if (timeErr) return no(timeErr);
  let good = false;
  try {
    good = verify(digestFor(checked.key), proofMessage(service, kxPublicKey), checked.key, sigBytes);
  } catch {
    good = false;
  }
  if (!good) return no(`the signature does not match this connection (service "${service}" and its key exchange)`);
  return { ok: true, spkiSha256: checked.pin, cert: checked.cert };
}

/** Bounded memory of certificates that passed `checkCert` (oldest forgotten first). */
class CertCache {
  readonly #m = new Map<string, CheckedCert>();
  constructor(readonly max: number) {}
  get(k: string): CheckedCert | undefined {
    return this.#m.get(k);
  }
  set(k: string, v: CheckedCert): void {
    if (this.#m.size >= this.max) this.#m.delete(this.#m.keys().next().value!);
    this.#m.set(k, v);
  }
  get size(): number {
    return this.#m.size;
  }
}

/**
 * Verifies proofs against one CA bundle, parsed once. Certificates that passed the time-independent checks are
 * remembered (at most `cacheSize`), so a returning caller costs one signature check; validity is checked every time.
 */
export class CallerProofVerifier {
  readonly #bundle: X509Certificate[];
  readonly #cache: CertCache;

  constructor(caPem: string, cacheSize = 256) {
    this.#bundle = parseCaBundle(caPem);
    this.#cache = new CertCache(cacheSize);
  }

  get cachedCerts(): number {
    return this.#cache.size;
  }

  verify(appData: Buffer | undefined, service: string, kxPublicKey: Uint8Array | undefined, now = Date.now()) {
    return verifyCallerProof(appData, service, kxPublicKey, this.#bundle, now, this.#cache);
  }
}
