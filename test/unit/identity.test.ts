/** Identity files: the formats `ziti edge enroll` writes, every way they can be wrong, and our 0600 save. */
import "reflect-metadata";
import { KeyObject, createPrivateKey, webcrypto } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import * as x509 from "@peculiar/x509";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../src/ziti/errors.js";
import {
  type Identity,
  identityModeWarning,
  loadIdentity,
  parseIdentity,
  saveIdentity,
  tlsOptions,
} from "../../src/ziti/internal.js";

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const EC = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" };
const RSA = {
  name: "RSASSA-PKCS1-v1_5",
  hash: "SHA-256",
  publicExponent: new Uint8Array([1, 0, 1]),
  modulusLength: 2048,
};
const ZT_API = "https://127.0.0.1:1280/edge/client/v1";

interface Pki {
  caPem: string;
  leafPem: string;
  keyPem: string; // PKCS#8
  sec1KeyPem: string; // "EC PRIVATE KEY", as Go writes EC keys
  otherKeyPem: string; // a key that does not match leafPem
  rsaLeafPem: string;
  rsaPkcs1KeyPem: string; // "RSA PRIVATE KEY", as Go writes RSA keys
}

async function makePki(): Promise<Pki> {
  const notBefore = new Date(Date.now() - 60_000);
  const notAfter = new Date(Date.now() + 24 * 3600_000);
  const gen = (alg: typeof EC | typeof RSA) =>
    webcrypto.subtle.generateKey(alg, true, ["sign", "verify"]) as Promise<webcrypto.CryptoKeyPair>;
  const caKeys = await gen(EC);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=test-root-ca",
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: EC,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  const issue = async (cn: string, serial: string, keys: webcrypto.CryptoKeyPair) =>
    x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: `CN=${cn}`,
      issuer: ca.subject,
      notBefore,
      notAfter,
      signingKey: caKeys.privateKey,
      publicKey: keys.publicKey,
      signingAlgorithm: EC,
    });
  const leafKeys = await gen(EC);
  const rsaKeys = await gen(RSA);
  const leaf = await issue("leaf-id", "02", leafKeys);
  const rsaLeaf = await issue("rsa-id", "03", rsaKeys);
  const pkcs8 = (k: webcrypto.CryptoKey) => KeyObject.from(k).export({ type: "pkcs8", format: "pem" }).toString();
  const keyPem = pkcs8(leafKeys.privateKey);
  return {
    caPem: ca.toString("pem") + "\n",
    leafPem: leaf.toString("pem") + "\n",
    keyPem,
    sec1KeyPem: createPrivateKey(keyPem).export({ type: "sec1", format: "pem" }).toString(),
    otherKeyPem: pkcs8((await gen(EC)).privateKey),
    rsaLeafPem: rsaLeaf.toString("pem") + "\n",
    rsaPkcs1KeyPem: createPrivateKey(pkcs8(rsaKeys.privateKey)).export({ type: "pkcs1", format: "pem" }).toString(),
  };
}

let pki: Pki;
let dir: string;

beforeAll(async () => {
  pki = await makePki();
  dir = mkdtempSync(join(tmpdir(), "scrapez-identity-"));
  mkdirSync(join(dir, "pki"));
  writeFileSync(join(dir, "pki", "cert.pem"), pki.leafPem);
  writeFileSync(join(dir, "pki", "key.pem"), pki.keyPem, { mode: 0o600 });
  writeFileSync(join(dir, "pki", "ca.pem"), pki.caPem);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function good(over: Record<string, unknown> = {}, id: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ztAPI: ZT_API,
    ztAPIs: null,
    configTypes: null,
    id: { key: `pem:${pki.keyPem}`, cert: `pem:${pki.leafPem}`, ca: `pem:${pki.caPem}`, ...id },
    enableHa: false,
    ...over,
  };
}

let fileNo = 0;
function writeIdentity(json: unknown, mode = 0o600): string {
  const path = join(dir, `identity-${++fileNo}.json`);
  writeFileSync(path, typeof json === "string" ? json : JSON.stringify(json), { mode });
  chmodSync(path, mode);
  return path;
}

describe("loadIdentity rejects bad identity files with IDENTITY_INVALID naming the file and the field", () => {
  const corruptCert = "pem:-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n";
  const corruptKey = "pem:-----BEGIN PRIVATE KEY-----\nAAAAAAAA\n-----END PRIVATE KEY-----\n";
  const cases: [string, () => unknown, RegExp][] = [
    ["a JSON array", () => [1, 2], /: must be a JSON object\. Is this an enrolled identity file/],
    ["no ztAPI", () => good({ ztAPI: undefined }), /: ztAPI: missing/],
    [
      "an http ztAPI",
      () => good({ ztAPI: "http://127.0.0.1:1280/edge/client/v1" }),
      /: ztAPI: is not an https:\/\/ URL/,
    ],
    ["a ztAPI that is no URL", () => good({ ztAPI: "controller" }), /: ztAPI: is not an https:\/\/ URL/],
    ["ztAPIs not a list", () => good({ ztAPIs: "https://a" }), /: ztAPIs: must be a list of https:\/\/ URLs/],
    ["no id", () => good({ id: undefined }), /: id: missing/],
    ["no id.key", () => good({}, { key: undefined }), /: id\.key: missing\. Is this an enrolled identity file/],
    ["no id.cert", () => good({}, { cert: undefined }), /: id\.cert: missing/],
    ["no id.ca", () => good({}, { ca: undefined }), /: id\.ca: missing/],
    ["an empty id.cert", () => good({}, { cert: "" }), /: id\.cert: is empty/],
    ["a number as id.cert", () => good({}, { cert: 42 }), /: id\.cert: must be a string/],
    ["no PEM in id.cert", () => good({}, { cert: "pem:hello" }), /: id\.cert: not a PEM certificate .*Re-enroll/],
    [
      "a corrupt certificate",
      () => good({}, { cert: corruptCert }),
      /: id\.cert: the certificate is not a valid X\.509/,
    ],
    ["a certificate as id.key", () => good({}, { key: `pem:${pki.leafPem}` }), /: id\.key: not a PEM private key/],
    ["a corrupt key", () => good({}, { key: corruptKey }), /: id\.key: not a PEM private key \(/],
    [
      "a key from another enrollment",
      () => good({}, { key: `pem:${pki.otherKeyPem}` }),
      /: id\.key: does not match the public key of id\.cert .*re-enroll/,
    ],
    ["a corrupt CA bundle", () => good({}, { ca: "pem:not a bundle" }), /: id\.ca: not a PEM certificate/],
    [
      "a second bad block in the CA bundle",
      () => good({}, { ca: `pem:${pki.caPem}${corruptCert.slice(4)}` }),
      /: id\.ca: certificate 2 of 2 is not a valid X\.509/,
    ],
    [
      "a key engine scheme",
      () => good({}, { key: "pkcs11:token=x;object=y" }),
      /: id\.key: unsupported storage "pkcs11:" .*use pem:<PEM>, file:<path> or a plain file path/,
    ],
    [
      "a referenced file that does not exist",
      () => good({}, { ca: "missing/ca.pem" }),
      /: id\.ca: cannot read \/.*\/missing\/ca\.pem: no such file\. Fix the path \(relative paths are resolved against /,
    ],
    [
      "a file: URL to a missing file",
      () => good({}, { cert: "file:///nonexistent/cert.pem" }),
      /: id\.cert: cannot read \/nonexistent\/cert\.pem: no such file/,
    ],
  ];
  it.each(cases)("%s", async (_name, make, message) => {
    const path = writeIdentity(make());
    const err = await loadIdentity(path).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ErrorCodes.IDENTITY_INVALID, name: "ZitiError" });
    expect((err as Error).message.startsWith(`identity ${path}: `)).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  it("a missing identity file, a non-JSON file, and a JWT passed as identity say so", async () => {
    await expect(loadIdentity(join(dir, "nope.json"))).rejects.toMatchObject({
      code: ErrorCodes.IDENTITY_INVALID,
      message: expect.stringMatching(/nope\.json: cannot read the file: no such file/),
    });
    await expect(loadIdentity(writeIdentity("{ not json"))).rejects.toMatchObject({
      message: expect.stringMatching(/: not JSON \(.*\): expected the JSON written by `ziti edge enroll`/),
    });
    const jwt = `${Buffer.from('{"alg":"RS256"}').toString("base64url")}.${Buffer.from("{}").toString("base64url")}.c2ln`;
    await expect(loadIdentity(writeIdentity(jwt))).rejects.toMatchObject({
      message: expect.stringMatching(/this is an enrollment token \(JWT\), not an identity: enroll it first/),
    });
  });

  it("parseIdentity names its source (or says inline) in errors", async () => {
    await expect(parseIdentity({}, dir)).rejects.toThrow(/^identity \(inline JSON\): id: missing/);
    await expect(parseIdentity({}, dir, "from-env")).rejects.toThrow(/^identity from-env: /);
  });
});

describe("loadIdentity reads every value storage", () => {
  const expectGood = (id: Identity, json: unknown) => {
    expect(id.ztAPI).toBe(ZT_API);
    expect(id.certPem).toBe(pki.leafPem);
    expect(id.keyPem).toBe(pki.keyPem);
    expect(id.caPem).toBe(pki.caPem);
    expect(id.name).toBe("leaf-id");
    expect(id.raw).toEqual(json);
  };

  it("inline pem: values", async () => {
    const json = good();
    const path = writeIdentity(json);
    const id = await loadIdentity(path);
    expectGood(id, json);
    expect(id.path).toBe(path);
    expect(id.ztAPIs).toBeUndefined();
  });

  it("file:// absolute URLs, file: paths and bare paths relative to the identity file's directory", async () => {
    const variants = [
      {
        cert: pathToFileURL(join(dir, "pki", "cert.pem")).href,
        key: pathToFileURL(join(dir, "pki", "key.pem")).href,
        ca: pathToFileURL(join(dir, "pki", "ca.pem")).href,
      },
      { cert: `file:${join(dir, "pki", "cert.pem")}`, key: "file:pki/key.pem", ca: "file:./pki/ca.pem" },
      { cert: "pki/cert.pem", key: "./pki/key.pem", ca: join(dir, "pki", "ca.pem") },
    ];
    for (const v of variants) {
      const json = good({}, v);
      // The test's working directory is not `dir`: relative paths must resolve against the file, not the cwd.
      expect(process.cwd()).not.toBe(dir);
      expectGood(await loadIdentity(writeIdentity(json)), json);
    }
  });

  it("keys as Go writes them (SEC1 EC, PKCS#1 RSA) and a cert followed by its chain", async () => {
    const sec1 = await loadIdentity(writeIdentity(good({}, { key: `pem:${pki.sec1KeyPem}` })));
    expect(sec1.name).toBe("leaf-id");
    const rsa = await loadIdentity(
      writeIdentity(good({}, { key: `pem:${pki.rsaPkcs1KeyPem}`, cert: `pem:${pki.rsaLeafPem}` })),
    );
    expect(rsa.name).toBe("rsa-id");
    const chained = await loadIdentity(writeIdentity(good({}, { cert: `pem:${pki.leafPem}${pki.caPem}` })));
    expect(chained.name).toBe("leaf-id");
    expect(chained.certPem).toBe(pki.leafPem + pki.caPem);
  });

  it("an origin-only ztAPI (older files) gets the client API path; ztAPIs alone supplies ztAPI", async () => {
    const old = await loadIdentity(writeIdentity(good({ ztAPI: "https://127.0.0.1:1280" })));
    expect(old.ztAPI).toBe(ZT_API);
    const ha = await loadIdentity(
      writeIdentity(good({ ztAPI: undefined, ztAPIs: ["https://a.example:1280/", "https://b.example:1280"] })),
    );
    expect(ha.ztAPI).toBe("https://a.example:1280/edge/client/v1");
    expect(ha.ztAPIs).toEqual(["https://a.example:1280/edge/client/v1", "https://b.example:1280/edge/client/v1"]);
  });

  it("a group/world-readable file still loads, with a warning the application shows (src/overlay/open.ts)", async () => {
    const path = writeIdentity(good(), 0o644);
    expect(statSync(path).mode & 0o777).toBe(0o644);
    const id = await loadIdentity(path);
    expect(id).toMatchObject({ name: "leaf-id" });
    expect(id.warnings).toEqual([
      `identity file ${path} is readable by group/others (mode 0644) and holds a private key: chmod 600 ${path}`,
    ]);
    expect((await loadIdentity(writeIdentity(good(), 0o600))).warnings).toBeUndefined();
  });
});

describe("identityModeWarning", () => {
  const me = { uid: 10001, gids: [10001] };
  it.each([
    ["0600, ours: no warning", { mode: 0o100600, uid: 10001, gid: 10001 }, false],
    ["0400, ours: no warning", { mode: 0o100400, uid: 10001, gid: 10001 }, false],
    ["0644, ours (a careless cp): warns", { mode: 0o100644, uid: 10001, gid: 10001 }, true],
    ["0640, ours: warns, the group read is not needed", { mode: 0o100640, uid: 10001, gid: 10001 }, true],
    ["0604, ours: warns", { mode: 0o100604, uid: 10001, gid: 10001 }, true],
    [
      "0440, root's, group ours (a Kubernetes Secret with fsGroup): no warning",
      { mode: 0o100440, uid: 0, gid: 10001 },
      false,
    ],
    ["0444, root's, group ours: warns, others can read it too", { mode: 0o100444, uid: 0, gid: 10001 }, true],
    ["0440, root's, another group: warns", { mode: 0o100440, uid: 0, gid: 0 }, true],
  ])("%s", (_name, st, warns) => {
    const w = identityModeWarning("/ids/x.json", st, me);
    if (warns) expect(w).toMatch(/^identity file \/ids\/x\.json is readable by group\/others \(mode 0\d{3}\)/);
    else expect(w).toBeUndefined();
  });
});

describe("saveIdentity", () => {
  it("writes pem: values with mode 0600, and the result loads back the same", async () => {
    const source = await loadIdentity(writeIdentity(good({ configTypes: ["intercept.v1"] }, { key: "pki/key.pem" })));
    const out = join(dir, "saved", "id.json");
    mkdirSync(join(dir, "saved"));
    await saveIdentity(out, source);
    expect(statSync(out).mode & 0o777).toBe(0o600);
    const json = JSON.parse(readFileSync(out, "utf8")) as Record<string, unknown>;
    expect(Object.keys(json)).toEqual(["ztAPI", "ztAPIs", "configTypes", "id", "enableHa"]);
    expect(json).toMatchObject({
      ztAPI: ZT_API,
      ztAPIs: null,
      configTypes: ["intercept.v1"],
      id: { key: `pem:${pki.keyPem}`, cert: `pem:${pki.leafPem}`, ca: `pem:${pki.caPem}` },
      enableHa: false,
    });
    const back = await loadIdentity(out);
    for (const k of ["ztAPI", "ztAPIs", "certPem", "keyPem", "caPem", "name"] as const)
      expect(back[k]).toEqual(source[k]);
    expect(readdirSync(join(dir, "saved"))).toEqual(["id.json"]); // no temp file left behind
  });

  it("replaces a group/world-readable file with a 0600 one, whatever the umask", async () => {
    const out = join(dir, "replace.json");
    writeFileSync(out, "old", { mode: 0o644 });
    chmodSync(out, 0o666);
    const old = process.umask(0o000);
    try {
      await saveIdentity(out, await parseIdentity(good(), dir));
    } finally {
      process.umask(old);
    }
    expect(statSync(out).mode & 0o777).toBe(0o600);
    expect((await loadIdentity(out)).name).toBe("leaf-id");
  });

  it("fails with IDENTITY_INVALID naming the path when it cannot write", async () => {
    const out = join(dir, "no-such-dir", "id.json");
    await expect(saveIdentity(out, await parseIdentity(good(), dir))).rejects.toMatchObject({
      code: ErrorCodes.IDENTITY_INVALID,
      message: expect.stringMatching(/^identity .*no-such-dir\/id\.json: cannot write the identity file: ENOENT/),
    });
  });
});

it("tlsOptions gives node:tls the identity's cert, key and CA bundle", async () => {
  const id = await parseIdentity(good(), dir);
  expect(tlsOptions(id)).toEqual({ cert: pki.leafPem, key: pki.keyPem, ca: pki.caPem });
});
