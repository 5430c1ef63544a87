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
  MAX_PROOF_BYTES,
  identityKeyPin,
  isKeyPin,
  makeCallerProof,
  verifyCallerProof,
  type ProofResult,
} from "../../src/ziti/api/caller-proof.js";
import { issueLeaf, makePki, type LeafKey } from "../harness/pki.js";
import { tempDir } from "../harness/process.js";

const dir = tempDir("caller-proof");
let caPem: string;
const ids: Record<string, { certPem: string; keyPem: string }> = {};
const read = (f: string) => readFileSync(f, "utf8");
const kx = () => randomBytes(32);

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
      const key = kx();
      const appData = makeCallerProof(ids[k]!, "node", key);
      expect(appData.length).toBeLessThan(4096);
      const r = verifyCallerProof(appData, "node", key, caPem);
      expectOk(r);
      expect(r.spkiSha256).toBe(opensslPin(`${dir}/id-${k}.crt`));
      expect(r.spkiSha256).toBe(identityKeyPin(ids[k]!.certPem));
      expect(isKeyPin(r.spkiSha256)).toBe(true);
    },
  );

  it.each(["ec", "ec384", "rsa"])(
    "a %s proof signed on the thread pool (makeAsync, what dials use) verifies like one signed inline",
    async (k) => {
      const key = kx();
      const prover = new CallerProver(ids[k]!);
      const appData = Buffer.from(JSON.stringify({ scrapez: await prover.makeAsync("node", key) }));
      const r = verifyCallerProof(appData, "node", key, caPem);
      expectOk(r);
      expect(r.spkiSha256).toBe(prover.pin);
      expect(reason(verifyCallerProof(appData, "other", key, caPem))).toBeTruthy();
    },
  );

  it("pins keys, not names: two certificates with the same CN have different pins", () => {
    expect(identityKeyPin(ids.ec!.certPem)).not.toBe(identityKeyPin(ids.rsa!.certPem));
  });

  it("refuses a tampered signature", () => {
    const key = kx();
    const j = JSON.parse(makeCallerProof(ids.ec!, "node", key).toString()) as { scrapez: { sig: string } };
    const sig = Buffer.from(j.scrapez.sig, "base64");
    sig[sig.length - 3]! ^= 0x01;
    j.scrapez.sig = sig.toString("base64");
    expect(reason(verifyCallerProof(Buffer.from(JSON.stringify(j)), "node", key, caPem))).toMatch(
      /signature does not match/,
    );
  });

  it("refuses a proof made for another service", () => {
    const key = kx();
    const r = verifyCallerProof(makeCallerProof(ids.rsa!, "other", key), "node", key, caPem);
    expect(reason(r)).toMatch(/signature does not match this connection \(service "node"/);
  });

  it("refuses a proof replayed on a connection with another key-exchange key", () => {
    const r = verifyCallerProof(makeCallerProof(ids.ec!, "node", kx()), "node", kx(), caPem);
    expect(reason(r)).toMatch(/signature does not match/);
  });

  it("refuses a certificate not issued by the overlay's CA, even with a valid signature", () => {
    const key = kx();
    const r = verifyCallerProof(makeCallerProof(ids.rogue!, "node", key), "node", key, caPem);
    expect(reason(r)).toMatch(/issuer "CN=rogue-ca"\) was not issued by this overlay's CA/);
  });

  it("refuses an expired certificate", () => {
    const key = kx();
    const inThreeDays = Date.now() + 3 * 86_400_000;
    const r = verifyCallerProof(makeCallerProof(ids.ec!, "node", key), "node", key, caPem, inThreeDays);
    expect(reason(r)).toMatch(/certificate is expired or not yet valid/);
  });

  it("refuses a connection without a 32-byte key-exchange key (not end-to-end encrypted)", () => {
    const key = kx();
    const appData = makeCallerProof(ids.ec!, "node", key);
    expect(reason(verifyCallerProof(appData, "node", undefined, caPem))).toMatch(/not end-to-end encrypted/);
    expect(reason(verifyCallerProof(appData, "node", key.subarray(0, 16), caPem))).toMatch(/not end-to-end/);
  });

  it.each([
    ["nothing", undefined, /no caller proof \(the dialer sent no AppData\)/],
    ["not JSON", "\u0000garbage{", /AppData is not JSON/],
    ["a JSON array", "[1,2]", /has no "scrapez" object/],
    ["a Go tunneler's AppData", '{"dst_protocol":"tcp","dst_ip":"127.0.0.1","dst_port":"80"}', /no "scrapez"/],
    ["scrapez not an object", '{"scrapez":"x"}', /"scrapez" is not an object/],
    ["scrapez null", '{"scrapez":null}', /"scrapez" is not an object/],
    ["the marker only", '{"scrapez":{"v":1}}', /sent a marker only/],
    ["an unknown version", '{"scrapez":{"v":2,"cert":"AA==","sig":"AA=="}}', /unsupported caller proof version 2/],
    ["a numeric cert", '{"scrapez":{"v":1,"cert":12,"sig":"AA=="}}', /"cert" is not base64/],
    ["a non-base64 sig", '{"scrapez":{"v":1,"cert":"AAAA","sig":"!!"}}', /"sig" is not base64/],
    ["a cert that is not X.509", '{"scrapez":{"v":1,"cert":"AAAA","sig":"AAAA"}}', /not an X\.509 certificate/],
  ])("refuses %s with a one-line reason", (_name, text, re) => {
    const r = verifyCallerProof(text === undefined ? undefined : Buffer.from(text), "node", kx(), caPem);
    expect(reason(r)).toMatch(re);
    expect(reason(r)).not.toMatch(/\n/);
  });

  it("refuses oversized AppData before parsing it", () => {
    const key = kx();
    const big = Buffer.from(
      JSON.stringify({
        pad: "x".repeat(MAX_PROOF_BYTES),
        scrapez: JSON.parse(makeCallerProof(ids.ec!, "node", key).toString()).scrapez as unknown,
      }),
    );
    expect(reason(verifyCallerProof(big, "node", key, caPem))).toMatch(/AppData of \d+ bytes is over 16384/);
  });

  it("refuses a CA certificate presented as the caller's", () => {
    const caKey = read(`${dir}/ca.key`);
    const key = kx();
    const r = verifyCallerProof(makeCallerProof({ certPem: caPem, keyPem: caKey }, "node", key), "node", key, caPem);
    expect(reason(r)).toMatch(/is a CA certificate/);
  });

  it("a verifier remembers checked certificates (bounded) but still checks validity and every signature", () => {
    const v = new CallerProofVerifier(caPem, 2);
    const key = kx();
    const ec = makeCallerProof(ids.ec!, "node", key);
    expectOk(v.verify(ec, "node", key));
    expect(v.cachedCerts).toBe(1);
    expectOk(v.verify(ec, "node", key));
    expect(reason(v.verify(ec, "node", kx()))).toMatch(/signature does not match/);
    expect(reason(v.verify(ec, "node", key, Date.now() + 3 * 86_400_000))).toMatch(/expired/);
    expect(reason(v.verify(makeCallerProof(ids.rogue!, "node", key), "node", key))).toMatch(/not issued/);
    for (const k of ["ec384", "rsa", "ec"]) expectOk(v.verify(makeCallerProof(ids[k]!, "node", key), "node", key));
    expect(v.cachedCerts).toBe(2);
  });

  it("keeps a caller's own AppData fields next to the proof", () => {
    const key = kx();
    const proof = JSON.parse(makeCallerProof(ids.ec!, "node", key).toString()) as object;
    const appData = Buffer.from(JSON.stringify({ tenant: "a", ...proof }));
    expectOk(verifyCallerProof(appData, "node", key, caPem));
  });
});
