import { createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { jwtPayload, makeCsr, renewalDueAt } from "../../src/ziti/internal.js";
import { parseBindConfig } from "../../src/bind/config.js";

const day = 86_400_000;

describe("renewalDueAt", () => {
  const t = { notBefore: new Date(0), notAfter: new Date(365 * day) };
  it("defaults to a third of the lifetime before expiry", () => {
    expect(renewalDueAt(t).getTime()).toBe(365 * day - (365 * day) / 3);
  });
  it("takes renewBefore when given (0: at expiry)", () => {
    expect(renewalDueAt(t, 30 * day).getTime()).toBe(335 * day);
    expect(renewalDueAt(t, 0).getTime()).toBe(365 * day);
  });
});

describe("makeCsr", () => {
  for (const type of ["ec", "rsa"] as const) {
    it(`${type}: signs with the existing key by default (the pin stays), a new one on a key roll`, async () => {
      const { privateKey } =
        type === "ec"
          ? generateKeyPairSync("ec", { namedCurve: "P-256" })
          : generateKeyPairSync("rsa", { modulusLength: 2048 });
      const keyPem = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
      const same = await makeCsr("abc123", keyPem);
      expect(same.keyPem).toBe(keyPem);
      expect(same.csrPem).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
      const spki = (pem: string) => createPublicKey(createPrivateKey(pem)).export({ type: "spki", format: "der" });
      const rolled = await makeCsr("abc123", keyPem, true);
      expect(spki(rolled.keyPem).equals(spki(keyPem))).toBe(false);
      expect(createPrivateKey(rolled.keyPem).asymmetricKeyType).toBe(type);
    });
  }
});

describe("jwtPayload", () => {
  it("decodes the payload without verifying; undefined for garbage", () => {
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
    expect(jwtPayload(`${enc({ alg: "none" })}.${enc({ z_asid: "s1", exp: 9 })}.sig`)).toEqual({
      z_asid: "s1",
      exp: 9,
    });
    expect(jwtPayload("not-a-jwt")).toBeUndefined();
    expect(jwtPayload("a.%%%.c")).toBeUndefined();
  });
});

describe("config: zitiAuth and renewCertBeforeDays", () => {
  const base = { identity: __filename, targets: [{ service: "s", upstream: "http://127.0.0.1:9100" }] };
  it("defaults to auto; SCRAPEZ_ZITI_AUTH and SCRAPEZ_RENEW_CERT_BEFORE_DAYS override the file", () => {
    expect(parseBindConfig(base, "t", "/", {}).zitiAuth).toBe("auto");
    const c = parseBindConfig({ ...base, zitiAuth: "oidc" }, "t", "/", {
      SCRAPEZ_ZITI_AUTH: "legacy",
      SCRAPEZ_RENEW_CERT_BEFORE_DAYS: "30",
    });
    expect(c.zitiAuth).toBe("legacy");
    expect(c.renewCertBeforeDays).toBe(30);
  });
  it("rejects an unknown mode, naming the field", () => {
    expect(() => parseBindConfig({ ...base, zitiAuth: "kerberos" }, "t", "/", {})).toThrow(/zitiAuth/);
  });
});
