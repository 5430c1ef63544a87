/**
 * A caller proof: how a dialer proves which key it holds to the hosting side, over OpenZiti v1.x routers that
 * relay only the dialer's self-declared CallerId.
 *
 * Version 2, bound to one connection. The exchange rides on the end-to-end encrypted stream:
 *
 *   1. The dialer's AppData carries only a marker, `{"scrapez":{"v":2}}` (next to the caller's own fields): "I am
 *      scrapez; my first encrypted message will be a proof". No certificate travels in the clear.
 *   2. A host that sees the marker on an encrypted connection sends its 24-byte secretstream header and, in the
 *      same Data message, the encrypted HOST_HELLO. A Go or C host sends the header alone (they never see the
 *      marker's meaning), so the dialer knows from the host's first message, without waiting for a second one that
 *      a Go host would never send, whether the peer is scrapez.
 *   3. To a scrapez host only, the dialer sends as its first encrypted message the proof, `{"v":2,"cert","sig"}`:
 *      its identity certificate and a signature by its identity key over
 *
 *        "scrapez caller proof v2\0" + service + "\0" + dialer kx key (32) + host kx key (32)
 *          + host stream header (24) + dialer stream header (24)
 *
 *   4. The host reads that first message before the application sees the connection, checks the certificate
 *      against the overlay's CA bundle and the signature against this connection's values, and reports the key's
 *      pin `sha256:<base64url SHA-256 of the SPKI DER>`.
 *
 * Why the host's stream header: it is 24 random bytes that libsodium's init_push draws afresh for every connection
 * and that the host alone chooses. The host's kx key pair cannot be per connection (it travels once in the Bind,
 * as the terminator's peer data, to every dialer's StateConnected; Go and C dialers take it from there), so a router
 * that replays a recorded Dial and the dialer's recorded ciphertext derives the same session keys and the recorded
 * proof decrypts again; but it names the old host header, not the one the host just drew, so it does not verify.
 * A proof is only accepted on an end-to-end encrypted connection (there is nothing to bind it to otherwise).
 * Version 1 (a proof in AppData, bound only to the dialer's kx key) was replayable that way and is refused.
 *
 * A certificate's subject proves nothing (the controller signs whatever subject a CSR carries): the proof is bound
 * to a KEY, and the host maps pinned keys to names it trusts. Pure: no I/O (caller-handshake.ts drives it).
 */
import { X509Certificate, createHash, createPrivateKey, sign, verify, type KeyObject } from "node:crypto";

/** The AppData key under which the marker travels; its presence marks the dialer as scrapez. */
export const PROOF_KEY = "scrapez";
export const PROOF_VERSION = 2;
/** Largest AppData, and largest proof message, we parse (a proof is ~1-3 KiB: one certificate, one signature). */
export const MAX_PROOF_BYTES = 16 * 1024;
/** What a scrapez host sends, encrypted, in the Data of its stream header to a dialer that sent the marker. */
export const HOST_HELLO = Buffer.from("scrapez host v2");
const DOMAIN = Buffer.from("scrapez caller proof v2\0");
const KX_KEY_BYTES = 32;
const STREAM_HEADER_BYTES = 24;
const PIN_RE = /^sha256:[A-Za-z0-9_-]{43}$/;
const B64_RE = /^[A-Za-z0-9+/]+={0,2}$/;

/** What a dialer needs to sign: its identity's certificate (PEM, leaf first) and private key (PEM). */
export interface ProofSigner {
  certPem: string;
  keyPem: string;
}

/** The values of one connection a proof is bound to. */
export interface ProofBinding {
  service: string;
  /** The dialer's end-to-end key-exchange public key (32 bytes). */
  dialerKx: Uint8Array;
  /** The host's (the listener's) key-exchange public key (32 bytes). */
  hostKx: Uint8Array;
  /** The host's secretstream header for this connection (24 bytes, fresh per connection). */
  hostHeader: Uint8Array;
  /** The dialer's secretstream header for this connection (24 bytes). */
  dialerHeader: Uint8Array;
}

export type ProofResult = { ok: true; spkiSha256: string; cert: X509Certificate } | { ok: false; reason: string };

/** The message a proof signs. */
export function proofMessage(b: ProofBinding): Buffer {
  return Buffer.concat([
    DOMAIN,
    Buffer.from(b.service, "utf8"),
    Buffer.from([0]),
    Buffer.from(b.dialerKx),
    Buffer.from(b.hostKx),
    Buffer.from(b.hostHeader),
    Buffer.from(b.dialerHeader),
  ]);
}

/** Why a binding cannot carry a proof (a value missing or of the wrong size), or undefined. */
function bindingError(b: Partial<ProofBinding>): string | undefined {
  const sized = (v: Uint8Array | undefined, n: number) => v !== undefined && v.length === n;
  if (!sized(b.dialerKx, KX_KEY_BYTES) || !sized(b.hostKx, KX_KEY_BYTES))
    return "the connection is not end-to-end encrypted, so a proof cannot be bound to it";
  if (!sized(b.hostHeader, STREAM_HEADER_BYTES) || !sized(b.dialerHeader, STREAM_HEADER_BYTES))
    return "the connection's stream headers are missing, so a proof cannot be bound to it";
  return undefined;
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

/** The AppData marker a dialer sends, merged into the caller's own plain-object AppData fields. */
export function proofMarker(appData?: object): Buffer {
  return Buffer.from(JSON.stringify({ ...appData, [PROOF_KEY]: { v: PROOF_VERSION } }));
}

/**
 * Whether a dialer's AppData announces a v2 proof to come (`ok`), or why not. Never throws; reasons are one line.
 * A v1 proof (a certificate and signature in AppData) is refused: it is not bound to the connection.
 */
export function readProofMarker(appData: Buffer | undefined): { ok: true } | { ok: false; reason: string } {
  const no = (reason: string) => ({ ok: false as const, reason });
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
  if (v === 1 || cert !== undefined || sig !== undefined)
    return no("caller proof v1 is no longer accepted: upgrade the dialer");
  if (v !== PROOF_VERSION) return no(`unsupported caller proof version ${JSON.stringify(v) ?? "(none)"}`);
  return { ok: true };
}

/**
 * Makes proofs for one identity; parses its certificate and key once. `make()` returns the proof message (the
 * dialer's first encrypted message to a scrapez host).
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

  make(binding: ProofBinding): Buffer {
    return this.#proof(sign(digestFor(this.#key), this.#message(binding), this.#key));
  }

  /**
   * make(), with the signature computed on libuv's thread pool. An RSA-4096 identity key (what `ziti edge enroll`
   * makes by default) takes ~5 ms per signature, and every connection to a scrapez host signs once: a proxy
   * dialing 2,000 targets at start-up would spend 10 s of its one thread on them (bench/scale.ts).
   */
  makeAsync(binding: ProofBinding): Promise<Buffer> {
    const msg = this.#message(binding);
    return new Promise((resolve, reject) =>
      sign(digestFor(this.#key), msg, this.#key, (err, sig) => (err ? reject(err) : resolve(this.#proof(sig)))),
    );
  }

  #message(binding: ProofBinding): Buffer {
    const err = bindingError(binding);
    if (err) throw new Error(err);
    return proofMessage(binding);
  }

  #proof(sig: Buffer): Buffer {
    return Buffer.from(JSON.stringify({ v: PROOF_VERSION, cert: this.#certB64, sig: sig.toString("base64") }));
  }
}

/** A proof message for one connection (what the dialer sends first). */
export function makeCallerProof(identity: ProofSigner, binding: ProofBinding): Buffer {
  return new CallerProver(identity).make(binding);
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
 * Verifies a proof message (the dialer's first encrypted message) against this connection's values. Never throws;
 * every failure comes back as a one-line reason. `trusted` is the overlay CA bundle (PEM or parsed).
 */
export function verifyCallerProof(
  proof: Buffer | undefined,
  binding: Partial<ProofBinding> & { service: string },
  trusted: string | readonly X509Certificate[],
  now: number = Date.now(),
  cache?: CertCache,
): ProofResult {
  const no = (reason: string): ProofResult => ({ ok: false, reason });
  const unbound = bindingError(binding);
  if (unbound) return no(unbound);
  if (!proof || proof.length === 0) return no("no caller proof (the dialer's first message was not one)");
  if (proof.length > MAX_PROOF_BYTES) return no(`a caller proof of ${proof.length} bytes is over ${MAX_PROOF_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(proof.toString("utf8"));
  } catch {
    return no("no caller proof (the dialer's first message is not JSON)");
  }
  if (!json || typeof json !== "object" || Array.isArray(json)) return no("the caller proof is not a JSON object");
  const { v, cert, sig } = json as Record<string, unknown>;
  if (v !== PROOF_VERSION) return no(`unsupported caller proof version ${JSON.stringify(v) ?? "(none)"}`);
  const certDer = b64(cert);
  const sigBytes = b64(sig);
  if (!certDer) return no('caller proof: "cert" is not base64');
  if (!sigBytes) return no('caller proof: "sig" is not base64');
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
    good = verify(digestFor(checked.key), proofMessage(binding as ProofBinding), checked.key, sigBytes);
  } catch {
    good = false;
  }
  if (!good)
    return no(`the signature does not match this connection (service "${binding.service}", its keys and headers)`);
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

  verify(proof: Buffer | undefined, binding: Partial<ProofBinding> & { service: string }, now = Date.now()) {
    return verifyCallerProof(proof, binding, this.#bundle, now, this.#cache);
  }
}
