/**
 * The native secretstream (src/ziti/protocol/secretstream.ts) against libsodium's own (libsodium-wrappers, the C
 * code the Go and C SDKs use): the same bytes out, the same messages accepted, the same state after each message,
 * re-keying and counter wrap included.
 */
import { randomBytes } from "node:crypto";
import sodium, { type StateAddress } from "libsodium-wrappers";
import { beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes } from "../../src/ziti/errors.js";
import { initCrypto, StreamDecryptor, StreamEncryptor } from "../../src/ziti/protocol/crypto.js";
import { hchacha20, poly1305 } from "../../src/ziti/protocol/chacha-poly.js";
import { SecretStream, TAG_FINAL, TAG_MESSAGE, TAG_PUSH, TAG_REKEY } from "../../src/ziti/protocol/secretstream.js";

beforeAll(initCrypto);

/** libsodium's state (k[32] || counter[4] || inonce[8] || pad[8]) lives in its WebAssembly memory at `state`. */
function heap(): Uint8Array {
  return (sodium as unknown as { libsodium: { HEAPU8: Uint8Array } }).libsodium.HEAPU8;
}
function sodiumState(state: StateAddress): Buffer {
  const at = state as unknown as number;
  return Buffer.from(heap().subarray(at, at + 44));
}
function setSodiumState(state: StateAddress, kNonce: Uint8Array): void {
  heap().set(kNonce, state as unknown as number);
}

const push = (s: StateAddress, m: Uint8Array, tag: number) =>
  Buffer.from(sodium.crypto_secretstream_xchacha20poly1305_push(s, m, null, tag));
const pull = (s: StateAddress, c: Uint8Array) => sodium.crypto_secretstream_xchacha20poly1305_pull(s, c, null);

/** Lengths on both of the native code's paths: |m| mod 16 = 0 or 8 (one AEAD call), and all others (derived MAC). */
const LENGTHS = [
  0,
  1,
  7,
  8,
  15,
  16,
  17,
  24,
  31,
  32,
  63,
  64,
  65,
  100,
  300,
  1000,
  1001,
  1400,
  4099,
  16 * 1024,
  16 * 1024 + 3,
  65536,
];
const randomLengths = (n: number) => Array.from({ length: n }, () => Math.floor(Math.random() * 70_000));

function forgeries(c: Buffer): { what: string; bytes: Uint8Array }[] {
  const flip = (i: number, bit = 1) => {
    const b = Buffer.from(c);
    b[i] = b[i]! ^ bit;
    return { what: `bit ${bit} of byte ${i} flipped`, bytes: b };
  };
  const macPlus = (d: bigint) => {
    // The MAC as a 128-bit number plus d: with the two top bits of Poly1305's h unknown to a derived MAC, the
    // neighbours (h ± 5, ± 2^128 mod p) are the ones a careless derivation would also accept.
    const b = Buffer.from(c);
    const v = (b.readBigUInt64LE(c.length - 16) | (b.readBigUInt64LE(c.length - 8) << 64n)) + d;
    const w = v & ((1n << 128n) - 1n);
    b.writeBigUInt64LE(w & 0xffffffffffffffffn, c.length - 16);
    b.writeBigUInt64LE(w >> 64n, c.length - 8);
    return { what: `MAC + ${d}`, bytes: b };
  };
  const out: { what: string; bytes: Uint8Array }[] = [
    flip(0),
    flip(0, 0x80),
    flip(c.length - 1),
    flip(c.length - 16, 4),
    macPlus(5n),
    macPlus(-5n),
    macPlus(1n),
  ];
  if (c.length > 17) out.push(flip(1), flip(c.length - 17, 0x40));
  out.push({ what: "last byte cut", bytes: c.subarray(0, c.length - 1) });
  out.push({ what: "a byte appended", bytes: Buffer.concat([c, Buffer.from([0])]) });
  return out;
}

describe("native secretstream against libsodium", () => {
  it("HChaCha20 matches draft-irtf-cfrg-xchacha's test vector (2.2.1)", () => {
    const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
    const input = Buffer.from("000000090000004a0000000031415927", "hex");
    expect(hchacha20(key, input).toString("hex")).toBe(
      "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc",
    );
  });

  it("Poly1305 (the exact fallback) matches RFC 8439's test vector (2.5.2)", () => {
    const key = Buffer.from("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b", "hex");
    expect(poly1305(Buffer.from("Cryptographic Forum Research Group"), key).toString("hex")).toBe(
      "a8061dc1305136c6c22b8baf0c0127a9",
    );
  });

  it("Poly1305 in 22-bit limbs equals Poly1305 in BigInt for every length and random or extreme keys", () => {
    const P = (1n << 130n) - 5n;
    const le = (b: Uint8Array) => b.reduceRight((v, x) => (v << 8n) | BigInt(x), 0n);
    const reference = (msg: Uint8Array, key: Uint8Array) => {
      const r = le(key.subarray(0, 16)) & 0x0ffffffc0ffffffc0ffffffc0fffffffn;
      let h = 0n;
      for (let off = 0; off < msg.length; off += 16) {
        const b = msg.subarray(off, off + 16);
        h = ((h + le(b) + (1n << BigInt(8 * b.length))) * r) % P;
      }
      return (h + le(key.subarray(16, 32))) & ((1n << 128n) - 1n);
    };
    const ff = Buffer.alloc(32, 0xff);
    for (let len = 0; len < 300; len++) {
      for (const key of [randomBytes(32), ff]) {
        for (const msg of [randomBytes(len), Buffer.alloc(len, 0xff)]) {
          expect(le(poly1305(msg, key)), `length ${len}`).toBe(reference(msg, key));
        }
      }
    }
  });

  it("a header gives libsodium's state (k = HChaCha20(key, header[0..16]), counter 1, inonce)", () => {
    for (let i = 0; i < 20; i++) {
      const key = randomBytes(32);
      const { state, header } = sodium.crypto_secretstream_xchacha20poly1305_init_push(key);
      expect(SecretStream.fromHeader(key, header).state).toEqual(sodiumState(state));
      const pulled = sodium.crypto_secretstream_xchacha20poly1305_init_pull(header, key);
      expect(SecretStream.fromHeader(key, header).state).toEqual(sodiumState(pulled));
    }
  });

  it("writes libsodium's bytes for every length and tag, and ends each message in libsodium's state", () => {
    const key = randomBytes(32);
    const { state, header } = sodium.crypto_secretstream_xchacha20poly1305_init_push(key);
    const ours = SecretStream.fromHeader(key, header);
    const tags = [TAG_MESSAGE, TAG_PUSH, TAG_MESSAGE, TAG_REKEY, TAG_MESSAGE, 0x80, TAG_FINAL];
    let n = 0;
    for (const len of [...LENGTHS, ...randomLengths(60)]) {
      const m = randomBytes(len);
      const tag = tags[n++ % tags.length]!;
      const c = ours.push(m, tag);
      expect(c.length).toBe(len + 17);
      expect(c.equals(push(state, m, tag)), `length ${len}, tag ${tag}`).toBe(true);
      expect(ours.state).toEqual(sodiumState(state));
    }
    expect(ours.fallbacks).toBe(0);
  });

  it("a message given in pieces is encrypted to libsodium's bytes of the whole, wherever it is split", () => {
    const key = randomBytes(32);
    const { state, header } = sodium.crypto_secretstream_xchacha20poly1305_init_push(key);
    const ours = SecretStream.fromHeader(key, header);
    const tags = [TAG_MESSAGE, TAG_PUSH, TAG_REKEY, 0x80];
    let n = 0;
    for (const len of [...LENGTHS, ...randomLengths(60)]) {
      const m = randomBytes(len);
      // Cuts at random places, and some pieces empty or a few bytes long: the MAC's derivation needs the last
      // |m| mod 16 bytes of the ciphertext, which may then span pieces.
      const cuts = [0, ...Array.from({ length: n % 5 }, () => Math.floor(Math.random() * (len + 1))), len];
      if (len > 3) cuts.push(len - 1, len - 3);
      cuts.sort((a, b) => a - b);
      const pieces = cuts.slice(1).map((end, i) => m.subarray(cuts[i]!, end));
      const tag = tags[n++ % tags.length]!;
      const parts = ours.pushParts(pieces, tag);
      const c = Buffer.concat(parts);
      expect(c.equals(push(state, m, tag)), `length ${len} in ${pieces.length} pieces, tag ${tag}`).toBe(true);
      expect(ours.state).toEqual(sodiumState(state));
    }
    expect(ours.fallbacks).toBe(0);
  });

  it("reads what libsodium writes: every length, MESSAGE, PUSH, REKEY and FINAL tags, unknown tag bits kept", () => {
    const key = randomBytes(32);
    const { state, header } = sodium.crypto_secretstream_xchacha20poly1305_init_push(key);
    const ours = SecretStream.fromHeader(key, header);
    const tags = [TAG_MESSAGE, TAG_REKEY, TAG_PUSH, TAG_REKEY, TAG_FINAL, TAG_MESSAGE, 0x42];
    let n = 0;
    for (const len of [...LENGTHS, ...randomLengths(60)]) {
      const m = randomBytes(len);
      const tag = tags[n++ % tags.length]!;
      const r = ours.pull(push(state, m, tag));
      expect(r, `length ${len}, tag ${tag}`).toBeDefined();
      expect(r!.tag).toBe(tag);
      expect(r!.message.equals(m)).toBe(true);
      expect(ours.state).toEqual(sodiumState(state));
    }
    expect(ours.fallbacks).toBe(0);
  });

  it("libsodium reads what we write, both through the connection classes and the stream", () => {
    const key = randomBytes(32);
    const enc = new StreamEncryptor(key);
    const state = sodium.crypto_secretstream_xchacha20poly1305_init_pull(enc.header, key);
    for (const len of [...LENGTHS, ...randomLengths(40)]) {
      const m = randomBytes(len);
      const r = pull(state, enc.encrypt(m));
      expect(r && Buffer.from(r.message).equals(m) && r.tag === TAG_MESSAGE, `length ${len}`).toBe(true);
    }
    const last = pull(state, enc.final());
    expect(last && last.message.length === 0 && last.tag === TAG_FINAL).toBe(true);
  });

  it("the JavaScript path (ChaCha20, BigInt Poly1305) and the native one agree with libsodium on every length", () => {
    const k = randomBytes(32);
    const nonce = Buffer.concat([Buffer.from([1, 0, 0, 0]), randomBytes(8)]);
    const streams = (["auto", "exact", "native"] as const).map((mode) => ({
      mode,
      writer: SecretStream.fromState(k, nonce, mode),
      reader: SecretStream.fromState(k, nonce, mode),
    }));
    const { state } = sodium.crypto_secretstream_xchacha20poly1305_init_push(randomBytes(32));
    setSodiumState(state, Buffer.concat([k, nonce]));
    const tags = [TAG_MESSAGE, TAG_REKEY, TAG_PUSH];
    let n = 0;
    for (const len of [...LENGTHS, 255, 256, 257, 264, 1535, 1536, 1537, ...randomLengths(20)]) {
      const m = randomBytes(len);
      const tag = tags[n++ % tags.length]!;
      const c = push(state, m, tag);
      for (const s of streams) {
        expect(s.writer.push(m, tag).equals(c), `${s.mode}, length ${len}`).toBe(true);
        const r = s.reader.pull(c);
        expect(r?.message.equals(m) && r.tag === tag, `${s.mode}, length ${len}`).toBe(true);
      }
    }
    for (const s of streams) {
      // the derived MAC never needed the exact path
      expect(s.writer.fallbacks + s.reader.fallbacks, s.mode).toBe(0);
      for (const f of forgeries(s.writer.push(randomBytes(33), TAG_MESSAGE))) {
        expect(s.reader.pull(f.bytes), `${s.mode}: ${f.what}`).toBeUndefined();
      }
    }
  });

  it("re-keys when the 32-bit counter wraps, as libsodium does, both ways", () => {
    const k = randomBytes(32);
    const nonce = Buffer.concat([Buffer.from([0xfe, 0xff, 0xff, 0xff]), randomBytes(8)]);
    const writer = SecretStream.fromState(k, nonce);
    const reader = SecretStream.fromState(k, nonce);
    const { state: sWriter } = sodium.crypto_secretstream_xchacha20poly1305_init_push(randomBytes(32));
    const sReader = sodium.crypto_secretstream_xchacha20poly1305_init_pull(randomBytes(24), randomBytes(32));
    setSodiumState(sWriter, Buffer.concat([k, nonce]));
    setSodiumState(sReader, Buffer.concat([k, nonce]));
    const counters: number[] = [];
    for (const len of [5, 40, 16, 3000]) {
      const m = randomBytes(len);
      const c = writer.push(m, TAG_MESSAGE);
      expect(c.equals(push(sWriter, m, TAG_MESSAGE))).toBe(true);
      expect(writer.state).toEqual(sodiumState(sWriter));
      counters.push(writer.state.readUInt32LE(32));
      // ours reads libsodium's message, libsodium reads ours (the same bytes), both in the same state after
      expect(reader.pull(c)?.message.equals(m)).toBe(true);
      expect(Buffer.from((pull(sReader, c) as { message: Uint8Array }).message).equals(m)).toBe(true);
      expect(reader.state).toEqual(sodiumState(sReader));
    }
    // 0xfffffffe -> 0xffffffff, then the wrap to 0 re-keys (counter back to 1, a new k), then counting on
    expect(counters).toEqual([0xffffffff, 1, 2, 3]);
    expect(writer.state.subarray(0, 32).equals(k)).toBe(false);
  });

  it("refuses forged, truncated, reordered, replayed and foreign messages with ZITI_CRYPTO_FAILED, and goes on", () => {
    const key = randomBytes(32);
    const enc = new StreamEncryptor(key);
    const dec = new StreamDecryptor(key);
    dec.init(enc.header);
    const refused = (c: Uint8Array, what: string) =>
      expect(() => dec.decrypt(c), what).toThrow(
        expect.objectContaining({
          code: ErrorCodes.CRYPTO_FAILED,
          message: "decryption failed: message forged or corrupted",
        }),
      );
    const other = new StreamEncryptor(key); // another stream under the same key
    for (const len of LENGTHS) {
      const m = randomBytes(len);
      const c = enc.encrypt(m);
      const next = enc.encrypt(randomBytes(len + 1));
      for (const f of forgeries(c)) refused(f.bytes, `length ${len}: ${f.what}`);
      refused(next, `length ${len}: the next message first (reordered)`);
      refused(other.encrypt(m), `length ${len}: a message of another stream`);
      refused(c.subarray(0, 16), `length ${len}: shorter than 17 bytes`);
      // a refused message leaves the stream as it was: the real one still decrypts, then the replay is refused
      expect(dec.decrypt(c).equals(m)).toBe(true);
      refused(c, `length ${len}: replayed`);
      expect(dec.decrypt(next).length).toBe(len + 1);
    }
  });

  it("refuses a header that is not 24 bytes and a key that is not 32 bytes", () => {
    const dec = new StreamDecryptor(randomBytes(32));
    for (const n of [0, 23, 25]) {
      expect(() => dec.init(randomBytes(n))).toThrow(
        expect.objectContaining({
          code: ErrorCodes.CRYPTO_FAILED,
          message: `crypto header must be 24 bytes, got ${n}`,
        }),
      );
    }
    expect(dec.initialized).toBe(false);
    expect(() => new StreamEncryptor(randomBytes(31))).toThrow(
      expect.objectContaining({ code: ErrorCodes.CRYPTO_FAILED, message: "stream key must be 32 bytes, got 31" }),
    );
    expect(() => new StreamDecryptor(randomBytes(33))).toThrow(
      expect.objectContaining({ code: ErrorCodes.CRYPTO_FAILED }),
    );
  });
});
