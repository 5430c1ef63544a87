/**
 * libsodium's crypto_secretstream_xchacha20poly1305 on Node's native OpenSSL ChaCha20 and Poly1305, byte for byte
 * what libsodium 1.0.x writes and accepts (the Go and C SDKs use libsodium), without its WebAssembly per message.
 *
 * A stream state is a 32-byte key k and a 12-byte nonce (LE32 counter || 8-byte inonce). A header of 24 random
 * bytes gives k = HChaCha20(key, header[0..16]), inonce = header[16..24], counter = 1. A message m with tag t is
 * c0 || c || mac (17 bytes more than m): under ChaCha20-IETF(k, nonce), block 1 encrypts [t, 63 zero bytes] (c0 is
 * its first byte), blocks 2.. encrypt m into c, and mac is Poly1305, keyed by block 0, of
 *
 *     S = B || c || zeros(|m| mod 16) || LE64(0) || LE64(64 + |m|)       (B: the whole encrypted 64-byte block)
 *
 * which is RFC 8439's AEAD over B || c except for the padding after c: the AEAD pads B || c to 16 bytes with
 * (16 - |m| mod 16) mod 16 zeros, libsodium writes |m| mod 16 of them (its code says "should have been
 * (0x10 - (sizeof block + mlen)) & 0xf"). The two agree when |m| mod 16 is 0 or 8; then one native AEAD call is
 * the whole message. Otherwise S is not block-aligned and no AEAD input reproduces it, so the MAC is derived:
 *
 * - the native AEAD gives tag_T over T = B || c padded its way (and, encrypting, c itself), and a second AEAD call
 *   with the aligned prefix X of B || c as its associated data gives tag_A over X || LE64(|X|) || LE64(0);
 * - both share X's Poly1305 accumulator; with r and s (block 0 of the keystream) the rest of T, A and S is a few
 *   multiplications mod 2^130 - 5 in BigInt (`candidates`).
 * - A tag is (h + s) mod 2^128 with h < 2^130 - 5, so tag_A leaves h_A's two top bits open: of its (at most)
 *   four candidates, the one whose derived tag_T is the AEAD's own is X's (another agrees with probability about
 *   2^-126; then, or if none does, S goes through `poly1305` whole: exact, slower, never seen).
 * - Decrypting, the candidate whose S-tag is the message's mac gives the tag_T the native AEAD decipher must
 *   verify while decrypting c: a message is accepted exactly when libsodium would (up to that 2^-126); with no
 *   such candidate, or two, `poly1305` over S decides.
 *
 * Messages up to SMALL_ALIGNED / SMALL_UNALIGNED bytes skip node:crypto: ChaCha20 and Poly1305 in JavaScript
 * (`chachaBlock`, `poly1305`) are faster there than a native call's fixed cost. Block 0 (r, s), block 1 and
 * re-keying always come from `chachaBlock`; HChaCha20 from one native ChaCha20 block.
 *
 * Side channels: OpenSSL's ChaCha20-Poly1305 is constant-time; the JavaScript ChaCha20 is 32-bit integer
 * arithmetic; BigInt and the float limbs are not guaranteed constant-time, and they handle one message's
 * one-time Poly1305 key. A message that fails to authenticate ends the connection (conn.ts), so an attacker gets
 * one try per key. MACs are compared with timingSafeEqual.
 *
 * After each message: inonce ^= mac[0..8], counter += 1; the tag's REKEY bit (FINAL has it) or a counter wrapped
 * to 0 re-keys: k || inonce = ChaCha20-IETF(k, nonce, block 0) XOR (k || inonce), counter = 1. Unknown tag bits
 * are accepted and returned, as libsodium does.
 */
import { createCipheriv, createDecipheriv, createSecretKey, timingSafeEqual, type KeyObject } from "node:crypto";

export const HEADERBYTES = 24;
export const KEYBYTES = 32;
/** Bytes a message grows by: the encrypted tag byte and the 16-byte MAC. */
export const ABYTES = 17;
export const TAG_MESSAGE = 0;
export const TAG_PUSH = 1;
export const TAG_REKEY = 2;
export const TAG_FINAL = TAG_PUSH | TAG_REKEY;

const P = (1n << 130n) - 5n;
const TWO128 = 1n << 128n;
const MASK128 = TWO128 - 1n;
const MASK64 = (1n << 64n) - 1n;
const CLAMP = 0x0ffffffc0ffffffc0ffffffc0fffffffn;
const ZERO64 = Buffer.alloc(64);
const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]; // "expand 32-byte k"
const AEAD = "chacha20-poly1305";
const TAG16 = { authTagLength: 16 } as const;
/**
 * Messages up to these lengths are done in JavaScript (ChaCha20 below, Poly1305 in 22-bit limbs): each native
 * call costs a microsecond or two, more than the work on a few hundred bytes, and a derived MAC takes two native
 * passes and BigInt. Measured (push + pull, best of 30, against each other): the JavaScript path is faster than
 * the native one below about 300 bytes when |m| mod 16 is 0 or 8 (one native AEAD call) and below about 1.5 KiB
 * otherwise. Beyond, the native path is faster than libsodium's WebAssembly from ~1 KiB (aligned) or ~5 KiB.
 */
export const SMALL_ALIGNED = 256;
export const SMALL_UNALIGNED = 1536;

const rotl = (v: number, c: number) => (v << c) | (v >>> (32 - c));

/** One ChaCha20 (IETF) block of (key words, counter, nonce words) into out[off..off+64]. */
function chachaBlock(k: Uint32Array, counter: number, n: Uint32Array, out: Uint8Array, off: number): void {
  const j0 = SIGMA[0]!,
    j1 = SIGMA[1]!,
    j2 = SIGMA[2]!,
    j3 = SIGMA[3]!;
  const j4 = k[0]!,
    j5 = k[1]!,
    j6 = k[2]!,
    j7 = k[3]!,
    j8 = k[4]!,
    j9 = k[5]!,
    j10 = k[6]!,
    j11 = k[7]!;
  const j12 = counter | 0,
    j13 = n[0]!,
    j14 = n[1]!,
    j15 = n[2]!;
  let x0 = j0,
    x1 = j1,
    x2 = j2,
    x3 = j3,
    x4 = j4,
    x5 = j5,
    x6 = j6,
    x7 = j7;
  let x8 = j8,
    x9 = j9,
    x10 = j10,
    x11 = j11,
    x12 = j12,
    x13 = j13,
    x14 = j14,
    x15 = j15;
  for (let i = 0; i < 10; i++) {
    x0 = (x0 + x4) | 0;
    x12 = rotl(x12 ^ x0, 16);
    x8 = (x8 + x12) | 0;
    x4 = rotl(x4 ^ x8, 12);
    x0 = (x0 + x4) | 0;
    x12 = rotl(x12 ^ x0, 8);
    x8 = (x8 + x12) | 0;
    x4 = rotl(x4 ^ x8, 7);
    x1 = (x1 + x5) | 0;
    x13 = rotl(x13 ^ x1, 16);
    x9 = (x9 + x13) | 0;
    x5 = rotl(x5 ^ x9, 12);
    x1 = (x1 + x5) | 0;
    x13 = rotl(x13 ^ x1, 8);
    x9 = (x9 + x13) | 0;
    x5 = rotl(x5 ^ x9, 7);
    x2 = (x2 + x6) | 0;
    x14 = rotl(x14 ^ x2, 16);
    x10 = (x10 + x14) | 0;
    x6 = rotl(x6 ^ x10, 12);
    x2 = (x2 + x6) | 0;
    x14 = rotl(x14 ^ x2, 8);
    x10 = (x10 + x14) | 0;
    x6 = rotl(x6 ^ x10, 7);
    x3 = (x3 + x7) | 0;
    x15 = rotl(x15 ^ x3, 16);
    x11 = (x11 + x15) | 0;
    x7 = rotl(x7 ^ x11, 12);
    x3 = (x3 + x7) | 0;
    x15 = rotl(x15 ^ x3, 8);
    x11 = (x11 + x15) | 0;
    x7 = rotl(x7 ^ x11, 7);
    x0 = (x0 + x5) | 0;
    x15 = rotl(x15 ^ x0, 16);
    x10 = (x10 + x15) | 0;
    x5 = rotl(x5 ^ x10, 12);
    x0 = (x0 + x5) | 0;
    x15 = rotl(x15 ^ x0, 8);
    x10 = (x10 + x15) | 0;
    x5 = rotl(x5 ^ x10, 7);
    x1 = (x1 + x6) | 0;
    x12 = rotl(x12 ^ x1, 16);
    x11 = (x11 + x12) | 0;
    x6 = rotl(x6 ^ x11, 12);
    x1 = (x1 + x6) | 0;
    x12 = rotl(x12 ^ x1, 8);
    x11 = (x11 + x12) | 0;
    x6 = rotl(x6 ^ x11, 7);
    x2 = (x2 + x7) | 0;
    x13 = rotl(x13 ^ x2, 16);
    x8 = (x8 + x13) | 0;
    x7 = rotl(x7 ^ x8, 12);
    x2 = (x2 + x7) | 0;
    x13 = rotl(x13 ^ x2, 8);
    x8 = (x8 + x13) | 0;
    x7 = rotl(x7 ^ x8, 7);
    x3 = (x3 + x4) | 0;
    x14 = rotl(x14 ^ x3, 16);
    x9 = (x9 + x14) | 0;
    x4 = rotl(x4 ^ x9, 12);
    x3 = (x3 + x4) | 0;
    x14 = rotl(x14 ^ x3, 8);
    x9 = (x9 + x14) | 0;
    x4 = rotl(x4 ^ x9, 7);
  }
  put(out, off, x0 + j0);
  put(out, off + 4, x1 + j1);
  put(out, off + 8, x2 + j2);
  put(out, off + 12, x3 + j3);
  put(out, off + 16, x4 + j4);
  put(out, off + 20, x5 + j5);
  put(out, off + 24, x6 + j6);
  put(out, off + 28, x7 + j7);
  put(out, off + 32, x8 + j8);
  put(out, off + 36, x9 + j9);
  put(out, off + 40, x10 + j10);
  put(out, off + 44, x11 + j11);
  put(out, off + 48, x12 + j12);
  put(out, off + 52, x13 + j13);
  put(out, off + 56, x14 + j14);
  put(out, off + 60, x15 + j15);
}

function put(out: Uint8Array, o: number, w: number): void {
  out[o] = w & 0xff;
  out[o + 1] = (w >>> 8) & 0xff;
  out[o + 2] = (w >>> 16) & 0xff;
  out[o + 3] = (w >>> 24) & 0xff;
}

/** The 32-bit little-endian words of `b` (a key, a nonce). */
function words(b: Uint8Array): Uint32Array {
  const v = Buffer.from(b.buffer, b.byteOffset, b.length);
  const w = new Uint32Array(b.length / 4);
  for (let i = 0; i < w.length; i++) w[i] = v.readUInt32LE(4 * i);
  return w;
}

/**
 * HChaCha20(key, input16): the 20 ChaCha rounds over (constants, key, input) without the final addition, words
 * 0-3 and 12-15. OpenSSL's ChaCha20 with the 16-byte input as its IV (counter word || nonce = state words 12-15)
 * outputs rounds + initial state, so subtracting the known initial words leaves the rounds' output.
 */
export function hchacha20(key: Uint8Array, input: Uint8Array): Buffer {
  const block = createCipheriv("chacha20", key, input.subarray(0, 16)).update(ZERO64);
  const inp = Buffer.from(input.buffer, input.byteOffset, 16);
  const out = Buffer.allocUnsafe(32);
  for (let i = 0; i < 4; i++) {
    out.writeUInt32LE((block.readUInt32LE(4 * i) - SIGMA[i]!) >>> 0, 4 * i);
    out.writeUInt32LE((block.readUInt32LE(48 + 4 * i) - inp.readUInt32LE(4 * i)) >>> 0, 16 + 4 * i);
  }
  return out;
}

const SCRATCH = Buffer.alloc(16);

function le128(b: Uint8Array, off = 0): bigint {
  SCRATCH.set(b.subarray(off, off + 16));
  return SCRATCH.readBigUInt64LE(0) | (SCRATCH.readBigUInt64LE(8) << 64n);
}

function toLe128(x: bigint): Buffer {
  const out = Buffer.allocUnsafe(16);
  out.writeBigUInt64LE(x & MASK64, 0);
  out.writeBigUInt64LE((x >> 64n) & MASK64, 8);
  return out;
}

/** Poly1305's one-time key from block 0: r (clamped) and s. */
function polyKey(block0: Uint8Array): { r: bigint; s: bigint } {
  return { r: le128(block0, 0) & CLAMP, s: le128(block0, 16) };
}

const R22 = 4194304; // 2^22

/** The 16 bytes at b[o..o+16] (a Poly1305 block, hibit: its 2^128 bit, 0 for a padded last block) in 22-bit limbs. */
function limbs(b: Uint8Array, o: number, hibit: number, out: Float64Array): void {
  const w0 = (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
  const w1 = (b[o + 4]! | (b[o + 5]! << 8) | (b[o + 6]! << 16) | (b[o + 7]! << 24)) >>> 0;
  const w2 = (b[o + 8]! | (b[o + 9]! << 8) | (b[o + 10]! << 16) | (b[o + 11]! << 24)) >>> 0;
  const w3 = (b[o + 12]! | (b[o + 13]! << 8) | (b[o + 14]! << 16) | (b[o + 15]! << 24)) >>> 0;
  out[0] = w0 & 0x3fffff;
  out[1] = (w0 >>> 22) | ((w1 & 0xfff) << 10);
  out[2] = (w1 >>> 12) | ((w2 & 0x3) << 20);
  out[3] = (w2 >>> 2) & 0x3fffff;
  out[4] = (w2 >>> 24) | ((w3 & 0x3fff) << 8);
  out[5] = (w3 >>> 14) + hibit * 0x40000; // bit 128 is bit 18 of the limb at 110
}

/**
 * Poly1305 of `msg` (RFC 8439 2.5) in JavaScript numbers: six 22-bit limbs, so every product sum stays below
 * 2^53 and is exact (r's limbs are at most 22 bits, 2^132 = 20 mod 2^130 - 5 folds the high products back, and
 * 20·r_j·h_i·6 < 2^52). The final reduction is in BigInt. For small messages and the rare fallback.
 */
export function poly1305(msg: Uint8Array, key32: Uint8Array): Buffer {
  const rl = new Float64Array(6);
  const rb = Buffer.from(key32.subarray(0, 16));
  for (const [i, m] of [
    [3, 0x0f],
    [7, 0x0f],
    [11, 0x0f],
    [15, 0x0f],
    [4, 0xfc],
    [8, 0xfc],
    [12, 0xfc],
  ] as const) {
    rb[i] = rb[i]! & m;
  }
  limbs(rb, 0, 0, rl);
  const r0 = rl[0]!,
    r1 = rl[1]!,
    r2 = rl[2]!,
    r3 = rl[3]!,
    r4 = rl[4]!,
    r5 = rl[5]!;
  const s1 = 20 * r1,
    s2 = 20 * r2,
    s3 = 20 * r3,
    s4 = 20 * r4,
    s5 = 20 * r5;
  let h0 = 0,
    h1 = 0,
    h2 = 0,
    h3 = 0,
    h4 = 0,
    h5 = 0;
  const m = new Float64Array(6);
  const last = new Uint8Array(16);
  for (let off = 0; off < msg.length; off += 16) {
    const len = msg.length - off;
    if (len >= 16) {
      limbs(msg, off, 1, m);
    } else {
      last.fill(0);
      last.set(msg.subarray(off), 0);
      last[len] = 1;
      limbs(last, 0, 0, m);
    }
    h0 += m[0]!;
    h1 += m[1]!;
    h2 += m[2]!;
    h3 += m[3]!;
    h4 += m[4]!;
    h5 += m[5]!;
    let d0 = h0 * r0 + h1 * s5 + h2 * s4 + h3 * s3 + h4 * s2 + h5 * s1;
    let d1 = h0 * r1 + h1 * r0 + h2 * s5 + h3 * s4 + h4 * s3 + h5 * s2;
    let d2 = h0 * r2 + h1 * r1 + h2 * r0 + h3 * s5 + h4 * s4 + h5 * s3;
    let d3 = h0 * r3 + h1 * r2 + h2 * r1 + h3 * r0 + h4 * s5 + h5 * s4;
    let d4 = h0 * r4 + h1 * r3 + h2 * r2 + h3 * r1 + h4 * r0 + h5 * s5;
    let d5 = h0 * r5 + h1 * r4 + h2 * r3 + h3 * r2 + h4 * r1 + h5 * r0;
    let c = Math.floor(d0 / R22);
    d0 -= c * R22;
    d1 += c;
    c = Math.floor(d1 / R22);
    d1 -= c * R22;
    d2 += c;
    c = Math.floor(d2 / R22);
    d2 -= c * R22;
    d3 += c;
    c = Math.floor(d3 / R22);
    d3 -= c * R22;
    d4 += c;
    c = Math.floor(d4 / R22);
    d4 -= c * R22;
    d5 += c;
    c = Math.floor(d5 / R22);
    d5 -= c * R22;
    d0 += 20 * c; // 2^132 = 20 mod p
    c = Math.floor(d0 / R22);
    h0 = d0 - c * R22;
    h1 = d1 + c;
    h2 = d2;
    h3 = d3;
    h4 = d4;
    h5 = d5;
  }
  const h =
    BigInt(h0) +
    (BigInt(h1) << 22n) +
    (BigInt(h2) << 44n) +
    (BigInt(h3) << 66n) +
    (BigInt(h4) << 88n) +
    (BigInt(h5) << 110n);
  return toLe128(((h % P) + le128(key32, 16)) & MASK128);
}

/** The trailer libsodium's MAC covers after B || c: zeros(|m| mod 16) || LE64(0) || LE64(64 + |m|). */
function sodiumTrailer(mlen: number): Buffer {
  const k = mlen & 15;
  const t = Buffer.alloc(k + 16);
  t.writeBigUInt64LE(BigInt(64 + mlen), k + 8);
  return t;
}

/** What libsodium feeds Poly1305 for a message: B || c || trailer. */
function sodiumMacInput(block: Uint8Array, c: Uint8Array): Buffer {
  return Buffer.concat([block, c, sodiumTrailer(c.length)]);
}

/**
 * For a message whose |m| mod 16 (k) is neither 0 nor 8: from tag_A (X || LE64(|X|) || LE64(0)) the (at most
 * four) candidates for g = H_X·r (H_X: Poly1305's accumulator after X), each as the tag the AEAD's own padding
 * gives (tag_T) and libsodium's (tag_S). After X, with L the partial last block of B || c (k bytes) and
 * n = 64 + |m|, as numbers (little-endian) with their 2^(8·len) bits:
 *
 *     T: B1 = L (zero-padded to 16), B2 = LE64(0) || LE64(n)          h_T = ((g + B1·r) + B2)·r
 *     S: V = L || zeros(k) || LE64(0) || LE64(n), 2k + 16 bytes, in blocks C1, C2 (and C3 if k > 8)
 */
function candidates(
  tagA: Buffer,
  r: bigint,
  s: bigint,
  xlen: number,
  last: Uint8Array,
  mlen: number,
): { tagT: bigint; tagS: bigint }[] {
  const k = last.length;
  SCRATCH.fill(0);
  SCRATCH.set(last);
  const l = SCRATCH.readBigUInt64LE(0) | (SCRATCH.readBigUInt64LE(8) << 64n);
  const n = BigInt(64 + mlen);
  const lo = (le128(tagA) - s) & MASK128;
  const g0 = (lo - (((BigInt(xlen) + TWO128) * r) % P) + P) % P; // h_A = g + LE64(|X|)·r: the length block
  let hT = ((((g0 + (l + TWO128) * r) % P) + (n << 64n) + TWO128) * r) % P;
  const v = l | (n << BigInt(8 * (2 * k + 8)));
  const c1 = (v & MASK128) + TWO128;
  let hS = (g0 + c1 * r) % P;
  const rest = v >> 128n; // 2k bytes
  if (k < 8) {
    hS = ((hS + rest + (1n << BigInt(16 * k))) * r) % P;
  } else {
    hS = ((hS + (rest & MASK128) + TWO128) * r) % P;
    hS = ((hS + (rest >> 128n) + (1n << BigInt(8 * (2 * k - 16)))) * r) % P;
  }
  // candidate i: h_A = lo + i·2^128 (< p), so g = g0 + i·2^128, and a tail of j blocks moves by i·2^128·r^(j-1)
  const stepT = (TWO128 * r) % P;
  const stepS = k < 8 ? stepT : (stepT * r) % P;
  const out: { tagT: bigint; tagS: bigint }[] = [];
  for (let hA = lo; hA < P; hA += TWO128) {
    out.push({ tagT: (hT + s) & MASK128, tagS: (hS + s) & MASK128 });
    hT += stepT;
    if (hT >= P) hT -= P;
    hS += stepS;
    if (hS >= P) hS -= P;
  }
  return out;
}

/** tag_A: Poly1305 (AEAD form) of the aligned prefix X = (block || c)[0..xlen] as associated data. */
function prefixTag(key: KeyObject, nonce: Buffer, block: Buffer, c: Uint8Array, xlen: number): Buffer {
  const q = createCipheriv(AEAD, key, nonce, TAG16);
  // Poly1305 takes associated data in as many pieces as given (OpenSSL pads it once, at its end); the length is
  // only checked for CCM.
  q.setAAD(block, { plaintextLength: 0 });
  if (xlen > 64) q.setAAD(c.subarray(0, xlen - 64), { plaintextLength: 0 });
  q.final();
  return q.getAuthTag();
}

export interface Pulled {
  message: Buffer;
  tag: number;
}

/** One direction of a secretstream: push (encrypt) or pull (decrypt) messages in order. */
export class SecretStream {
  #k: Buffer;
  #key: KeyObject;
  #kw: Uint32Array;
  /** LE32 counter || 8-byte inonce. */
  readonly #nonce = Buffer.alloc(12);
  /** "auto"; tests: "exact" (the JavaScript path, `poly1305` over S, at every length) or "native" (never it). */
  readonly #mode: "auto" | "exact" | "native";
  /** Derived-MAC messages that needed `poly1305` over S after all (forged ones; otherwise about never). */
  fallbacks = 0;

  private constructor(k: Buffer, nonce: Uint8Array, mode: "auto" | "exact" | "native") {
    this.#k = k;
    this.#key = createSecretKey(k);
    this.#kw = words(k);
    this.#nonce.set(nonce);
    this.#mode = mode;
  }

  /** The state a 24-byte header gives under a 32-byte key (init_push with that header, or init_pull). */
  static fromHeader(key: Uint8Array, header: Uint8Array): SecretStream {
    if (key.length !== KEYBYTES) throw new RangeError(`secretstream key must be ${KEYBYTES} bytes, got ${key.length}`);
    if (header.length !== HEADERBYTES) {
      throw new RangeError(`secretstream header must be ${HEADERBYTES} bytes, got ${header.length}`);
    }
    const nonce = Buffer.alloc(12);
    nonce.writeUInt32LE(1, 0);
    nonce.set(header.subarray(16, 24), 4);
    return new SecretStream(hchacha20(key, header.subarray(0, 16)), nonce, "auto");
  }

  /**
   * Tests only: a state set directly (k, counter || inonce), e.g. just before the counter wraps; `mode` "exact"
   * takes the JavaScript path at every length, "native" the native calls even for small messages.
   */
  static fromState(k: Uint8Array, nonce: Uint8Array, mode: "auto" | "exact" | "native" = "auto"): SecretStream {
    if (k.length !== KEYBYTES || nonce.length !== 12)
      throw new RangeError("secretstream state: 32-byte k, 12-byte nonce");
    return new SecretStream(Buffer.from(k), nonce, mode);
  }

  /** The state (k || counter || inonce), for tests. */
  get state(): Buffer {
    return Buffer.concat([this.#k, this.#nonce]);
  }

  #small(mlen: number): boolean {
    if (this.#mode !== "auto") return this.#mode === "exact";
    const k = mlen & 15;
    return mlen <= (k === 0 || k === 8 ? SMALL_ALIGNED : SMALL_UNALIGNED);
  }

  /** Encrypts one message with `tag` (0-255): c0 || c || mac, ABYTES longer than `m`. */
  push(m: Uint8Array, tag: number): Buffer {
    if (!Number.isInteger(tag) || tag < 0 || tag > 255)
      throw new RangeError(`secretstream tag must be 0-255, got ${tag}`);
    const mlen = m.length;
    const out = Buffer.allocUnsafe(mlen + ABYTES);
    let mac: Buffer;
    if (this.#small(mlen)) {
      const ks = this.#keystream(mlen + 128); // block 0 (the MAC key), block 1 (the tag's), blocks 2.. (m's)
      const block = ks.subarray(64, 128);
      block[0] = block[0]! ^ tag;
      const c = out.subarray(1, 1 + mlen);
      for (let i = 0; i < mlen; i++) c[i] = m[i]! ^ ks[128 + i]!;
      mac = poly1305(sodiumMacInput(block, c), ks);
      out[0] = block[0]!;
    } else {
      const first = Buffer.alloc(64);
      first[0] = tag;
      const e = createCipheriv(AEAD, this.#key, this.#nonce, TAG16);
      const block = e.update(first);
      const c = e.update(m);
      e.final();
      const k = mlen & 15;
      mac = k === 0 || k === 8 ? e.getAuthTag() : this.#derivedMac(block, c, e.getAuthTag());
      out[0] = block[0]!;
      c.copy(out, 1);
    }
    mac.copy(out, 1 + mlen);
    this.#advance(mac, tag);
    return out;
  }

  /**
   * Decrypts and authenticates the next message; undefined (state unchanged) if it is shorter than ABYTES or its
   * MAC does not verify (forged, corrupted, truncated, reordered, or from another stream).
   */
  pull(input: Uint8Array): Pulled | undefined {
    if (input.length < ABYTES) return undefined;
    const mlen = input.length - ABYTES;
    const c = input.subarray(1, 1 + mlen);
    const mac = input.subarray(1 + mlen);
    const small = this.#small(mlen);
    const ks = this.#keystream(small ? mlen + 128 : 128);
    const block = ks.subarray(64, 128);
    const tag = input[0]! ^ block[0]!;
    block[0] = input[0]!;
    const k = mlen & 15;
    if (small) {
      if (!timingSafeEqual(poly1305(sodiumMacInput(block, c), ks), mac)) return undefined;
      const message = Buffer.allocUnsafe(mlen);
      for (let i = 0; i < mlen; i++) message[i] = c[i]! ^ ks[128 + i]!;
      this.#advance(mac, tag);
      return { message, tag };
    }
    let tagT: Uint8Array = mac;
    if (k !== 0 && k !== 8) {
      const { r, s } = polyKey(ks);
      const xlen = 64 + mlen - k;
      const tagA = prefixTag(this.#key, this.#nonce, block, c, xlen);
      const match = candidates(tagA, r, s, xlen, c.subarray(mlen - k), mlen).filter((x) =>
        timingSafeEqual(toLe128(x.tagS), mac),
      );
      if (match.length !== 1) {
        // No candidate (a forged or corrupted message, which ends the connection) or two (odds about 2^-126):
        // decide on S itself, so that the derivation never refuses what libsodium accepts.
        this.fallbacks++;
        if (!timingSafeEqual(poly1305(sodiumMacInput(block, c), ks), mac)) return undefined;
        const message = createCipheriv("chacha20", this.#key, ivAt(2, this.#nonce)).update(c);
        this.#advance(mac, tag);
        return { message, tag };
      }
      tagT = toLe128(match[0]!.tagT);
    }
    // The native AEAD decrypts c and checks tag_T over B || c (its padding): with tag_T derived from a candidate
    // whose S-tag is the message's, this passes only if that candidate was X's own, i.e. libsodium's MAC holds.
    const d = createDecipheriv(AEAD, this.#key, this.#nonce, TAG16);
    d.setAuthTag(tagT);
    d.update(block);
    const message = d.update(c);
    try {
      d.final();
    } catch {
      return undefined;
    }
    this.#advance(mac, tag);
    return { message, tag };
  }

  /** `len` bytes of keystream from block 0 of the current (k, nonce), in JavaScript. */
  #keystream(len: number): Buffer {
    const blocks = Math.ceil(len / 64);
    const out = Buffer.allocUnsafe(blocks * 64);
    const nonce = words(this.#nonce);
    for (let b = 0; b < blocks; b++) chachaBlock(this.#kw, b, nonce, out, 64 * b);
    return out;
  }

  #derivedMac(block: Buffer, c: Buffer, tagT: Buffer): Buffer {
    const mlen = c.length;
    const k = mlen & 15;
    const block0 = this.#keystream(64);
    const { r, s } = polyKey(block0);
    const xlen = 64 + mlen - k;
    const want = le128(tagT);
    const tagA = prefixTag(this.#key, this.#nonce, block, c, xlen);
    const match = candidates(tagA, r, s, xlen, c.subarray(mlen - k), mlen).filter((x) => x.tagT === want);
    if (match.length === 1) return toLe128(match[0]!.tagS);
    this.fallbacks++;
    return poly1305(sodiumMacInput(block, c), block0);
  }

  #advance(mac: Uint8Array, tag: number): void {
    const n = this.#nonce;
    for (let i = 0; i < 8; i++) n[4 + i] = n[4 + i]! ^ mac[i]!;
    const counter = (n.readUInt32LE(0) + 1) >>> 0;
    n.writeUInt32LE(counter, 0);
    if ((tag & TAG_REKEY) !== 0 || counter === 0) this.#rekey();
  }

  /** k || inonce = ChaCha20(k, counter || inonce, block 0) XOR (k || inonce); counter = 1. */
  #rekey(): void {
    const ks = this.#keystream(40);
    const k = Buffer.allocUnsafe(32);
    for (let i = 0; i < 32; i++) k[i] = this.#k[i]! ^ ks[i]!;
    for (let i = 0; i < 8; i++) this.#nonce[4 + i] = this.#nonce[4 + i]! ^ ks[32 + i]!;
    this.#k = k;
    this.#key = createSecretKey(k);
    this.#kw = words(k);
    this.#nonce.writeUInt32LE(1, 0);
  }
}

/** OpenSSL's 16-byte ChaCha20 IV: LE32 block counter || 12-byte nonce. */
function ivAt(counter: number, nonce: Uint8Array): Buffer {
  const iv = Buffer.allocUnsafe(16);
  iv.writeUInt32LE(counter, 0);
  iv.set(nonce, 4);
  return iv;
}
