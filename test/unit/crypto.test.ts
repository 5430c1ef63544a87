/** End-to-end encryption: libsodium's crypto_kx + secretstream, checked against an independent derivation. */
import { createHash, createPrivateKey, createPublicKey, diffieHellman, randomBytes } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../src/ziti/errors.js";
import {
  clientSessionKeys,
  generateKeyPair,
  initCrypto,
  serverSessionKeys,
  StreamDecryptor,
  StreamEncryptor,
} from "../../src/ziti/internal.js";

beforeAll(initCrypto);

function x25519(priv: Uint8Array, pub: Uint8Array): Buffer {
  const der = (prefix: string, k: Uint8Array) => Buffer.concat([Buffer.from(prefix, "hex"), k]);
  return diffieHellman({
    privateKey: createPrivateKey({ key: der("302e020100300506032b656e04220420", priv), format: "der", type: "pkcs8" }),
    publicKey: createPublicKey({ key: der("302a300506032b656e032100", pub), format: "der", type: "spki" }),
  });
}

describe("end-to-end encryption", () => {
  it("session keys equal X25519 + BLAKE2b-512(q ‖ client_pk ‖ server_pk), as the Go SDK derives them", () => {
    const dialer = generateKeyPair();
    const host = generateKeyPair();
    const c = clientSessionKeys(dialer, host.publicKey);
    const s = serverSessionKeys(host, dialer.publicKey);
    const q = x25519(dialer.privateKey, host.publicKey);
    const h = createHash("blake2b512").update(q).update(dialer.publicKey).update(host.publicKey).digest();
    expect(Buffer.from(c.rx)).toEqual(h.subarray(0, 32));
    expect(Buffer.from(c.tx)).toEqual(h.subarray(32, 64));
    expect(Buffer.from(s.rx)).toEqual(Buffer.from(c.tx));
    expect(Buffer.from(s.tx)).toEqual(Buffer.from(c.rx));
  });

  it("round-trips many messages in order, empty and 1 MiB included, both ways", () => {
    const c = clientSessionKeys(generateKeyPair(), generateKeyPair().publicKey); // keys only need to pair up
    const enc = new StreamEncryptor(c.tx);
    const dec = new StreamDecryptor(c.tx);
    expect(enc.header).toHaveLength(24);
    dec.init(enc.header);
    const msgs = [
      Buffer.alloc(0),
      randomBytes(1),
      randomBytes(1024 * 1024),
      ...Array.from({ length: 50 }, (_, i) => randomBytes(i * 31)),
    ];
    for (const m of msgs) {
      const ct = enc.encrypt(m);
      expect(ct.length).toBe(m.length + 17);
      expect(dec.decrypt(ct).equals(m)).toBe(true);
    }
  });

  it("fails with ZITI_CRYPTO_FAILED on tampering, a wrong key, a bad header, or data before the header", () => {
    const key = randomBytes(32);
    const enc = new StreamEncryptor(key);
    const ct = enc.encrypt(Buffer.from("secret"));
    const tampered = Buffer.from(ct);
    tampered[3]! ^= 1;
    const d1 = new StreamDecryptor(key);
    d1.init(enc.header);
    expect(() => d1.decrypt(tampered)).toThrow(expect.objectContaining({ code: ErrorCodes.CRYPTO_FAILED }));
    const wrong = new StreamDecryptor(randomBytes(32));
    wrong.init(enc.header);
    expect(() => wrong.decrypt(ct)).toThrow(expect.objectContaining({ code: ErrorCodes.CRYPTO_FAILED }));
    expect(() => new StreamDecryptor(key).init(Buffer.alloc(23))).toThrow(/24 bytes/);
    expect(() => new StreamDecryptor(key).decrypt(ct)).toThrow(
      expect.objectContaining({ code: ErrorCodes.CRYPTO_FAILED }),
    );
  });
});
