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
 * - both share X's Poly1305 accumulator; with r and s (block 0, one 128-byte native ChaCha20 call) the rest of
 *   T, A and S is a few multiplications mod 2^130 - 5 in BigInt (`#tail`).
 * - A tag is (h + s) mod 2^128 with h < 2^130 - 5, so tag_A leaves h_A's two top bits open: of its (at most)
 *   four candidates, the one whose derived tag_T is the AEAD's own is X's (another agrees with probability about
 *   2^-126; then, or if none does, the whole of S goes through `poly1305` in BigInt: exact, slow, never seen).
 * - Decrypting, the candidate whose S-tag is the message's mac gives the tag_T the native AEAD decipher must
 *   verify while decrypting c: a message is accepted exactly when libsodium would (up to that 2^-126).
 *
 * After each message: inonce ^= mac[0..8], counter += 1; the tag's REKEY bit (FINAL has it) or a counter wrapped
 * to 0 re-keys: k || inonce = ChaCha20-IETF(k, nonce, block 0) XOR (k || inonce), counter = 1. Unknown tag bits
 * are accepted and returned, as libsodium does.
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from "node:crypto";

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
const CLAMP = 0x0ffffffc0ffffffc0ffffffc0fffffffn;
const ZERO128 = Buffer.alloc(128);
const SIGMA = [0x61707865, 0x3320646e, 0x79622d32, 0x6b206574]; // "expand 32-byte k"
const AEAD = "chacha20-poly1305";
const TAG16 = { authTagLength: 16 } as const;

/** ChaCha20 (IETF) keystream: `len` bytes from block `counter` of (key, nonce12). */
function keystream(key: KeyObject, counter: number, nonce: Uint8Array, len: number): Buffer {
  return createCipheriv("chacha20", key, ivAt(counter, nonce)).update(ZERO128.subarray(0, len));
}

/** OpenSSL's 16-byte ChaCha20 IV: LE32 block counter || 12-byte nonce. */
function ivAt(counter: number, nonce: Uint8Array): Buffer {
  const iv = Buffer.allocUnsafe(16);
  iv.writeUInt32LE(counter, 0);
  iv.set(nonce, 4);
  return iv;
}

/**
 * HChaCha20(key, input16): the 20 ChaCha rounds over (constants, key, input) without the final addition, words
 * 0-3 and 12-15. OpenSSL's ChaCha20 with the 16-byte input as its IV (counter word || nonce = state words 12-15)
 * outputs rounds + initial state, so subtracting the known initial words leaves the rounds' output.
 */
export function hchacha20(key: Uint8Array, input: Uint8Array): Buffer {
  const block = createCipheriv("chacha20", key, input.subarray(0, 16)).update(ZERO128.subarray(0, 64));
  const inp = Buffer.from(input.buffer, input.byteOffset, 16);
  const out = Buffer.allocUnsafe(32);
  for (let i = 0; i < 4; i++) {
    out.writeUInt32LE((block.readUInt32LE(4 * i) - SIGMA[i]!) >>> 0, 4 * i);
    out.writeUInt32LE((block.readUInt32LE(48 + 4 * i) - inp.readUInt32LE(4 * i)) >>> 0, 16 + 4 * i);
  }
  return out;
}

function le128(b: Uint8Array, off = 0): bigint {
  const v = Buffer.from(b.buffer, b.byteOffset + off, 16);
  return v.readBigUInt64LE(0) | (v.readBigUInt64LE(8) << 64n);
}

function toLe128(x: bigint): Buffer {
  const out = Buffer.allocUnsafe(16);
  out.writeBigUInt64LE(x & 0xffffffffffffffffn, 0);
  out.writeBigUInt64LE((x >> 64n) & 0xffffffffffffffffn, 8);
  return out;
}

/** A Poly1305 block of up to 16 bytes as a number, with its 2^(8·len) bit (RFC 8439 2.5.1). */
function polyBlock(b: Uint8Array, off: number, len: number): bigint {
  if (len === 16) return le128(b, off) + TWO128;
  let v = 0n;
  for (let i = len - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[off + i]!);
  return v + (1n << BigInt(8 * len));
}

/** Poly1305's one-time key from block 0: r (clamped) and s. */
function polyKey(block0: Uint8Array): { r: bigint; s: bigint } {
  return { r: le128(block0, 0) & CLAMP, s: le128(block0, 16) };
}

/** Poly1305 of `msg` in BigInt: the exact reference for the derived MACs (tests; and the fallback). */
export function poly1305(msg: Uint8Array, key32: Uint8Array): Buffer {
  const { r, s } = polyKey(key32);
  let h = 0n;
  for (let off = 0; off < msg.length; off += 16) {
    h = ((h + polyBlock(msg, off, Math.min(16, msg.length - off))) * r) % P;
  }
  return toLe128((h + s) & MASK128);
}

/** The trailer libsodium's MAC covers after B || c: zeros(|m| mod 16) || LE64(0) || LE64(64 + |m|). */
function sodiumTrailer(mlen: number): Buffer {
  const k = mlen & 15;
  const t = Buffer.alloc(k + 16);
  t.writeBigUInt64LE(BigInt(64 + mlen), k + 8);
  return t;
}

/** What libsodium feeds Poly1305 for a message: B || c || trailer. Only the fallback and tests build it. */
function sodiumMacInput(block: Uint8Array, c: Uint8Array): Buffer {
  return Buffer.concat([block, c, sodiumTrailer(c.length)]);
}

/**
 * The Poly1305 accumulator after `tail`, given g = (accumulator after the aligned prefix X) · r, i.e. the state
 * right after X's last multiplication folded into the first tail block: (H_X + C1)·r = g + C1·r.
 */
function tail(g: bigint, r: bigint, t: Uint8Array): bigint {
  let h = g;
  for (let off = 0; off < t.length; off += 16) {
    const b = polyBlock(t, off, Math.min(16, t.length - off));
    h = off === 0 ? (h + b * r) % P : ((h + b) * r) % P;
  }
  return h;
}

/**
 * For a message whose |m| mod 16 is neither 0 nor 8: the candidates for g = H_X·r from tag_A, each with the
 * tag the AEAD's own padding gives (tag_T) and libsodium's (tag_S). `last` is B || c's partial last block.
 */
function candidates(
  tagA: Buffer,
  r: bigint,
  s: bigint,
  xlen: number,
  last: Uint8Array,
  mlen: number,
): { tagT: bigint; tagS: bigint }[] {
  const lo = (le128(tagA) - s) & MASK128;
  const lA = BigInt(xlen) + TWO128; // LE64(|X|) || LE64(0), a full block
  const lAr = (lA * r) % P;
  const tTail = Buffer.alloc(32); // last || zeros(16 - k) || LE64(0) || LE64(64 + |m|)
  tTail.set(last, 0);
  tTail.writeBigUInt64LE(BigInt(64 + mlen), 24);
  const sTail = Buffer.concat([last, sodiumTrailer(mlen)]);
  const out: { tagT: bigint; tagS: bigint }[] = [];
  for (let hA = lo; hA < P; hA += TWO128) {
    const g = (((hA - lAr) % P) + P) % P;
    out.push({ tagT: (tail(g, r, tTail) + s) & MASK128, tagS: (tail(g, r, sTail) + s) & MASK128 });
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
  /** LE32 counter || 8-byte inonce. */
  readonly #nonce = Buffer.alloc(12);
  /** Tests: derive every non-aligned MAC through `poly1305` over the whole input (the fallback path). */
  readonly #exact: boolean;
  /** Messages whose MAC took the exact BigInt path (forgeries, tests' exact mode; otherwise about never). */
  fallbacks = 0;

  private constructor(k: Buffer, nonce: Uint8Array, exact: boolean) {
    this.#k = k;
    this.#key = createSecretKey(k);
    this.#nonce.set(nonce);
    this.#exact = exact;
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
    return new SecretStream(hchacha20(key, header.subarray(0, 16)), nonce, false);
  }

  /** Tests only: a state set directly (k, counter || inonce), e.g. just before the counter wraps. */
  static fromState(k: Uint8Array, nonce: Uint8Array, opts: { exact?: boolean } = {}): SecretStream {
    if (k.length !== KEYBYTES || nonce.length !== 12)
      throw new RangeError("secretstream state: 32-byte k, 12-byte nonce");
    return new SecretStream(Buffer.from(k), nonce, opts.exact === true);
  }

  /** The state (k || counter || inonce), for tests. */
  get state(): Buffer {
    return Buffer.concat([this.#k, this.#nonce]);
  }

  /** Encrypts one message with `tag` (0-255): c0 || c || mac, ABYTES longer than `m`. */
  push(m: Uint8Array, tag: number): Buffer {
    if (!Number.isInteger(tag) || tag < 0 || tag > 255)
      throw new RangeError(`secretstream tag must be 0-255, got ${tag}`);
    const mlen = m.length;
    const first = Buffer.alloc(64);
    first[0] = tag;
    const e = createCipheriv(AEAD, this.#key, this.#nonce, TAG16);
    const block = e.update(first);
    const c = e.update(m);
    e.final();
    const k = mlen & 15;
    let mac: Buffer;
    if (k === 0 || k === 8) {
      mac = e.getAuthTag();
    } else {
      mac = this.#derivedMac(block, c, e.getAuthTag());
    }
    const out = Buffer.allocUnsafe(mlen + ABYTES);
    out[0] = block[0]!;
    c.copy(out, 1);
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
    const ks = keystream(this.#key, 0, this.#nonce, 128);
    const block = ks.subarray(64, 128);
    const tagKey = block[0]!;
    block[0] = input[0]!;
    const k = mlen & 15;
    let tagT: Uint8Array = mac;
    if (k !== 0 && k !== 8) {
      const { r, s } = polyKey(ks);
      const claimed = le128(mac);
      const xlen = 64 + mlen - k;
      const match = this.#exact
        ? []
        : candidates(prefixTag(this.#key, this.#nonce, block, c, xlen), r, s, xlen, c.subarray(mlen - k), mlen).filter(
            (x) => x.tagS === claimed,
          );
      if (match.length === 1) {
        tagT = toLe128(match[0]!.tagT);
      } else {
        // No candidate (a forgery, or tests' exact mode) or an ambiguous pair: check S itself, decrypt natively.
        this.fallbacks++;
        if (!poly1305(sodiumMacInput(block, c), ks.subarray(0, 32)).equals(mac)) return undefined;
        const plain = createCipheriv("chacha20", this.#key, ivAt(2, this.#nonce)).update(c);
        const tag = input[0]! ^ tagKey;
        this.#advance(mac, tag);
        return { message: plain, tag };
      }
    }
    const d = createDecipheriv(AEAD, this.#key, this.#nonce, TAG16);
    d.setAuthTag(tagT);
    const tag = d.update(block)[0]!;
    const message = d.update(c);
    try {
      d.final();
    } catch {
      return undefined;
    }
    this.#advance(mac, tag);
    return { message, tag };
  }

  #derivedMac(block: Buffer, c: Buffer, tagT: Buffer): Buffer {
    const mlen = c.length;
    const k = mlen & 15;
    const block0 = keystream(this.#key, 0, this.#nonce, 32);
    if (!this.#exact) {
      const { r, s } = polyKey(block0);
      const xlen = 64 + mlen - k;
      const want = le128(tagT);
      const tagA = prefixTag(this.#key, this.#nonce, block, c, xlen);
      const match = candidates(tagA, r, s, xlen, c.subarray(mlen - k), mlen).filter((x) => x.tagT === want);
      if (match.length === 1) return toLe128(match[0]!.tagS);
    }
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

  #rekey(): void {
    const ks = keystream(this.#key, 0, this.#nonce, 40);
    const k = Buffer.allocUnsafe(32);
    for (let i = 0; i < 32; i++) k[i] = this.#k[i]! ^ ks[i]!;
    for (let i = 0; i < 8; i++) this.#nonce[4 + i] = this.#nonce[4 + i]! ^ ks[32 + i]!;
    this.#k = k;
    this.#key = createSecretKey(k);
    this.#nonce.writeUInt32LE(1, 0);
  }
}
