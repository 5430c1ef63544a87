/**
 * The JWT codec of enrollment tokens: parse (header, claims, signature, with an error naming what is wrong) and
 * verify the signature with the issuer's public key (RS256/384/512, PS256/384/512, ES256/384/512). No I/O: the key
 * comes from the caller (enroll.ts fetches the issuer's certificate). The token is never put in an error message.
 */
import { KeyObject, constants, createPublicKey, verify as cryptoVerify } from "node:crypto";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";

const log = debug("enroll");

export interface EnrollmentClaims {
  /** Enrollment method: "ott" for a one-time token. */
  em: string;
  /** The controller, `https://host:port`. */
  iss: string;
  /** The identity's id; becomes the CSR's CN. */
  sub: string;
  /** The one-time token. */
  jti: string;
  /** Expiry, seconds since the epoch. */
  exp?: number;
  [claim: string]: unknown;
}

export interface ParsedJwt {
  header: { alg: string; kid?: string; typ?: string; [k: string]: unknown };
  claims: EnrollmentClaims;
  /** `<header>.<payload>` as sent: the bytes the signature covers. */
  signingInput: Buffer;
  signature: Buffer;
}

export function jwtError(msg: string, cause?: unknown): ZitiError {
  return new ZitiError(ErrorCodes.JWT_INVALID, `enrollment token: ${msg}`, cause ? { cause } : undefined);
}

export function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function b64urlJson(part: string, what: string): Record<string, unknown> {
  if (!part) throw jwtError(`the ${what} part is empty`);
  if (!/^[A-Za-z0-9_-]+$/.test(part))
    throw jwtError(`the ${what} part is not base64url (it has characters outside A-Z a-z 0-9 - _)`);
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
  } catch (err) {
    throw jwtError(`the ${what} part does not decode to JSON (${errText(err)}); the token is damaged`, err);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw jwtError(`the ${what} is not a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** Parses an enrollment JWT without verifying its signature. Throws JWT_INVALID naming what is wrong. */
export function parseEnrollmentJwt(text: string): ParsedJwt {
  if (typeof text !== "string") throw jwtError("expected the token as text");
  const t = text.trim();
  if (!t) throw jwtError("the token is empty");
  if (t.startsWith("{")) throw jwtError("this is JSON (an identity file?), not an enrollment token (JWT)");
  const parts = t.split(".");
  if (parts.length !== 3) {
    throw jwtError(
      `expected 3 dot-separated base64url parts (header.payload.signature), found ${parts.length}; ` +
        "pass the content of the .jwt file the controller made",
    );
  }
  const [h, p, s] = parts as [string, string, string];
  const header = b64urlJson(h, "header");
  const claims = b64urlJson(p, "payload");
  if (typeof header.alg !== "string" || !header.alg) throw jwtError('the header has no "alg"');
  for (const k of ["em", "iss", "sub", "jti"] as const) {
    if (typeof claims[k] !== "string" || !claims[k]) throw jwtError(`the payload has no "${k}" claim (string)`);
  }
  if (claims.exp !== undefined && (typeof claims.exp !== "number" || !Number.isFinite(claims.exp))) {
    throw jwtError('the "exp" claim is not a number');
  }
  if (!s) throw jwtError("the signature part is empty");
  if (!/^[A-Za-z0-9_-]+$/.test(s)) throw jwtError("the signature part is not base64url");
  return {
    header: header as ParsedJwt["header"],
    claims: claims as EnrollmentClaims,
    signingInput: Buffer.from(`${h}.${p}`),
    signature: Buffer.from(s, "base64url"),
  };
}

const ALGS: Record<string, { hash: string; kind: "rsa" | "pss" | "ec"; curve?: string; sigBytes?: number }> = {
  RS256: { hash: "sha256", kind: "rsa" },
  RS384: { hash: "sha384", kind: "rsa" },
  RS512: { hash: "sha512", kind: "rsa" },
  PS256: { hash: "sha256", kind: "pss" },
  PS384: { hash: "sha384", kind: "pss" },
  PS512: { hash: "sha512", kind: "pss" },
  ES256: { hash: "sha256", kind: "ec", curve: "prime256v1", sigBytes: 64 },
  ES384: { hash: "sha384", kind: "ec", curve: "secp384r1", sigBytes: 96 },
  ES512: { hash: "sha512", kind: "ec", curve: "secp521r1", sigBytes: 132 },
};

/**
 * Verifies the JWT signature (RS256/384/512, PS256/384/512, ES256/384/512; ES signatures are raw r||s) with the
 * issuer's public key. Throws JWT_INVALID when the algorithm does not fit the key or the signature does not verify.
 */
export function verifyJwtSignature(jwt: ParsedJwt, publicKey: KeyObject | string): void {
  const alg = Object.hasOwn(ALGS, jwt.header.alg) ? ALGS[jwt.header.alg] : undefined;
  if (!alg) {
    throw jwtError(`unsupported signature algorithm "${jwt.header.alg}" (expected ${Object.keys(ALGS).join(", ")})`);
  }
  let key: KeyObject;
  try {
    key = typeof publicKey === "string" ? createPublicKey(publicKey) : publicKey;
    if (key.type === "private") key = createPublicKey(key);
  } catch (err) {
    throw jwtError(`the issuer's public key is unusable (${errText(err)})`, err);
  }
  const keyType = key.asymmetricKeyType;
  const curve = key.asymmetricKeyDetails?.namedCurve;
  const fits =
    alg.kind === "ec"
      ? keyType === "ec" && curve === alg.curve
      : keyType === "rsa" || (alg.kind === "pss" && keyType === "rsa-pss");
  if (!fits) {
    throw jwtError(
      `algorithm ${jwt.header.alg} does not fit the issuer's ${keyType}${curve ? ` ${curve}` : ""} key ` +
        "(wrong alg in the header, or a token from another controller)",
    );
  }
  let ok = false;
  if (alg.sigBytes === undefined || jwt.signature.length === alg.sigBytes) {
    const opts =
      alg.kind === "ec"
        ? { key, dsaEncoding: "ieee-p1363" as const }
        : alg.kind === "pss"
          ? { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
          : { key };
    try {
      ok = cryptoVerify(alg.hash, jwt.signingInput, opts, jwt.signature);
    } catch (err) {
      log("signature check threw: %s", errText(err));
      ok = false;
    }
  }
  if (!ok) {
    throw jwtError(
      "signature does not verify against the issuing controller's certificate: the token was altered, " +
        "or it was not issued by the controller it names",
    );
  }
}
