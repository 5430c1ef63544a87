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
 * (`chachaBlock`, `poly1305` in chacha-poly.ts) are faster there than a native call's fixed cost. Block 0 (r, s),
 * block 1 and re-keying always come from `chachaBlock`; HChaCha20 from one native ChaCha20 block.
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
import {
  P,
  TWO128,
  MASK128,
  chachaBlock,
  hchacha20,
  le128,
  le128Partial,
  poly1305,
  polyKey,
  toLe128,
  words,
} from "./chacha-poly.js";

export const HEADERBYTES = 24;
export const KEYBYTES = 32;
/** Bytes a message grows by: the encrypted tag byte and the 16-byte MAC. */
export const ABYTES = 17;
export const TAG_MESSAGE = 0;
export const TAG_PUSH = 1;
export const TAG_REKEY = 2;
export const TAG_FINAL = TAG_PUSH | TAG_REKEY;

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
  const l = le128Partial(last);
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

/**
 * tag_A: Poly1305 (AEAD form) of the aligned prefix X = block || the first `clen` bytes of c (c given whole or in
 * pieces) as associated data.
 */
function prefixTag(
  key: KeyObject,
  nonce: Buffer,
  block: Buffer,
  c: Uint8Array | readonly Uint8Array[],
  clen: number,
): Buffer {
  const q = createCipheriv(AEAD, key, nonce, TAG16);
  // Poly1305 takes associated data in as many pieces as given (OpenSSL pads it once, at its end); the length is
  // only checked for CCM.
  q.setAAD(block, { plaintextLength: 0 });
  let left = clen;
  for (const piece of c instanceof Uint8Array ? [c] : c) {
    if (left <= 0) break;
    q.setAAD(piece.length <= left ? piece : piece.subarray(0, left), { plaintextLength: 0 });
    left -= piece.length;
  }
  q.final();
  return q.getAuthTag();
}

/** The last `k` bytes of consecutive pieces (a view when the last piece holds them all). */
function tail(parts: readonly Buffer[], k: number): Buffer {
  const last = parts[parts.length - 1]!;
  if (last.length >= k) return last.subarray(last.length - k);
  return Buffer.concat(parts.slice(1)).subarray(-k);
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
    const parts = this.pushParts([m], tag);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /**
   * Encrypts one message given as consecutive pieces (their concatenation is the message) with `tag` (0-255), and
   * returns c0 || c || mac as consecutive pieces: what `push` of the whole gives, without joining the message's
   * pieces before the cipher or the cipher's output after it (the caller copies them once, into its frame). A
   * message short enough for the JavaScript path comes back as one piece.
   */
  pushParts(m: readonly Uint8Array[], tag: number): Buffer[] {
    if (!Number.isInteger(tag) || tag < 0 || tag > 255)
      throw new RangeError(`secretstream tag must be 0-255, got ${tag}`);
    let mlen = 0;
    for (const piece of m) mlen += piece.length;
    if (this.#small(mlen)) {
      const whole = m.length === 1 ? m[0]! : Buffer.concat(m, mlen);
      const out = Buffer.allocUnsafe(mlen + ABYTES);
      const ks = this.#keystream(mlen + 128); // block 0 (the MAC key), block 1 (the tag's), blocks 2.. (m's)
      const block = ks.subarray(64, 128);
      block[0] = block[0]! ^ tag;
      const c = out.subarray(1, 1 + mlen);
      for (let i = 0; i < mlen; i++) c[i] = whole[i]! ^ ks[128 + i]!;
      const mac = poly1305(sodiumMacInput(block, c), ks);
      out[0] = block[0]!;
      mac.copy(out, 1 + mlen);
      this.#advance(mac, tag);
      return [out];
    }
    const first = Buffer.alloc(64);
    first[0] = tag;
    const e = createCipheriv(AEAD, this.#key, this.#nonce, TAG16);
    const block = e.update(first);
    const parts: Buffer[] = [block.subarray(0, 1)];
    for (const piece of m) if (piece.length > 0) parts.push(e.update(piece));
    e.final();
    const k = mlen & 15;
    const mac = k === 0 || k === 8 ? e.getAuthTag() : this.#derivedMac(block, parts, mlen, e.getAuthTag());
    parts.push(mac);
    this.#advance(mac, tag);
    return parts;
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
      const tagA = prefixTag(this.#key, this.#nonce, block, c, xlen - 64);
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

  /** libsodium's MAC of an unaligned message from the AEAD's tag_T; `parts` is c0 then c in pieces. */
  #derivedMac(block: Buffer, parts: readonly Buffer[], mlen: number, tagT: Buffer): Buffer {
    const k = mlen & 15;
    const block0 = this.#keystream(64);
    const { r, s } = polyKey(block0);
    const xlen = 64 + mlen - k;
    const want = le128(tagT);
    const tagA = prefixTag(this.#key, this.#nonce, block, parts.slice(1), xlen - 64);
    const match = candidates(tagA, r, s, xlen, tail(parts, k), mlen).filter((x) => x.tagT === want);
    if (match.length === 1) return toLe128(match[0]!.tagS);
    this.fallbacks++;
    return poly1305(sodiumMacInput(block, Buffer.concat(parts.slice(1), mlen)), block0);
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
