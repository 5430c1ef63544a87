/**
 * Randomized: well over 100,000 hostile and valid inputs. The decoder must only ever return messages or throw
 * ProtocolError, must make progress on every push, must keep its buffer bounded, must reach the same outcome
 * however the bytes are chunked, and must round-trip valid streams exactly.
 *
 * Every case draws from its own PRNG, seeded from SEED and the case number, so a failure names the one case to
 * replay. Try other seeds with FRAME_FUZZ_SEED=<n> npx vitest run --project unit test/unit/frame-fuzz.
 */
import { describe, expect, it } from "vitest";
import { ErrorCodes, ProtocolError } from "../../src/ziti/errors.js";
import {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_HEADERS,
  encodeMessage,
  FrameDecoder,
  type Headers,
  MAGIC,
  type Message,
  PREAMBLE_BYTES,
} from "../../src/ziti/internal.js";
import { prng } from "./prng.js";

const SEED = Number(process.env.FRAME_FUZZ_SEED ?? 0x2f3a_11c7) >>> 0;
const RANDOM_CASES = 60_000;
const MUTATED_CASES = 50_000;
const VALID_STREAMS = 2_500;
const SMALL_MAX = 4096;
// The decoder's header caps, written out (the oracle must not take its figures from the code it checks).
const MAX_HEADERS = 256;
const MAX_HEADER_BYTES = 64 * 1024;

type Rng = () => number;

/** The PRNG of one case: independent of every other case, so one failure replays alone. */
function caseRng(part: number, i: number): Rng {
  return prng((SEED ^ Math.imul(part + 1, 0x85ebca6b) ^ Math.imul(i + 1, 0x9e3779b1)) >>> 0);
}

const int = (r: Rng, n: number): number => Math.floor(r() * n);
const int32 = (r: Rng): number => int(r, 2 ** 32) - 2 ** 31;

function bytes(r: Rng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = int(r, 256);
  return b;
}

/** Lengths near every boundary the decoder checks. */
function interestingLength(r: Rng, max: number): number {
  const picks = [0, 1, 3, 4, 7, 8, 9, 12, 19, 20, max - 1, max, max + 1, 0x7fffffff, 0x80000000, 0xffffffff];
  return picks[int(r, picks.length)]! >>> 0;
}

function fingerprint(m: Message): string {
  let s = `${m.contentType}|${m.sequence}|`;
  for (const [k, v] of m.headers) s += `${k}=${v.toString("hex")},`;
  return `${s}|${m.body.toString("hex")}`;
}

/** Bytes a decoded message must have taken off the wire at least (duplicate header keys collapse in the Map). */
function minWireSize(m: Message): number {
  let n = PREAMBLE_BYTES + m.body.length;
  for (const v of m.headers.values()) n += 8 + v.length;
  return n;
}

interface Outcome {
  messages: Message[];
  /** The code of the ProtocolError that ended the stream, if one did. */
  code: string | undefined;
  buffered: number;
}

/**
 * Feeds `input` in chunks of the sizes `split` picks, checking after every push: only ProtocolError escapes;
 * the buffer never holds more than was fed, never more than one incomplete frame (< max + 20), and accounts
 * for every byte; the decoder progressed; after a failure it is empty and keeps throwing the same error.
 */
function feed(
  input: Buffer,
  maxFrameBytes: number,
  split: (left: number) => number,
  where: string,
  exact = false,
): Outcome {
  const d = new FrameDecoder({ maxFrameBytes });
  const messages: Message[] = [];
  let fed = 0;
  let consumed = 0;
  const fail = (what: string): never => {
    throw new Error(`${where} (seed ${SEED}): ${what}; input ${input.toString("hex").slice(0, 400)}`);
  };
  do {
    const n = Math.min(input.length - fed, Math.max(0, split(input.length - fed)));
    const chunk = input.subarray(fed, fed + n);
    const before = d.buffered;
    let out: Message[];
    try {
      out = d.push(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolError)) fail(`push threw a non-ProtocolError: ${String(err)}`);
      const e = err as ProtocolError;
      if (e.code !== ErrorCodes.PROTOCOL_ERROR && e.code !== ErrorCodes.FRAME_TOO_LARGE) fail(`code ${e.code}`);
      if (d.buffered !== 0) fail(`buffered ${d.buffered} after a failure`);
      let again: unknown;
      try {
        d.push(Buffer.from(MAGIC));
      } catch (err2) {
        again = err2;
      }
      if (again !== e) fail("a failed decoder accepted more input");
      return { messages, code: e.code, buffered: 0 };
    }
    fed += n;
    let took = 0;
    for (const m of out) took += minWireSize(m);
    consumed += took;
    const b = d.buffered;
    if (!Number.isInteger(b) || b < 0) fail(`buffered ${b}`);
    if (exact && b !== fed - consumed) fail(`buffered ${b}, expected exactly ${fed - consumed}`);
    if (b > fed - consumed) fail(`buffered ${b} > ${fed - consumed} bytes fed and not yet returned`);
    if (b > before + n - took) fail(`buffered ${b} grew past ${before} + ${n} - ${took}`);
    if (b > maxFrameBytes + PREAMBLE_BYTES + n) fail(`buffered ${b} > limit ${maxFrameBytes} + 20 + chunk ${n}`);
    if (b >= maxFrameBytes + PREAMBLE_BYTES) fail(`buffered ${b}: more than one incomplete frame`);
    messages.push(...out);
  } while (fed < input.length);
  return { messages, code: undefined, buffered: d.buffered };
}

const whole = (left: number): number => left;
const bytewise = (): number => 1;
function randomSplit(r: Rng, maxChunk: number): (left: number) => number {
  return () => (r() < 0.1 ? 0 : 1 + int(r, r() < 0.7 ? 24 : maxChunk));
}

/** The outcome must not depend on how the stream was chunked (only which messages a throw discards may). */
function expectSameOutcome(a: Outcome, b: Outcome, where: string): void {
  if (a.code !== b.code) throw new Error(`${where} (seed ${SEED}): code ${a.code} whole vs ${b.code} chunked`);
  if (a.code !== undefined) return;
  if (a.buffered !== b.buffered) throw new Error(`${where} (seed ${SEED}): buffered ${a.buffered} vs ${b.buffered}`);
  const fa = a.messages.map(fingerprint).join("\n");
  const fb = b.messages.map(fingerprint).join("\n");
  if (fa !== fb) throw new Error(`${where} (seed ${SEED}): whole and chunked decoded different messages`);
}

/**
 * A deliberately naive decoder of a complete input, written from §3.2 and frame.ts's header caps alone, as the
 * oracle: the messages before the first error, the error's code, and how many bytes are left waiting for more.
 */
function reference(input: Buffer, max: number): Outcome {
  const messages: Message[] = [];
  let off = 0;
  const end = (code?: string): Outcome => ({ messages, code, buffered: code ? 0 : input.length - off });
  for (;;) {
    const left = input.length - off;
    for (let i = 0; i < Math.min(4, left); i++) if (input[off + i] !== MAGIC[i]) return end(ErrorCodes.PROTOCOL_ERROR);
    if (left < PREAMBLE_BYTES) return end();
    const hlen = input.readUInt32LE(off + 12);
    const blen = input.readUInt32LE(off + 16);
    if (hlen + blen > max) return end(ErrorCodes.FRAME_TOO_LARGE);
    if (hlen > MAX_HEADER_BYTES) return end(ErrorCodes.FRAME_TOO_LARGE);
    if (left < PREAMBLE_BYTES + hlen + blen) return end();
    const headers: Headers = new Map();
    let h = off + PREAMBLE_BYTES;
    const hend = h + hlen;
    let count = 0;
    while (h < hend) {
      if (count++ === MAX_HEADERS) return end(ErrorCodes.FRAME_TOO_LARGE);
      if (h + 8 > hend) return end(ErrorCodes.PROTOCOL_ERROR);
      const len = input.readUInt32LE(h + 4);
      if (h + 8 + len > hend) return end(ErrorCodes.PROTOCOL_ERROR);
      headers.set(input.readInt32LE(h), input.subarray(h + 8, h + 8 + len));
      h += 8 + len;
    }
    messages.push({
      contentType: input.readInt32LE(off + 4),
      sequence: input.readInt32LE(off + 8),
      headers,
      body: input.subarray(hend, hend + blen),
    });
    off = hend + blen;
  }
}

/** The decoder, fed in chunks, must agree with the oracle: same error, and the same messages up to it. */
function expectAsReference(want: Outcome, got: Outcome, where: string): void {
  const fail = (what: string): never => {
    throw new Error(`${where} (seed ${SEED}): ${what}`);
  };
  if (want.code !== got.code) fail(`code ${got.code}, reference says ${want.code}`);
  // A push that throws discards the messages it had decoded, so after an error only a prefix is owed.
  if (
    want.code === undefined ? got.messages.length !== want.messages.length : got.messages.length > want.messages.length
  ) {
    fail(`${got.messages.length} messages, reference decoded ${want.messages.length}`);
  }
  got.messages.forEach((m, k) => {
    if (fingerprint(m) !== fingerprint(want.messages[k]!)) fail(`message ${k} differs from the reference`);
  });
  if (want.code === undefined && got.buffered !== want.buffered) fail(`buffered ${got.buffered} vs ${want.buffered}`);
}

/** Every message the decoder produced survives encode → decode unchanged. */
function expectReencodes(msgs: Message[], where: string): void {
  for (const m of msgs) {
    const again = new FrameDecoder().push(encodeMessage(m));
    if (again.length !== 1 || fingerprint(again[0]!) !== fingerprint(m)) {
      throw new Error(`${where} (seed ${SEED}): a decoded message does not re-encode to itself`);
    }
  }
}

/** Something shaped like a frame: right magic (mostly), small plausible lengths, a header block of entries. */
function frameLike(r: Rng, max: number): Buffer {
  const entries: Buffer[] = [];
  // Now and then a block around the header-count cap (256), of mostly empty values.
  const many = r() < 0.01;
  const nEntries = many ? MAX_HEADERS - 4 + int(r, 9) : int(r, 4);
  for (let i = 0; i < nEntries; i++) {
    const value = bytes(r, many ? int(r, 2) : int(r, 12));
    const e = Buffer.allocUnsafe(8);
    e.writeInt32LE(int32(r), 0);
    e.writeUInt32LE(many || r() < 0.8 ? value.length : r() < 0.5 ? interestingLength(r, max) : int(r, 24), 4);
    entries.push(e, value);
  }
  if (r() < 0.2) entries.push(bytes(r, 1 + int(r, 7))); // a truncated entry
  const block = Buffer.concat(entries);
  const body = bytes(r, int(r, 16));
  const pre = Buffer.allocUnsafe(PREAMBLE_BYTES);
  MAGIC.copy(pre, 0);
  if (r() < 0.05) pre[int(r, 4)] = int(r, 256);
  pre.writeInt32LE(int32(r), 4);
  pre.writeInt32LE(int32(r), 8);
  pre.writeUInt32LE(r() < 0.85 ? block.length : r() < 0.5 ? interestingLength(r, max) : int(r, 64), 12);
  pre.writeUInt32LE(r() < 0.85 ? body.length : r() < 0.5 ? interestingLength(r, max) : int(r, 64), 16);
  return Buffer.concat([pre, block, body]);
}

function randomInput(r: Rng, max: number): Buffer {
  const kind = int(r, 4);
  if (kind === 0) return bytes(r, int(r, 96)); // pure noise: nearly always a bad magic at some byte
  if (kind === 1) {
    // The magic (or a prefix of it), then noise: exercises the preamble with random lengths.
    return Buffer.concat([MAGIC.subarray(0, 1 + int(r, 4)), bytes(r, int(r, 96))]);
  }
  const parts: Buffer[] = [];
  const n = 1 + int(r, 4);
  for (let i = 0; i < n; i++) parts.push(kind === 3 && r() < 0.3 ? bytes(r, int(r, 8)) : frameLike(r, max));
  return Buffer.concat(parts);
}

function randomMessage(r: Rng, bigBody: number): Message {
  const headers: Headers = new Map();
  const n = int(r, 7);
  for (let i = 0; i < n; i++) headers.set(r() < 0.5 ? int32(r) : int(r, 1100), bytes(r, int(r, r() < 0.1 ? 300 : 24)));
  const body = bytes(r, r() < 0.05 ? int(r, bigBody) : int(r, 64));
  return { contentType: int32(r), sequence: r() < 0.2 ? -1 : int32(r), headers, body };
}

/** A valid stream and the offset at which each of its frames starts. */
function validStream(r: Rng, count: number, bigBody: number): { wire: Buffer; msgs: Message[]; starts: number[] } {
  const msgs = Array.from({ length: count }, () => randomMessage(r, bigBody));
  const frames = msgs.map(encodeMessage);
  const starts: number[] = [];
  let off = 0;
  for (const f of frames) {
    starts.push(off);
    off += f.length;
  }
  return { wire: Buffer.concat(frames), msgs, starts };
}

function mutate(r: Rng, base: { wire: Buffer; starts: number[] }, donor: Buffer, max: number): Buffer {
  let w = Buffer.from(base.wire);
  const n = 1 + int(r, 4);
  for (let k = 0; k < n; k++) {
    const at = int(r, w.length + 1);
    switch (int(r, 8)) {
      case 0: // flip bits of one byte
        if (w.length > 0) {
          const j = Math.min(at, w.length - 1);
          w[j] = w[j]! ^ (1 << int(r, 8));
        }
        break;
      case 1: // overwrite a run with noise
        bytes(r, Math.min(1 + int(r, 8), w.length - Math.min(at, w.length))).copy(w, Math.min(at, w.length));
        break;
      case 2: // truncate
        w = w.subarray(0, at);
        break;
      case 3: {
        // duplicate a range in place
        const len = int(r, 64);
        w = Buffer.concat([w.subarray(0, at + len), w.subarray(at, at + len), w.subarray(at + len)]);
        break;
      }
      case 4: {
        // splice in a slice of another valid stream
        const from = int(r, donor.length);
        const piece = donor.subarray(from, from + 1 + int(r, 80));
        w = Buffer.concat([w.subarray(0, at), piece, w.subarray(at)]);
        break;
      }
      case 5: // delete a range
        w = Buffer.concat([w.subarray(0, at), w.subarray(at + 1 + int(r, 32))]);
        break;
      case 6: {
        // rewrite a frame's header or body length (if that frame is still intact enough)
        const start = base.starts[int(r, base.starts.length)]!;
        const field = start + (r() < 0.5 ? 12 : 16);
        if (field + 4 <= w.length) w.writeUInt32LE(interestingLength(r, max), field);
        break;
      }
      default: {
        // rewrite the first header entry's length of a frame, if it has one
        const start = base.starts[int(r, base.starts.length)]!;
        if (start + 28 <= w.length && w.readUInt32LE(start + 12) >= 8) {
          w.writeUInt32LE(r() < 0.5 ? interestingLength(r, max) : int(r, 40), start + 24);
        }
      }
    }
  }
  return w;
}

describe(`frame decoder fuzz (seed ${SEED})`, () => {
  it("the oracle's header caps are the decoder's", () => {
    expect([DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES]).toEqual([MAX_HEADERS, MAX_HEADER_BYTES]);
  });

  it(`(a) ${RANDOM_CASES.toLocaleString("en")} random byte strings: only ProtocolError, bounded, chunking-independent`, () => {
    const limits = [SMALL_MAX, DEFAULT_MAX_FRAME_BYTES, 64, 0];
    const codes = new Map<string, number>();
    for (let i = 0; i < RANDOM_CASES; i++) {
      const r = caseRng(0, i);
      const max = limits[i % limits.length]!;
      const input = randomInput(r, max);
      const where = `random case ${i} (max ${max})`;
      const a = feed(input, max, whole, where);
      const b = feed(input, max, i % 5 === 0 ? bytewise : randomSplit(r, 48), where);
      expectSameOutcome(a, b, where);
      expectAsReference(reference(input, max), b, where);
      expectReencodes(b.messages, where);
      const key = a.code ?? (a.messages.length > 0 ? "messages" : "waiting");
      codes.set(key, (codes.get(key) ?? 0) + 1);
    }
    // The generator must reach every outcome, or the test proves less than it claims.
    expect(codes.get(ErrorCodes.PROTOCOL_ERROR) ?? 0).toBeGreaterThan(RANDOM_CASES / 10);
    expect(codes.get(ErrorCodes.FRAME_TOO_LARGE) ?? 0).toBeGreaterThan(RANDOM_CASES / 100);
    expect(codes.get("messages") ?? 0).toBeGreaterThan(RANDOM_CASES / 100);
    expect(codes.get("waiting") ?? 0).toBeGreaterThan(RANDOM_CASES / 100);
  });

  it(`(b) ${MUTATED_CASES.toLocaleString("en")} mutated valid streams, max ${SMALL_MAX}: same guarantees`, () => {
    const outcomes = new Map<string, number>();
    let base = validStream(caseRng(3, 0), 1, 1);
    let donor = base.wire;
    for (let i = 0; i < MUTATED_CASES; i++) {
      if (i % 50 === 0) {
        // A fresh pair of valid streams every 50 cases (from their own PRNG, so case i replays from i alone).
        const g = caseRng(3, i / 50);
        base = validStream(g, 1 + int(g, 6), 6000);
        donor = validStream(g, 2, 100).wire;
      }
      const r = caseRng(1, i);
      const input = mutate(r, base, donor, SMALL_MAX);
      const where = `mutated case ${i}`;
      const a = feed(input, SMALL_MAX, whole, where);
      const b = feed(input, SMALL_MAX, i % 7 === 0 ? bytewise : randomSplit(r, 512), where);
      expectSameOutcome(a, b, where);
      expectAsReference(reference(input, SMALL_MAX), b, where);
      expectReencodes(b.messages, where);
      const key = a.code ?? (a.messages.length > 0 ? "messages" : "waiting");
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    }
    expect(outcomes.get(ErrorCodes.PROTOCOL_ERROR) ?? 0).toBeGreaterThan(MUTATED_CASES / 20);
    expect(outcomes.get(ErrorCodes.FRAME_TOO_LARGE) ?? 0).toBeGreaterThan(MUTATED_CASES / 20);
    expect(outcomes.get("messages") ?? 0).toBeGreaterThan(MUTATED_CASES / 20);
  });

  it(`(c) ${VALID_STREAMS.toLocaleString("en")} streams of valid random messages round-trip exactly under random chunking`, () => {
    let total = 0;
    for (let i = 0; i < VALID_STREAMS; i++) {
      const r = caseRng(2, i);
      const { wire, msgs } = validStream(r, 1 + int(r, 20), 30_000);
      const where = `valid stream ${i}`;
      const max = r() < 0.5 ? DEFAULT_MAX_FRAME_BYTES : Math.max(...msgs.map((m) => minWireSize(m) - PREAMBLE_BYTES));
      const split = i % 50 === 0 ? bytewise : randomSplit(r, r() < 0.5 ? 64 : 8192);
      const got = feed(wire, max, split, where, true);
      if (got.code !== undefined) throw new Error(`${where} (seed ${SEED}): threw ${got.code}`);
      if (got.buffered !== 0) throw new Error(`${where} (seed ${SEED}): ${got.buffered} bytes left over`);
      if (got.messages.length !== msgs.length) {
        throw new Error(`${where} (seed ${SEED}): ${got.messages.length} of ${msgs.length} messages`);
      }
      for (let k = 0; k < msgs.length; k++) {
        if (fingerprint(got.messages[k]!) !== fingerprint(msgs[k]!)) {
          throw new Error(`${where} (seed ${SEED}): message ${k} differs`);
        }
      }
      total += msgs.length;
    }
    expect(total).toBeGreaterThan(VALID_STREAMS * 5);
  });
});
