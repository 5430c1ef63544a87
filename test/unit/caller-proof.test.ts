/**
 * Caller proofs (src/ziti/api/caller-proof.ts) with throwaway PKIs made by openssl: what verifies, what does not,
 * and that the pin is the SHA-256 of the key's SPKI as openssl computes it. The proof over the real overlay is
 * test/integration/caller.test.ts.
 */
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CallerProofVerifier,
  CallerProver,
  identityKeyPin,
  isKeyPin,
  makeCallerProof,
  MAX_PROOF_BYTES,
  type ProofBinding,
  proofMarker,
  type ProofResult,
  readProofMarker,
  verifyCallerProof,
} from "../../src/ziti/internal.js";
import { issueLeaf, makePki, type LeafKey } from "../harness/pki.js";
import { tempDir } from "../harness/process.js";

const dir = tempDir("caller-proof");
let caPem: string;
const ids: Record<string, { certPem: string; keyPem: string }> = {};
const read = (f: string) => readFileSync(f, "utf8");
/** One connection's values: fresh keys and stream headers. */
const conn = (service = "node"): ProofBinding => ({
  service,
  dialerKx: randomBytes(32),
  hostKx: randomBytes(32),
  hostHeader: randomBytes(24),
  dialerHeader: randomBytes(24),
});

function expectOk(r: ProofResult): asserts r is Extract<ProofResult, { ok: true }> {
  if (!r.ok) throw new Error(`expected a verified proof, got: ${r.reason}`);
}

function reason(r: ProofResult): string {
  expect(r.ok).toBe(false);
  return r.ok ? "" : r.reason;
}

/** The pin computed by openssl alone: SPKI DER of the certificate's key, SHA-256, base64url. */
function opensslPin(certFile: string): string {
  const pub = execFileSync("openssl", ["x509", "-in", certFile, "-noout", "-pubkey"]);
  const der = execFileSync("openssl", ["pkey", "-pubin", "-outform", "DER"], { input: pub });
  return `sha256:${createHash("sha256").update(der).digest("base64url")}`;
}

beforeAll(() => {
  const pki = makePki(dir);
  caPem = read(pki["ca.crt"]!);
  for (const [name, ca, key] of [
    ["ec", "ca", "ec"],
    ["ec384", "ca", "ec384"],
    ["rsa", "ca", "rsa"],
    ["rogue", "rogue-ca", "ec"],
  ] as const) {
    const f = issueLeaf(dir, `id-${name}`, ca, { key: key as LeafKey, cn: "prometheus-central" });
    ids[name] = { certPem: read(f.crt), keyPem: read(f.key) };
  }
}, 60_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("caller proof", () => {
  it.each(["ec", "ec384", "rsa"])(
    "a %s identity's proof verifies and yields the key's pin as openssl computes it",
    (k) => {
      const b = conn();
      const proof = makeCallerProof(ids[k]!, b);
      expect(proof.length).toBeLessThan(4096);
      const r = verifyCallerProof(proof, b, caPem);
      expectOk(r);
      expect(r.spkiSha256).toBe(opensslPin(`${dir}/id-${k}.crt`));
      expect(r.spkiSha256).toBe(identityKeyPin(ids[k]!.certPem));
      expect(isKeyPin(r.spkiSha256)).toBe(true);
    },
  );

  it.each(["ec", "ec384", "rsa"])(
    "a %s proof signed on the thread pool (makeAsync, what dials use) verifies like one signed inline",
    async (k) => {
      const b = conn();
      const prover = new CallerProver(ids[k]!);
      const proof = await prover.makeAsync(b);
      const r = verifyCallerProof(proof, b, caPem);
      expectOk(r);
      expect(r.spkiSha256).toBe(prover.pin);
      expect(reason(verifyCallerProof(proof, { ...b, service: "other" }, caPem))).toBeTruthy();
    },
  );

  it("pins keys, not names: two certificates with the same CN have different pins", () => {
    expect(identityKeyPin(ids.ec!.certPem)).not.toBe(identityKeyPin(ids.rsa!.certPem));
  });

  it("refuses a tampered signature", () => {
    const b = conn();
    const j = JSON.parse(makeCallerProof(ids.ec!, b).toString()) as { sig: string };
    const sig = Buffer.from(j.sig, "base64");
    sig[sig.length - 3]! ^= 0x01;
    j.sig = sig.toString("base64");
    expect(reason(verifyCallerProof(Buffer.from(JSON.stringify(j)), b, caPem))).toMatch(/signature does not match/);
  });

  it("refuses a proof made for another service", () => {
    const b = conn("other");
    const r = verifyCallerProof(makeCallerProof(ids.rsa!, b), { ...b, service: "node" }, caPem);
    expect(reason(r)).toMatch(/signature does not match this connection \(service "node"/);
  });

  it.each(["dialerKx", "hostKx", "hostHeader", "dialerHeader"] as const)(
    "refuses a proof replayed on a connection whose %s differs (each value of the connection is bound)",
    (field) => {
      const b = conn();
      const other = { ...b, [field]: randomBytes(b[field].length) };
      expect(reason(verifyCallerProof(makeCallerProof(ids.ec!, b), other, caPem))).toMatch(/signature does not match/);
    },
  );

  it("refuses a certificate not issued by the overlay's CA, even with a valid signature", () => {
    const b = conn();
    const r = verifyCallerProof(makeCallerProof(ids.rogue!, b), b, caPem);
    expect(reason(r)).toMatch(/issuer "CN=rogue-ca"\) was not issued by this overlay's CA/);
  });

  it("refuses an expired certificate", () => {
    const b = conn();
    const inThreeDays = Date.now() + 3 * 86_400_000;
    const r = verifyCallerProof(makeCallerProof(ids.ec!, b), b, caPem, inThreeDays);
    expect(reason(r)).toMatch(/certificate is expired or not yet valid/);
  });

  it("refuses a connection without end-to-end keys or stream headers, and will not sign for one", () => {
    const b = conn();
    const proof = makeCallerProof(ids.ec!, b);
    expect(reason(verifyCallerProof(proof, { ...b, dialerKx: undefined }, caPem))).toMatch(/not end-to-end encrypted/);
    expect(reason(verifyCallerProof(proof, { ...b, hostKx: b.hostKx.subarray(0, 16) }, caPem))).toMatch(/end-to-end/);
    expect(reason(verifyCallerProof(proof, { ...b, hostHeader: undefined }, caPem))).toMatch(/stream headers/);
    expect(() => makeCallerProof(ids.ec!, { ...b, dialerHeader: Buffer.alloc(0) })).toThrow(/stream headers/);
  });

  it.each([
    ["nothing", undefined, /no caller proof \(the dialer's first message was not one\)/],
    ["not JSON", "\u0000garbage{", /first message is not JSON/],
    ["a JSON array", "[1,2]", /not a JSON object/],
    ["version 1", '{"v":1,"cert":"AA==","sig":"AA=="}', /unsupported caller proof version 1/],
    ["a numeric cert", '{"v":2,"cert":12,"sig":"AA=="}', /"cert" is not base64/],
    ["a non-base64 sig", '{"v":2,"cert":"AAAA","sig":"!!"}', /"sig" is not base64/],
    ["a cert that is not X.509", '{"v":2,"cert":"AAAA","sig":"AAAA"}', /not an X\.509 certificate/],
  ])("refuses %s as a proof with a one-line reason", (_name, text, re) => {
    const r = verifyCallerProof(text === undefined ? undefined : Buffer.from(text), conn(), caPem);
    expect(reason(r)).toMatch(re);
    expect(reason(r)).not.toMatch(/\n/);
  });

  it.each([
    ["nothing", undefined, /no caller proof \(the dialer sent no AppData\)/],
    ["not JSON", "\u0000garbage{", /AppData is not JSON/],
    ["a JSON array", "[1,2]", /has no "scrapez" object/],
    ["a Go tunneler's AppData", '{"dst_protocol":"tcp","dst_ip":"127.0.0.1","dst_port":"80"}', /no "scrapez"/],
    ["scrapez not an object", '{"scrapez":"x"}', /"scrapez" is not an object/],
    ["scrapez null", '{"scrapez":null}', /"scrapez" is not an object/],
    ["a v1 marker", '{"scrapez":{"v":1}}', /caller proof v1 is no longer accepted: upgrade the dialer/],
    ["a v1 proof", '{"scrapez":{"v":1,"cert":"AA==","sig":"AA=="}}', /v1 is no longer accepted/],
    ["an unknown version", '{"scrapez":{"v":3}}', /unsupported caller proof version 3/],
  ])("an AppData of %s announces no proof, with a one-line reason", (_name, text, re) => {
    const r = readProofMarker(text === undefined ? undefined : Buffer.from(text));
    expect(r.ok).toBe(false);
    expect(r.ok ? "" : r.reason).toMatch(re);
  });

  it("the marker announces a proof, keeps the caller's own AppData fields and carries no certificate", () => {
    const m = proofMarker({ tenant: "a" });
    expect(readProofMarker(m)).toEqual({ ok: true });
    expect(JSON.parse(m.toString())).toEqual({ tenant: "a", scrapez: { v: 2 } });
    expect(readProofMarker(proofMarker())).toEqual({ ok: true });
  });

  it("refuses an oversized proof or AppData before parsing it", () => {
    const b = conn();
    const big = Buffer.concat([makeCallerProof(ids.ec!, b), Buffer.alloc(MAX_PROOF_BYTES, 0x20)]);
    expect(reason(verifyCallerProof(big, b, caPem))).toMatch(/caller proof of \d+ bytes is over 16384/);
    const r = readProofMarker(proofMarker({ pad: "x".repeat(MAX_PROOF_BYTES) }));
    expect(r.ok ? "" : r.reason).toMatch(/AppData of \d+ bytes is over 16384/);
  });

  it("refuses a CA certificate presented as the caller's", () => {
    const caKey = read(`${dir}/ca.key`);
    const b = conn();
    const r = verifyCallerProof(makeCallerProof({ certPem: caPem, keyPem: caKey }, b), b, caPem);
    expect(reason(r)).toMatch(/is a CA certificate/);
  });

  it("a verifier remembers checked certificates (bounded) but still checks validity and every signature", () => {
    const v = new CallerProofVerifier(caPem, 2);
    const b = conn();
    const ec = makeCallerProof(ids.ec!, b);
    expectOk(v.verify(ec, b));
    expect(v.cachedCerts).toBe(1);
    expectOk(v.verify(ec, b));
    expect(reason(v.verify(ec, { ...b, hostHeader: randomBytes(24) }))).toMatch(/signature does not match/);
    expect(reason(v.verify(ec, b, Date.now() + 3 * 86_400_000))).toMatch(/expired/);
    expect(reason(v.verify(makeCallerProof(ids.rogue!, b), b))).toMatch(/not issued/);
    for (const k of ["ec384", "rsa", "ec"]) expectOk(v.verify(makeCallerProof(ids[k]!, b), b));
    expect(v.cachedCerts).toBe(2);
  });
});
