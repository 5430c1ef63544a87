/**
 * Enrollment JWTs: parsing and signature verification as pure functions (RS256/ES256/ES384 with local keys), the
 * offline claim checks, and what enroll() does when the issuer presents another certificate on its next connection
 * (a loopback HTTPS stand-in: a fault a real controller cannot be made to show; test/integration/enroll.test.ts runs
 * the whole flow against a real one).
 */
import "reflect-metadata";
import {
  KeyObject,
  createHash,
  generateKeyPairSync,
  randomUUID,
  sign,
  webcrypto,
  type KeyObject as Key,
} from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../src/ziti/errors.js";
import { enroll, parseEnrollmentJwt, verifyJwtSignature } from "../../src/ziti/internal.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const b64 = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

function signJwt(alg: string, key: Key, claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  const input = `${b64({ alg, typ: "JWT", ...header })}.${b64(claims)}`;
  const hash = `sha${alg.slice(2)}`;
  const sig = alg.startsWith("ES")
    ? sign(hash, Buffer.from(input), { key, dsaEncoding: "ieee-p1363" })
    : sign(hash, Buffer.from(input), key);
  return `${input}.${sig.toString("base64url")}`;
}

function claims(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: "https://127.0.0.1:1280",
    sub: "AB7Hb3lPl",
    aud: [""],
    exp: Math.floor(Date.now() / 1000) + 3600,
    jti: "e039afe6-afd5-40d9-bc45-ae5890c4e50f",
    em: "ott",
    ctrls: ["tls:127.0.0.1:1280"],
    ...over,
  };
}

const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const p256 = generateKeyPairSync("ec", { namedCurve: "P-256" });
const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" });
const otherRsa = generateKeyPairSync("rsa", { modulusLength: 2048 });

/** Replaces one of the three parts. */
function withPart(jwt: string, i: number, part: string): string {
  const parts = jwt.split(".");
  parts[i] = part;
  return parts.join(".");
}

function tamperPayload(jwt: string, change: Record<string, unknown>): string {
  const payload = JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString()) as Record<string, unknown>;
  return withPart(jwt, 1, b64({ ...payload, ...change }));
}

function flipSignatureByte(jwt: string): string {
  const sig = Buffer.from(jwt.split(".")[2]!, "base64url");
  sig[sig.length >> 1]! ^= 0x01;
  return withPart(jwt, 2, sig.toString("base64url"));
}

const verify = (jwt: string, key: Key | string) => () => verifyJwtSignature(parseEnrollmentJwt(jwt), key);
const jwtInvalid = (message: RegExp) =>
  expect.objectContaining({ code: ErrorCodes.JWT_INVALID, message: expect.stringMatching(message) });

describe("parseEnrollmentJwt + verifyJwtSignature", () => {
  const valid: [string, Key, Key][] = [
    ["RS256", rsa.privateKey, rsa.publicKey],
    ["ES256", p256.privateKey, p256.publicKey],
    ["ES384", p384.privateKey, p384.publicKey],
  ];

  it.each(valid)(
    "%s: a valid token parses and verifies (also with the key as PEM, or given the private key)",
    (alg, priv, pub) => {
      const jwt = signJwt(alg, priv, claims(), { kid: "abc" });
      const parsed = parseEnrollmentJwt(`  ${jwt}\n`);
      expect(parsed.header).toMatchObject({ alg, kid: "abc", typ: "JWT" });
      expect(parsed.claims).toMatchObject({ em: "ott", sub: "AB7Hb3lPl", iss: "https://127.0.0.1:1280" });
      expect(parsed.signingInput.toString()).toBe(jwt.split(".").slice(0, 2).join("."));
      expect(() => verifyJwtSignature(parsed, pub)).not.toThrow();
      expect(() => verifyJwtSignature(parsed, pub.export({ type: "spki", format: "pem" }).toString())).not.toThrow();
      expect(() => verifyJwtSignature(parsed, priv)).not.toThrow();
    },
  );

  it.each(valid)("%s: a tampered payload or signature does not verify", (alg, priv, pub) => {
    const jwt = signJwt(alg, priv, claims());
    expect(verify(tamperPayload(jwt, { sub: "someone-else" }), pub)).toThrow(jwtInvalid(/signature does not verify/));
    expect(verify(flipSignatureByte(jwt), pub)).toThrow(jwtInvalid(/signature does not verify/));
    // A truncated signature, too (ES signatures have a fixed length).
    expect(verify(withPart(jwt, 2, jwt.split(".")[2]!.slice(0, 40)), pub)).toThrow(
      jwtInvalid(/signature does not verify/),
    );
  });

  it("a token signed by another key does not verify", () => {
    expect(verify(signJwt("RS256", otherRsa.privateKey, claims()), rsa.publicKey)).toThrow(
      jwtInvalid(/signature does not verify against the issuing controller's certificate/),
    );
  });

  it("an algorithm that does not fit the key, or that we do not accept, is refused", () => {
    const es = signJwt("ES256", p256.privateKey, claims());
    const rs = signJwt("RS256", rsa.privateKey, claims());
    expect(verify(es, rsa.publicKey)).toThrow(jwtInvalid(/algorithm ES256 does not fit the issuer's rsa key/));
    expect(verify(rs, p256.publicKey)).toThrow(
      jwtInvalid(/algorithm RS256 does not fit the issuer's ec prime256v1 key/),
    );
    expect(verify(es, p384.publicKey)).toThrow(
      jwtInvalid(/algorithm ES256 does not fit the issuer's ec secp384r1 key/),
    );
    // alg swapped in the header: the header is signed, so this can only be a forgery or a broken issuer.
    expect(verify(withPart(rs, 0, b64({ alg: "ES256" })), p256.publicKey)).toThrow(
      jwtInvalid(/signature does not verify/),
    );
    for (const alg of ["HS256", "none", "RS1", "toString", "__proto__"]) {
      expect(verify(withPart(rs, 0, b64({ alg })), rsa.publicKey)).toThrow(
        jwtInvalid(new RegExp(`unsupported signature algorithm "${alg}" \\(expected RS256`)),
      );
    }
  });

  const malformed: [string, string, RegExp][] = [
    ["empty", "  \n", /the token is empty/],
    ["one part", "abc", /expected 3 dot-separated base64url parts \(header\.payload\.signature\), found 1/],
    ["two parts", "abc.def", /found 2/],
    ["four parts", "a.b.c.d", /found 4/],
    ["an identity file", '{"ztAPI": "https://x"}', /this is JSON \(an identity file\?\), not an enrollment token/],
    ["an empty header", `.${b64(claims())}.c2ln`, /the header part is empty/],
    ["a header that is not base64url", `e30=.${b64(claims())}.c2ln`, /the header part is not base64url/],
    [
      "a payload with base64 (not url) chars",
      `${b64({ alg: "RS256" })}.ab+/cd.c2ln`,
      /the payload part is not base64url/,
    ],
    [
      "a payload that is not JSON",
      `${b64({ alg: "RS256" })}.${b64("not json")}.c2ln`,
      /the payload part does not decode to JSON/,
    ],
    ["a payload that is a JSON array", `${b64({ alg: "RS256" })}.${b64([1])}.c2ln`, /the payload is not a JSON object/],
    ["a header without alg", `${b64({ typ: "JWT" })}.${b64(claims())}.c2ln`, /the header has no "alg"/],
    ["no jti", `${b64({ alg: "RS256" })}.${b64(claims({ jti: undefined }))}.c2ln`, /the payload has no "jti" claim/],
    ["an empty sub", `${b64({ alg: "RS256" })}.${b64(claims({ sub: "" }))}.c2ln`, /the payload has no "sub" claim/],
    [
      "a string exp",
      `${b64({ alg: "RS256" })}.${b64(claims({ exp: "soon" }))}.c2ln`,
      /the "exp" claim is not a number/,
    ],
    ["an empty signature", `${b64({ alg: "RS256" })}.${b64(claims())}.`, /the signature part is empty/],
    [
      "a signature that is not base64url",
      `${b64({ alg: "RS256" })}.${b64(claims())}.a=b`,
      /the signature part is not base64url/,
    ],
  ];
  it.each(malformed)("malformed: %s", (_name, text, message) => {
    expect(() => parseEnrollmentJwt(text)).toThrow(jwtInvalid(message));
    expect(() => parseEnrollmentJwt(text)).toThrow(/^enrollment token: /);
  });
});

describe("enroll() refuses before any network I/O", () => {
  // The issuer is a port nobody listens on: reaching the network would give CONTROLLER_UNREACHABLE instead.
  const iss = "https://127.0.0.1:1";
  it("an expired token", async () => {
    const exp = Math.floor(Date.now() / 1000) - 60;
    await expect(enroll({ jwt: signJwt("RS256", rsa.privateKey, claims({ iss, exp })) })).rejects.toMatchObject({
      code: ErrorCodes.ENROLLMENT_FAILED,
      message: expect.stringMatching(
        new RegExp(
          `^enrollment token expired at ${new Date(exp * 1000).toISOString().replace(/\./g, "\\.")}: create a new one`,
        ),
      ),
    });
  });
  it("another enrollment method", async () => {
    await expect(enroll({ jwt: signJwt("RS256", rsa.privateKey, claims({ iss, em: "ottca" })) })).rejects.toMatchObject(
      {
        code: ErrorCodes.ENROLLMENT_FAILED,
        message: expect.stringMatching(/enrollment method "ottca" is not supported; only one-time tokens/),
      },
    );
  });
  it("an issuer that is not an https URL", async () => {
    for (const [bad, message] of [
      ["http://127.0.0.1:1280", /the issuer "http:\/\/127\.0\.0\.1:1280" is not an https:\/\/ URL/],
      ["controller:1280/x y", /the issuer ".*" is not (a|an https:\/\/) URL/],
      ["not a url", /the issuer "not a url" is not a URL/],
    ] as const) {
      await expect(enroll({ jwt: signJwt("RS256", rsa.privateKey, claims({ iss: bad })) })).rejects.toMatchObject({
        code: ErrorCodes.JWT_INVALID,
        message: expect.stringMatching(message),
      });
    }
  });
  it("a malformed token", async () => {
    await expect(enroll({ jwt: "a.b" })).rejects.toMatchObject({ code: ErrorCodes.JWT_INVALID });
  });
});

/**
 * A loopback HTTPS stand-in for the controller's CA-bundle endpoint, with its own PKI: only for what a real
 * controller cannot be made to do, present another certificate on its second connection than on its first. The
 * enrollment itself (EC and RSA keys, a reused token, a tampered or re-signed token) is proven against a real
 * controller in test/integration/enroll.test.ts.
 */
class StandIn {
  readonly server: https.Server;
  readonly caPem: string;
  readonly serverKey: KeyObject;
  readonly serverCert: x509.X509Certificate;
  readonly other: { cert: string; key: string };
  requests: string[] = [];
  tlsConnections = 0;
  swapCertAfterFirstConnection = false;

  private constructor(init: {
    caPem: string;
    serverKey: KeyObject;
    serverCert: x509.X509Certificate;
    other: { cert: string; key: string };
  }) {
    this.caPem = init.caPem;
    this.serverKey = init.serverKey;
    this.serverCert = init.serverCert;
    this.other = init.other;
    this.server = https.createServer({
      cert: init.serverCert.toString("pem"),
      key: init.serverKey.export({ type: "pkcs8", format: "pem" }),
    });
    this.server.on("connection", () => {
      if (++this.tlsConnections === 1 && this.swapCertAfterFirstConnection) this.server.setSecureContext(this.other);
    });
    this.server.on("request", (req, res) => this.#handle(req, res));
  }

  static async start(): Promise<StandIn> {
    const EC = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
    const RSA = {
      name: "RSASSA-PKCS1-v1_5",
      hash: "SHA-256",
      publicExponent: new Uint8Array([1, 0, 1]),
      modulusLength: 2048,
    };
    const gen = (alg: typeof EC | typeof RSA) =>
      webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]) as Promise<webcrypto.CryptoKeyPair>;
    const notBefore = new Date(Date.now() - 60_000);
    const notAfter = new Date(Date.now() + 3600_000);
    const caKeys = await gen(EC);
    const ca = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: "CN=stand-in-root",
      notBefore,
      notAfter,
      keys: caKeys,
      signingAlgorithm: EC,
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
    });
    const serverCertFor = async (keys: webcrypto.CryptoKeyPair, serial: string) =>
      x509.X509CertificateGenerator.create({
        serialNumber: serial,
        subject: "CN=stand-in-controller",
        issuer: ca.subject,
        notBefore,
        notAfter,
        signingKey: caKeys.privateKey,
        publicKey: keys.publicKey,
        signingAlgorithm: EC,
        extensions: [new x509.SubjectAlternativeNameExtension([{ type: "ip", value: "127.0.0.1" }])],
      });
    // RSA like the quickstart's PKI, so tokens are RS256.
    const serverKeys = await gen(RSA);
    const otherKeys = await gen(RSA);
    const s = new StandIn({
      caPem: ca.toString("pem"),
      serverKey: KeyObject.from(serverKeys.privateKey),
      serverCert: await serverCertFor(serverKeys, "02"),
      other: {
        cert: (await serverCertFor(otherKeys, "03")).toString("pem"),
        key: KeyObject.from(otherKeys.privateKey).export({ type: "pkcs8", format: "pem" }).toString(),
      },
    });
    await new Promise<void>((r) => s.server.listen(0, "127.0.0.1", r));
    return s;
  }

  get iss(): string {
    return `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** A token as the controller mints it: RS256 with its TLS key, kid = SHA-1 of its certificate. */
  jwt(over: Record<string, unknown> = {}, key: Key = this.serverKey): string {
    const kid = createHash("sha1").update(Buffer.from(this.serverCert.rawData)).digest("hex");
    return signJwt("RS256", key, claims({ iss: this.iss, jti: randomUUID(), ...over }), { kid });
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", this.iss);
    this.requests.push(`${req.method} ${url.pathname}`);
    if (req.method === "GET" && url.pathname === "/edge/client/v1/.well-known/est/cacerts") {
      const p7 = Buffer.from(new x509.X509Certificates([new x509.X509Certificate(this.caPem)]).export("raw"));
      res.writeHead(200, { "content-type": "application/pkcs7-mime", "content-transfer-encoding": "base64" });
      res.end(p7.toString("base64").replace(/(.{64})/g, "$1\n"));
      return;
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { code: "NOT_FOUND", message: "no route", requestId: "req-404" } }));
  }

  reset(): void {
    this.requests = [];
    this.tlsConnections = 0;
    this.swapCertAfterFirstConnection = false;
    this.server.setSecureContext({
      cert: this.serverCert.toString("pem"),
      key: this.serverKey.export({ type: "pkcs8", format: "pem" }),
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

describe("enroll() against a loopback stand-in controller", () => {
  let standIn: StandIn;
  beforeAll(async () => {
    standIn = await StandIn.start();
  });
  afterAll(() => standIn?.close());

  it("a controller that presents another certificate for the CA bundle than the one that signed the token", async () => {
    standIn.reset();
    standIn.swapCertAfterFirstConnection = true;
    await expect(enroll({ jwt: standIn.jwt() })).rejects.toMatchObject({
      code: ErrorCodes.ENROLLMENT_FAILED,
      message: expect.stringMatching(
        /cannot fetch the controller's CA bundle: the controller presented a different certificate than the one that signed the token/,
      ),
    });
    expect(standIn.requests.filter((r) => r.startsWith("POST"))).toEqual([]);
  });

  it("an issuer nobody listens on: CONTROLLER_UNREACHABLE", async () => {
    const closed = https.createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    await expect(enroll({ jwt: standIn.jwt({ iss: `https://127.0.0.1:${port}` }) })).rejects.toMatchObject({
      code: ErrorCodes.CONTROLLER_UNREACHABLE,
      message: expect.stringMatching(
        new RegExp(
          `cannot reach the controller at https://127\\.0\\.0\\.1:${port} \\(the token's issuer\\): .*ECONNREFUSED`,
        ),
      ),
    });
  });
});
