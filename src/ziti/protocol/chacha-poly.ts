/**
 * The ChaCha20 and Poly1305 primitives secretstream.ts needs beside node:crypto, in JavaScript: one ChaCha20 block
 * (the MAC key, the tag's block, small messages, re-keying), HChaCha20 (from one native ChaCha20 block), Poly1305 in
 * 22-bit float limbs (small messages and the exact fallback) and the 128-bit little-endian numbers of its BigInt
 * algebra. Tested against libsodium and the published vectors in test/unit/secretstream.test.ts. Not guaranteed
 * constant-time: see secretstream.ts's header on side channels.
 */
import { createCipheriv } from "node:crypto";

export const P = (1n << 130n) - 5n;
export const TWO128 = 1n << 128n;
export const MASK128 = TWO128 - 1n;
const MASK64 = (1n << 64n) - 1n;
const CLAMP = 0x0ffffffc0ffffffc0ffffffc0fffffffn;
const ZERO64 = Buffer.alloc(64);
const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]; // "expand 32-byte k"

const rotl = (v: number, c: number) => (v << c) | (v >>> (32 - c));

/** One ChaCha20 (IETF) block of (key words, counter, nonce words) into out[off..off+64]. */
export function chachaBlock(k: Uint32Array, counter: number, n: Uint32Array, out: Uint8Array, off: number): void {
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
export function words(b: Uint8Array): Uint32Array {
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

export function le128(b: Uint8Array, off = 0): bigint {
  SCRATCH.set(b.subarray(off, off + 16));
  return SCRATCH.readBigUInt64LE(0) | (SCRATCH.readBigUInt64LE(8) << 64n);
}

/** A partial last block (under 16 bytes), zero-padded, as a number. */
export function le128Partial(b: Uint8Array): bigint {
  SCRATCH.fill(0);
  SCRATCH.set(b);
  return SCRATCH.readBigUInt64LE(0) | (SCRATCH.readBigUInt64LE(8) << 64n);
}

export function toLe128(x: bigint): Buffer {
  const out = Buffer.allocUnsafe(16);
  out.writeBigUInt64LE(x & MASK64, 0);
  out.writeBigUInt64LE((x >> 64n) & MASK64, 8);
  return out;
}

/** Poly1305's one-time key from block 0: r (clamped) and s. */
export function polyKey(block0: Uint8Array): { r: bigint; s: bigint } {
  return { r: le128(block0, 0) & CLAMP, s: le128(block0, 16) };
}

const R22 = 4194304; // 2^22
/** r's clamp (RFC 8439 2.5) byte by byte: the top 4 bits of bytes 3, 7, 11, 15, the low 2 of bytes 4, 8, 12. */
const CLAMP_BYTES = Uint8Array.from(toLe128(CLAMP));
/** poly1305's scratch, one set for every call (each runs to completion): r's bytes and limbs, a block, a last block. */
const POLY_RB = new Uint8Array(16);
const POLY_R = new Float64Array(6);
const POLY_M = new Float64Array(6);
const POLY_LAST = new Uint8Array(16);

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
  const rl = POLY_R;
  const rb = POLY_RB;
  rb.set(key32.subarray(0, 16));
  for (let i = 0; i < 16; i++) rb[i] = rb[i]! & CLAMP_BYTES[i]!;
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
  const m = POLY_M;
  const last = POLY_LAST;
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
