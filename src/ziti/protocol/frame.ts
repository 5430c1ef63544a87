/**
 * The channel "V2" frame format, as a pure codec with no I/O.
 *
 *   magic 03 06 09 0C | content type i32 | sequence i32 | headers length u32 | body length u32 | headers | body
 *   headers: repeated { key i32, length u32, value[length] }   (all integers little-endian)
 *
 * FrameDecoder.push(chunk) returns every complete message; partial input is kept until the rest arrives.
 * Lengths are checked against the limits before anything is allocated, so a hostile peer cannot make it grow
 * without bound. A violation throws ProtocolError and leaves the decoder failed: the channel must be closed.
 *
 * Three limits, all checked before the bytes they describe are copied or decoded (ZITI_FRAME_TOO_LARGE):
 * - headers + body of one message (4 MiB: the body is what can legitimately be large);
 * - the header block (64 KiB), checked from the preamble alone;
 * - the number of header entries (256), counted in place before a single entry is decoded.
 * The last two exist because the decoded size of a header block is not its wire size: every entry becomes a Map
 * entry and a Buffer view, ~120 bytes of heap for 8 bytes of wire. Under the 4 MiB limit alone one frame could
 * hold 524,288 empty headers (~62 MiB retained, ~0.36 s of event loop to decode). Real messages carry a few dozen
 * headers at most: the ids in use are 0-13 (channel), 128-255 (reflected), 1000-1040 (edge) and 2000-2500
 * (xgress), and a message uses a handful of each. The largest values a router relays are the dialer's AppData
 * (our caller proof stays under 16 KiB, see api/caller-proof.ts) and the hello's headers, which the Go channel
 * library itself caps at 16 KiB (`readHelloV2`; it has no cap on later messages). 64 KiB and 256 leave that
 * room fourfold while bounding one frame's decoded headers to ~30 KiB of heap beyond its wire bytes.
 */
import { ErrorCodes, ProtocolError } from "../errors.js";
import type { Headers } from "./headers.js";

export const MAGIC = Buffer.from([0x03, 0x06, 0x09, 0x0c]);
export const PREAMBLE_BYTES = 20;
/** Default cap on headers + body of one message. Data messages are chunked far below this. */
export const DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024;
/** Default cap on the header block of one message (see above for why). */
export const DEFAULT_MAX_HEADER_BYTES = 64 * 1024;
/** Default cap on the number of header entries in one message (see above for why). */
export const DEFAULT_MAX_HEADERS = 256;
const HEADER_ENTRY_BYTES = 8;
const EMPTY = Buffer.alloc(0);

export interface Message {
  contentType: number;
  sequence: number;
  headers: Headers;
  body: Buffer;
}

/**
 * A body to send: one Buffer, or consecutive pieces (an encrypted payload comes from the cipher in pieces, which
 * the frame is the one place to join).
 */
export type Body = Buffer | readonly Buffer[];

/** A message to send: its body may be in pieces. */
export interface OutgoingMessage extends Omit<Message, "body"> {
  body: Body;
}

/** The bytes of a body. */
export function bodyLength(body: Body): number {
  if (Buffer.isBuffer(body)) return body.length;
  let n = 0;
  for (const piece of body) n += piece.length;
  return n;
}

export function encodeMessage(m: OutgoingMessage): Buffer {
  let hlen = 0;
  for (const v of m.headers.values()) hlen += HEADER_ENTRY_BYTES + v.length;
  const blen = bodyLength(m.body);
  const out = Buffer.allocUnsafe(PREAMBLE_BYTES + hlen + blen);
  MAGIC.copy(out, 0);
  out.writeInt32LE(m.contentType, 4);
  out.writeInt32LE(m.sequence, 8);
  out.writeUInt32LE(hlen, 12);
  out.writeUInt32LE(blen, 16);
  let off = PREAMBLE_BYTES;
  for (const [k, v] of m.headers) {
    out.writeInt32LE(k, off);
    out.writeUInt32LE(v.length, off + 4);
    v.copy(out, off + HEADER_ENTRY_BYTES);
    off += HEADER_ENTRY_BYTES + v.length;
  }
  if (Buffer.isBuffer(m.body)) m.body.copy(out, off);
  else for (const piece of m.body) off += piece.copy(out, off);
  return out;
}

/**
 * Walks a header block in place, checking its structure and counting its entries, and allocates nothing: a block
 * that is malformed or holds more than `maxHeaders` entries is refused before any of it is decoded.
 */
function checkHeaderBlock(block: Buffer, maxHeaders: number): void {
  let off = 0;
  let count = 0;
  while (off < block.length) {
    if (count === maxHeaders) {
      throw new ProtocolError(
        `more than ${maxHeaders} headers in one message (a ${block.length}-byte header block): real messages carry ` +
          "a few dozen at most",
        { code: ErrorCodes.FRAME_TOO_LARGE },
      );
    }
    if (block.length - off < HEADER_ENTRY_BYTES) {
      throw new ProtocolError(`truncated header entry at offset ${off} of a ${block.length}-byte header block`);
    }
    const len = block.readUInt32LE(off + 4);
    if (len > block.length - off - HEADER_ENTRY_BYTES) {
      throw new ProtocolError(
        `header ${block.readInt32LE(off)} claims ${len} bytes but only ${block.length - off - HEADER_ENTRY_BYTES} remain`,
      );
    }
    off += HEADER_ENTRY_BYTES + len;
    count++;
  }
}

/** Parses the header block of one message. Throws ProtocolError on a malformed block or one with too many entries. */
export function decodeHeaders(block: Buffer, maxHeaders = DEFAULT_MAX_HEADERS): Headers {
  checkHeaderBlock(block, maxHeaders);
  const headers: Headers = new Map();
  let off = 0;
  while (off < block.length) {
    const key = block.readInt32LE(off);
    const len = block.readUInt32LE(off + 4);
    off += HEADER_ENTRY_BYTES;
    // subarray: the block is already a private copy, so values may share it.
    headers.set(key, block.subarray(off, off + len));
    off += len;
  }
  return headers;
}

export interface FrameDecoderOptions {
  /** Largest headers + body accepted for one message. */
  maxFrameBytes?: number;
  /** Largest header block accepted for one message. */
  maxHeaderBytes?: number;
  /** Most header entries accepted in one message. */
  maxHeaders?: number;
}

export class FrameDecoder {
  readonly maxFrameBytes: number;
  readonly maxHeaderBytes: number;
  readonly maxHeaders: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #failed: ProtocolError | undefined;

  constructor(opts: FrameDecoderOptions = {}) {
    this.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.maxHeaderBytes = opts.maxHeaderBytes ?? DEFAULT_MAX_HEADER_BYTES;
    this.maxHeaders = opts.maxHeaders ?? DEFAULT_MAX_HEADERS;
  }

  /** Bytes held while waiting for the rest of a message. */
  get buffered(): number {
    return this.#buffered;
  }

  push(chunk: Buffer): Message[] {
    if (this.#failed) throw this.#failed;
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
    }
    const out: Message[] = [];
    try {
      for (;;) {
        const m = this.#next();
        if (!m) break;
        out.push(m);
      }
    } catch (err) {
      this.#failed = err as ProtocolError;
      this.#chunks = [];
      this.#buffered = 0;
      throw err;
    }
    return out;
  }

  /** Reads `n` bytes from the front without consuming them, joining chunks only as far as needed. */
  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.#chunks, this.#buffered);
    this.#chunks = [joined];
    return joined.subarray(0, n);
  }

  #consume(n: number): Buffer {
    if (n === 0) return EMPTY;
    const head = this.#peek(n);
    const first = this.#chunks[0]!;
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return head;
  }

  #next(): Message | undefined {
    if (this.#buffered < PREAMBLE_BYTES) {
      // Check the magic as soon as we have it, so garbage is rejected without waiting for 20 bytes.
      if (this.#buffered > 0) this.#checkMagic(Math.min(this.#buffered, 4));
      return undefined;
    }
    this.#checkMagic(4);
    const pre = this.#peek(PREAMBLE_BYTES);
    const hlen = pre.readUInt32LE(12);
    const blen = pre.readUInt32LE(16);
    if (hlen + blen > this.maxFrameBytes) {
      throw new ProtocolError(
        `frame of ${hlen} header + ${blen} body bytes exceeds the ${this.maxFrameBytes}-byte limit`,
        { code: ErrorCodes.FRAME_TOO_LARGE },
      );
    }
    if (hlen > this.maxHeaderBytes) {
      throw new ProtocolError(
        `frame with a ${hlen}-byte header block exceeds the ${this.maxHeaderBytes}-byte header limit`,
        { code: ErrorCodes.FRAME_TOO_LARGE },
      );
    }
    if (this.#buffered < PREAMBLE_BYTES + hlen + blen) return undefined;
    const contentType = pre.readInt32LE(4);
    const sequence = pre.readInt32LE(8);
    // The header block is checked where it lies (count, structure) before anything of it is copied or decoded.
    checkHeaderBlock(this.#peek(PREAMBLE_BYTES + hlen).subarray(PREAMBLE_BYTES), this.maxHeaders);
    this.#consume(PREAMBLE_BYTES);
    // Copy out so the message does not pin the (possibly large) socket chunk it arrived in.
    const headerBlock = Buffer.from(this.#consume(hlen));
    const body = this.#take(blen);
    return { contentType, sequence, headers: decodeHeaders(headerBlock, this.maxHeaders), body };
  }

  /**
   * Takes a body of `n` bytes from the front, allocating at most once. A body that is at least half of the memory
   * under the chunk it lies in is that chunk's own (a data payload fills most of a socket read) and is passed on as
   * it is; a smaller one is copied, so it does not pin a large read. A body spread over several chunks is copied
   * into one buffer of its size, not joined with everything buffered and then copied again. Every large buffer
   * allocated per frame costs more than its copy: V8 counts the memory under Buffers towards the old generation's
   * limit until the next full collection, so at hundreds of payloads a second each one brings the next full
   * collection closer (docs/performance.md, "Issue 23").
   */
  #take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.#chunks[0]!;
    if (first.length >= n) {
      const own = this.#consume(n);
      return n * 2 >= own.buffer.byteLength ? own : Buffer.from(own);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.#buffered -= n;
    return out;
  }

  #checkMagic(n: number): void {
    const head = this.#peek(n);
    for (let i = 0; i < n; i++) {
      if (head[i] !== MAGIC[i]) {
        throw new ProtocolError(
          `bad frame magic ${head.subarray(0, n).toString("hex")} (expected ${MAGIC.subarray(0, n).toString("hex")}): ` +
            "the peer is not speaking the OpenZiti channel protocol",
        );
      }
    }
  }
}
