/**
 * The channel V2 frame codec (docs: ziti-protocol.md §3.2): the specification's test vectors, round trips,
 * streaming under any chunking, and every way a peer can send malformed bytes.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { ErrorCodes, ProtocolError, ZitiError } from "../../src/ziti/errors.js";
import {
  bodyLength,
  ContentType,
  dec,
  decodeHeaders,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_HEADER_BYTES,
  DEFAULT_MAX_HEADERS,
  enc,
  encodeMessage,
  FrameDecoder,
  Header,
  type Headers,
  MAGIC,
  type Message,
  PREAMBLE_BYTES,
} from "../../src/ziti/internal.js";
import { prng } from "./prng.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");

// §3.2 test vectors, byte for byte as the specification prints them.
const HELLO_WIRE = hex("0306090c 00000000 ffffffff 0b000000 03000000 ea030000 03000000 746f6b 696431");
const DATA_WIRE = hex("0306090c 72ed0000 07000000 0c000000 02000000 e8030000 04000000 05000000 6869");
const REPLY_FOR_7 = hex("01000000 04000000 07000000");

const hello: Message = {
  contentType: ContentType.Hello,
  sequence: -1,
  headers: new Map([[Header.SessionToken, Buffer.from("tok")]]),
  body: Buffer.from("id1"),
};
const data: Message = {
  contentType: ContentType.Data,
  sequence: 7,
  headers: new Map([[Header.ConnId, enc.u32(5)]]),
  body: Buffer.from("hi"),
};

/** A comparable picture of a message: header order kept, since the codec preserves it. */
function view(m: Message): unknown {
  return {
    contentType: m.contentType,
    sequence: m.sequence,
    headers: [...m.headers].map(([k, v]) => [k, v.toString("hex")]),
    body: m.body.toString("hex"),
  };
}

function expectSame(got: readonly Message[], want: readonly Message[]): void {
  expect(got.map(view)).toEqual(want.map(view));
}

function decodeAll(wire: Buffer, opts?: { maxFrameBytes?: number }): { msgs: Message[]; d: FrameDecoder } {
  const d = new FrameDecoder(opts);
  const msgs = d.push(wire);
  return { msgs, d };
}

function bytes(r: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

function int32(r: () => number): number {
  return Math.floor(r() * 2 ** 32) - 2 ** 31;
}

function randomMessage(r: () => number): Message {
  const headers: Headers = new Map();
  const n = Math.floor(r() * 6);
  for (let i = 0; i < n; i++)
    headers.set(r() < 0.5 ? int32(r) : Math.floor(r() * 1100), bytes(r, Math.floor(r() * 40)));
  const bodyLen = Math.floor(r() < 0.05 ? r() * 20_000 : r() * 80);
  return { contentType: int32(r), sequence: int32(r), headers, body: bytes(r, bodyLen) };
}

/** A 20-byte preamble with the given lengths (and a valid magic unless told otherwise). */
function preamble(hlen: number, blen: number, opts: { contentType?: number; sequence?: number } = {}): Buffer {
  const p = Buffer.alloc(PREAMBLE_BYTES);
  MAGIC.copy(p, 0);
  p.writeInt32LE(opts.contentType ?? ContentType.Data, 4);
  p.writeInt32LE(opts.sequence ?? 1, 8);
  p.writeUInt32LE(hlen, 12);
  p.writeUInt32LE(blen, 16);
  return p;
}

/** The error push() throws, or a test failure if it does not throw. */
function pushError(d: FrameDecoder, chunk: Buffer): ProtocolError {
  try {
    d.push(chunk);
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error(`push of ${chunk.toString("hex").slice(0, 200)} did not throw`);
}

/** The largest Buffer any Buffer factory (alloc, allocUnsafe, concat, from, ...) returned while fn ran. */
function largestBufferCreatedBy(fn: () => void): number {
  let largest = 0;
  const names = ["alloc", "allocUnsafe", "allocUnsafeSlow", "concat", "from"] as const;
  const spies = names.map((name) => {
    const original = Buffer[name] as (...args: unknown[]) => Buffer;
    return vi.spyOn(Buffer, name).mockImplementation(((...args: unknown[]) => {
      const b = original.apply(Buffer, args);
      largest = Math.max(largest, b.length);
      return b;
    }) as never);
  });
  try {
    fn();
  } finally {
    for (const s of spies) s.mockRestore();
  }
  return largest;
}

/** What push() threw (undefined if nothing) and the largest Buffer created while it ran. */
function pushCaught(d: FrameDecoder, chunk: Buffer): { err: unknown; largest: number } {
  let err: unknown;
  const largest = largestBufferCreatedBy(() => {
    try {
      d.push(chunk);
    } catch (e) {
      err = e;
    }
  });
  return { err, largest };
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe("frame codec: the specification's test vectors (§3.2)", () => {
  it("encodes the Hello vector (seq -1, header 1002 'tok', body 'id1') to exactly its bytes", () => {
    expect(encodeMessage(hello).toString("hex")).toBe(HELLO_WIRE.toString("hex"));
  });

  it("encodes the Data vector (seq 7, ConnId 5, body 'hi') to exactly its bytes", () => {
    expect(encodeMessage(data).toString("hex")).toBe(DATA_WIRE.toString("hex"));
  });

  it("encodes a ReplyFor header for seq 7 as the vector's header entry", () => {
    const wire = encodeMessage({
      contentType: ContentType.Result,
      sequence: 0,
      headers: new Map([[Header.ReplyFor, enc.i32(7)]]),
      body: Buffer.alloc(0),
    });
    expect(wire.readUInt32LE(12)).toBe(REPLY_FOR_7.length);
    expect(wire.subarray(PREAMBLE_BYTES).toString("hex")).toBe(REPLY_FOR_7.toString("hex"));
    expect(decodeHeaders(REPLY_FOR_7).get(Header.ReplyFor)?.readInt32LE(0)).toBe(7);
  });

  it("decodes each vector back to the message it came from, field by field", () => {
    const h = decodeAll(HELLO_WIRE);
    expect(h.msgs).toHaveLength(1);
    const m = h.msgs[0]!;
    expect(m.contentType).toBe(ContentType.Hello);
    expect(m.sequence).toBe(-1);
    expect([...m.headers.keys()]).toEqual([Header.SessionToken]);
    expect(dec.str(m.headers, Header.SessionToken)).toBe("tok");
    expect(m.body.toString()).toBe("id1");
    expect(h.d.buffered).toBe(0);

    const d = decodeAll(DATA_WIRE);
    expect(d.msgs).toHaveLength(1);
    expect(d.msgs[0]!.contentType).toBe(60786);
    expect(d.msgs[0]!.sequence).toBe(7);
    expect(dec.u32(d.msgs[0]!.headers, Header.ConnId)).toBe(5);
    expect(d.msgs[0]!.body.toString()).toBe("hi");
    expect(d.d.buffered).toBe(0);
  });

  it("decodes both vectors from one chunk, in order", () => {
    const { msgs, d } = decodeAll(Buffer.concat([HELLO_WIRE, DATA_WIRE]));
    expectSame(msgs, [hello, data]);
    expect(d.buffered).toBe(0);
  });
});

describe("frame codec: encode → decode round trips", () => {
  function roundTrip(m: Message, opts?: { maxFrameBytes?: number }): Message {
    const wire = encodeMessage(m);
    let hlen = 0;
    for (const v of m.headers.values()) hlen += 8 + v.length;
    expect(wire.length).toBe(PREAMBLE_BYTES + hlen + m.body.length);
    expect(wire.readUInt32LE(12)).toBe(hlen);
    expect(wire.readUInt32LE(16)).toBe(m.body.length);
    const { msgs, d } = decodeAll(wire, opts);
    expect(msgs).toHaveLength(1);
    expectSame(msgs, [m]);
    expect(d.buffered).toBe(0);
    return msgs[0]!;
  }

  it("a message with no headers and an empty body is a bare 20-byte preamble", () => {
    const m: Message = { contentType: ContentType.Ping, sequence: 0, headers: new Map(), body: Buffer.alloc(0) };
    expect(encodeMessage(m).toString("hex")).toBe("0306090c" + "01000000" + "00".repeat(12));
    const got = roundTrip(m);
    expect(got.headers.size).toBe(0);
    expect(got.body.length).toBe(0);
  });

  it("a body given in pieces is framed as the same bytes as the pieces joined, empty pieces and none included", () => {
    const headers = new Map([[Header.ConnId, enc.u32(9)]]);
    const whole = Buffer.from("0123456789abcdefghij");
    for (const pieces of [
      [whole.subarray(0, 1), whole.subarray(1, 10), whole.subarray(10)],
      [Buffer.alloc(0), whole, Buffer.alloc(0)],
      [whole],
    ]) {
      const m = { contentType: ContentType.Data, sequence: 3, headers, body: pieces };
      expect(encodeMessage(m).equals(encodeMessage({ ...m, body: whole }))).toBe(true);
      expect(bodyLength(pieces)).toBe(whole.length);
    }
    const none = encodeMessage({ contentType: ContentType.Data, sequence: 3, headers, body: [] });
    const empty = encodeMessage({ contentType: ContentType.Data, sequence: 3, headers, body: Buffer.alloc(0) });
    expect(none.equals(empty)).toBe(true);
  });

  it("many headers (as many as the cap allows), including empty values and keys at the int32 extremes", () => {
    const r = prng(1);
    const headers: Headers = new Map();
    headers.set(-(2 ** 31), Buffer.alloc(0));
    headers.set(2 ** 31 - 1, Buffer.from("max"));
    headers.set(0, Buffer.alloc(0));
    for (let k = 1; k <= DEFAULT_MAX_HEADERS - 3; k++) headers.set(k * 7, bytes(r, k % 50));
    const got = roundTrip({ contentType: ContentType.Bind, sequence: 12345, headers, body: Buffer.from("body") });
    expect(got.headers.size).toBe(DEFAULT_MAX_HEADERS);
    expect(got.headers.get(-(2 ** 31))!.length).toBe(0);
  });

  it("a large header value and large bodies (1 MiB, and exactly at a custom limit)", () => {
    const r = prng(2);
    roundTrip({ contentType: ContentType.Data, sequence: 1, headers: new Map(), body: bytes(r, 1024 * 1024) });
    roundTrip({
      contentType: ContentType.Data,
      sequence: 2,
      headers: new Map([[Header.AppData, bytes(r, DEFAULT_MAX_HEADER_BYTES - 8)]]),
      body: bytes(r, 200_000),
    });
    const atLimit: Message = {
      contentType: ContentType.Data,
      sequence: 3,
      headers: new Map([[Header.ConnId, enc.u32(9)]]),
      body: bytes(r, 4096 - 12),
    };
    roundTrip(atLimit, { maxFrameBytes: 4096 });
  });

  it("negative and extreme sequence numbers and content types", () => {
    for (const sequence of [-1, -(2 ** 31), 2 ** 31 - 1, 0]) {
      for (const contentType of [ContentType.Hello, ContentType.InspectResponse, -1, 2 ** 31 - 1, -(2 ** 31)]) {
        roundTrip({
          contentType,
          sequence,
          headers: new Map([[Header.Seq, enc.i32(sequence)]]),
          body: Buffer.alloc(1),
        });
      }
    }
    const wire = encodeMessage({ ...data, sequence: -1 });
    expect(wire.subarray(8, 12).toString("hex")).toBe("ffffffff");
  });

  it("small decoded messages are copies: reusing the socket's buffer afterwards does not change them", () => {
    const wire = Buffer.concat([encodeMessage(hello), encodeMessage(data)]);
    const { msgs } = decodeAll(wire);
    wire.fill(0xee);
    expectSame(msgs, [hello, data]);
  });

  it("a body that is most of its chunk is passed on as it lies there, with no copy", () => {
    const big: Message = {
      contentType: ContentType.Data,
      sequence: 3,
      headers: new Map(),
      body: Buffer.alloc(32 * 1024, 7),
    };
    const wire = encodeMessage(big);
    const [m] = new FrameDecoder().push(wire);
    expect(m!.body.equals(big.body)).toBe(true);
    expect(m!.body.buffer).toBe(wire.buffer);
  });

  it("a body spread over several chunks arrives as one buffer of exactly its size", () => {
    const body = Buffer.from(Array.from({ length: 40_000 }, (_, i) => i % 251));
    const wire = encodeMessage({ contentType: ContentType.Data, sequence: 4, headers: new Map(), body });
    const d = new FrameDecoder();
    const out: Message[] = [];
    for (let off = 0; off < wire.length; off += 16_384) out.push(...d.push(wire.subarray(off, off + 16_384)));
    expect(out).toHaveLength(1);
    expect(out[0]!.body.equals(body)).toBe(true);
    expect(out[0]!.body.buffer.byteLength).toBe(body.length);
    expect(d.buffered).toBe(0);
  });
});

describe("frame decoder: streaming", () => {
  const stream = (msgs: Message[]): Buffer => Buffer.concat(msgs.map(encodeMessage));

  it("fed one byte at a time it yields the same messages as fed whole, each as its last byte arrives", () => {
    const r = prng(3);
    const msgs = [
      hello,
      data,
      { ...data, headers: new Map(), body: Buffer.alloc(0) },
      ...Array.from({ length: 40 }, () => randomMessage(r)),
    ];
    const wire = stream(msgs);
    const whole = new FrameDecoder().push(wire);
    expectSame(whole, msgs);

    const ends = new Set<number>();
    let end = 0;
    for (const m of msgs) ends.add((end += encodeMessage(m).length));

    const d = new FrameDecoder();
    const got: Message[] = [];
    for (let i = 0; i < wire.length; i++) {
      const out = d.push(wire.subarray(i, i + 1));
      expect(out.length).toBe(ends.has(i + 1) ? 1 : 0);
      got.push(...out);
    }
    expectSame(got, whole);
    expect(d.buffered).toBe(0);
  });

  for (const seed of [4, 5, 6, 7]) {
    it(`random splits of a stream of many messages decode identically (seed ${seed})`, () => {
      const r = prng(seed);
      const msgs = Array.from({ length: 400 }, () => randomMessage(r));
      const wire = stream(msgs);
      const d = new FrameDecoder();
      const got: Message[] = [];
      let fed = 0;
      let consumed = 0;
      while (fed < wire.length) {
        // Mix tiny splits (inside the preamble or a header entry) with ones spanning many messages.
        const n = 1 + Math.floor(r() < 0.5 ? r() * 24 : r() * 6000);
        const out = d.push(wire.subarray(fed, fed + n));
        fed = Math.min(wire.length, fed + n);
        for (const m of out) consumed += encodeMessage(m).length;
        got.push(...out);
        expect(d.buffered).toBe(fed - consumed);
      }
      expectSame(got, msgs);
      expect(d.buffered).toBe(0);
    });
  }

  it("several messages in one chunk, with a partial one carried over to the next chunk", () => {
    const wire = stream([hello, data, hello, data]);
    const cut = HELLO_WIRE.length + DATA_WIRE.length + HELLO_WIRE.length + 5;
    const d = new FrameDecoder();
    expectSame(d.push(wire.subarray(0, cut)), [hello, data, hello]);
    expect(d.buffered).toBe(5);
    expectSame(d.push(wire.subarray(cut)), [data]);
    expect(d.buffered).toBe(0);
  });

  it("`buffered` counts the bytes held for a partial message and drops to 0 once it completes", () => {
    const d = new FrameDecoder();
    expect(d.buffered).toBe(0);
    expect(d.push(Buffer.alloc(0))).toEqual([]);
    expect(d.buffered).toBe(0);
    expect(d.push(DATA_WIRE.subarray(0, 3))).toEqual([]);
    expect(d.buffered).toBe(3);
    expect(d.push(DATA_WIRE.subarray(3, 25))).toEqual([]);
    expect(d.buffered).toBe(25);
    expect(d.push(Buffer.alloc(0))).toEqual([]);
    expect(d.buffered).toBe(25);
    expect(d.push(DATA_WIRE.subarray(25))).toHaveLength(1);
    expect(d.buffered).toBe(0);
    expect(d.push(Buffer.concat([HELLO_WIRE, HELLO_WIRE]))).toHaveLength(2);
    expect(d.buffered).toBe(0);
  });

  it("waits on a frame exactly at the limit without allocating its body, then decodes it", () => {
    const d = new FrameDecoder();
    const pre = preamble(0, DEFAULT_MAX_FRAME_BYTES);
    let out: Message[] = [];
    expect(largestBufferCreatedBy(() => (out = d.push(pre)))).toBeLessThan(1024);
    expect(out).toEqual([]);
    expect(d.buffered).toBe(PREAMBLE_BYTES);
    const body = Buffer.alloc(DEFAULT_MAX_FRAME_BYTES, 0x5a);
    expect(d.push(body.subarray(0, 1000))).toEqual([]);
    out = d.push(body.subarray(1000));
    expect(out).toHaveLength(1);
    expect(out[0]!.body.equals(body)).toBe(true);
    expect(d.buffered).toBe(0);
  });
});

describe("frame decoder: malformed input", () => {
  it("rejects a wrong first byte at once (a TLS record, an HTTP request)", () => {
    for (const first of [0x16, 0x47, 0x00, 0x04, 0xff]) {
      const d = new FrameDecoder();
      const err = pushError(d, Buffer.from([first]));
      expect(err.code).toBe(ErrorCodes.PROTOCOL_ERROR);
      expect(err.message).toMatch(/bad frame magic/);
      expect(d.buffered).toBe(0);
    }
    expect(pushError(new FrameDecoder(), Buffer.from("GET / HTTP/1.1\r\n\r\n")).code).toBe(ErrorCodes.PROTOCOL_ERROR);
  });

  it("rejects a wrong byte at each magic position as soon as it arrives, long before 20 bytes", () => {
    for (let pos = 0; pos < 4; pos++) {
      const d = new FrameDecoder();
      for (let i = 0; i < pos; i++) expect(d.push(MAGIC.subarray(i, i + 1))).toEqual([]);
      expect(d.buffered).toBe(pos);
      const bad = Buffer.from([MAGIC[pos]! ^ 0x01]);
      expect(pushError(d, bad).code).toBe(ErrorCodes.PROTOCOL_ERROR);
    }
  });

  it("rejects the test-only V3 magic 03 06 09 0D (4th byte wrong) on its 4th byte", () => {
    const d = new FrameDecoder();
    expect(d.push(Buffer.from([3, 6, 9]))).toEqual([]);
    const err = pushError(d, Buffer.from([0x0d]));
    expect(err.message).toMatch(/030609 ?0d/);
    // Also in one chunk with a whole V3-sized preamble behind it.
    const v3 = Buffer.from(DATA_WIRE);
    v3[3] = 0x0d;
    expect(pushError(new FrameDecoder(), v3.subarray(0, 4)).code).toBe(ErrorCodes.PROTOCOL_ERROR);
    expect(pushError(new FrameDecoder(), v3).code).toBe(ErrorCodes.PROTOCOL_ERROR);
  });

  it("rejects a bad magic on a later frame, after delivering the good ones before it", () => {
    const d = new FrameDecoder();
    expectSame(d.push(HELLO_WIRE), [hello]);
    expect(pushError(d, Buffer.from([3, 6, 8])).code).toBe(ErrorCodes.PROTOCOL_ERROR);
    // In one chunk the good message is lost with the throw, but the decoder still fails.
    expect(pushError(new FrameDecoder(), Buffer.concat([HELLO_WIRE, Buffer.from([0x16])])).code).toBe(
      ErrorCodes.PROTOCOL_ERROR,
    );
  });

  it("rejects an oversized frame from its 20-byte preamble, without waiting for or allocating the body", () => {
    const cases: Array<[number, number]> = [
      [0, 1025],
      [1025, 0],
      [1000, 25],
      [0, 0xfffffff0],
      [0xffffffff, 0xffffffff], // the sum overflows 32 bits
      [0x80000000, 0x80000000], // negative as int32
    ];
    for (const [hlen, blen] of cases) {
      const d = new FrameDecoder({ maxFrameBytes: 1024 });
      const pre = preamble(hlen, blen);
      // Byte by byte: nothing happens until the 20th byte, which throws.
      for (let i = 0; i < PREAMBLE_BYTES - 1; i++) {
        expect(d.push(pre.subarray(i, i + 1))).toEqual([]);
        expect(d.buffered).toBe(i + 1);
      }
      const { err, largest } = pushCaught(d, pre.subarray(PREAMBLE_BYTES - 1));
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as ProtocolError).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
      expect((err as ProtocolError).message).toMatch(/exceeds the 1024-byte limit/);
      expect(largest).toBeLessThan(1024);
      expect(d.buffered).toBe(0);
    }
  });

  it("the default limit is 4 MiB: one byte over is refused from the preamble alone", () => {
    expect(new FrameDecoder().maxFrameBytes).toBe(DEFAULT_MAX_FRAME_BYTES);
    const d = new FrameDecoder();
    const { err, largest } = pushCaught(
      d,
      Buffer.concat([preamble(12, DEFAULT_MAX_FRAME_BYTES - 11), Buffer.alloc(100)]),
    );
    expect((err as ProtocolError).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    expect(largest).toBeLessThan(1024);
    expect(d.buffered).toBe(0);
  });

  it("counts headers and body together against the limit; exactly at the limit is accepted", () => {
    const d = new FrameDecoder({ maxFrameBytes: 100 });
    expect(d.push(preamble(40, 60))).toEqual([]);
    expect(d.buffered).toBe(PREAMBLE_BYTES);
    expect(pushError(new FrameDecoder({ maxFrameBytes: 100 }), preamble(40, 61)).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    const zero = new FrameDecoder({ maxFrameBytes: 0 });
    expect(zero.push(preamble(0, 0))).toHaveLength(1);
    expect(pushError(zero, preamble(0, 1)).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
  });

  it("rejects a header block too short for an entry (8 bytes), alone or after a good entry", () => {
    // The Data vector with its header length cut to 6: the block is "e8030000 0400" and the body grows by 6.
    const short = Buffer.from(DATA_WIRE);
    short.writeUInt32LE(6, 12);
    short.writeUInt32LE(8, 16);
    let err = pushError(new FrameDecoder(), short);
    expect(err.code).toBe(ErrorCodes.PROTOCOL_ERROR);
    expect(err.message).toMatch(/truncated header entry at offset 0 of a 6-byte header block/);

    // A good 12-byte entry followed by 3 stray bytes.
    const block = Buffer.concat([hex("e8030000 04000000 05000000"), hex("aabbcc")]);
    const wire = Buffer.concat([preamble(block.length, 0), block]);
    err = pushError(new FrameDecoder(), wire);
    expect(err.message).toMatch(/truncated header entry at offset 12 of a 15-byte header block/);
    expect(() => decodeHeaders(block)).toThrow(ProtocolError);
  });

  it("rejects a header entry whose length runs past the header block", () => {
    for (const claim of [5, 100, 0x7fffffff, 0xffffffff]) {
      const overrun = Buffer.from(DATA_WIRE);
      overrun.writeUInt32LE(claim, 24); // the ConnId entry's length: the block has 4 bytes left
      const err = pushError(new FrameDecoder(), overrun);
      expect(err.code).toBe(ErrorCodes.PROTOCOL_ERROR);
      expect(err.message).toBe(`header 1000 claims ${claim} bytes but only 4 remain`);
    }
    // The header block must not borrow bytes from the body that follows it.
    const borrow = Buffer.from(DATA_WIRE);
    borrow.writeUInt32LE(6, 24); // 4 bytes of value + the 2 body bytes "hi"
    expect(pushError(new FrameDecoder(), borrow).message).toMatch(/claims 6 bytes but only 4 remain/);
  });

  it("decodeHeaders accepts an empty block and zero-length values", () => {
    expect(decodeHeaders(Buffer.alloc(0)).size).toBe(0);
    const h = decodeHeaders(hex("05000000 00000000 06000000 01000000 01"));
    expect([...h].map(([k, v]) => [k, v.toString("hex")])).toEqual([
      [5, ""],
      [6, "01"],
    ]);
  });

  it("stays failed after any error: every later push throws the same error, even of valid bytes", () => {
    const badHeader = Buffer.from(DATA_WIRE);
    badHeader.writeUInt32LE(100, 24);
    const failures: Array<[Buffer, string, { maxFrameBytes?: number }]> = [
      [Buffer.from([0x16]), ErrorCodes.PROTOCOL_ERROR, {}],
      [preamble(0, 65), ErrorCodes.FRAME_TOO_LARGE, { maxFrameBytes: 64 }],
      [badHeader, ErrorCodes.PROTOCOL_ERROR, {}],
    ];
    for (const [input, code, opts] of failures) {
      const d = new FrameDecoder(opts);
      const first = pushError(d, input);
      expect(first.code).toBe(code);
      expect(d.buffered).toBe(0);
      for (const later of [HELLO_WIRE, Buffer.alloc(0), DATA_WIRE.subarray(0, 1)]) {
        expect(pushError(d, later)).toBe(first);
        expect(d.buffered).toBe(0);
      }
    }
  });

  it("errors are ProtocolError (a ZitiError) with stable string codes", () => {
    const magic = pushError(new FrameDecoder(), Buffer.from([0]));
    const big = pushError(new FrameDecoder({ maxFrameBytes: 1 }), preamble(0, 2));
    for (const err of [magic, big]) {
      expect(err).toBeInstanceOf(ZitiError);
      expect(err).toBeInstanceOf(Error);
      expect(err.name).toBe("ProtocolError");
    }
    expect(magic.code).toBe("ZITI_PROTOCOL_ERROR");
    expect(big.code).toBe("ZITI_FRAME_TOO_LARGE");
  });
});

describe("frame decoder: header caps (issue 18 item 6)", () => {
  // Written out rather than imported, so that these tests hold the decoder to the figures docs/reliability.md states.
  const MAX_HEADERS = 256;
  const MAX_HEADER_BYTES = 64 * 1024;

  /** A header block of `n` entries of `valueBytes` each (distinct keys), as a peer could send it. */
  function headerBlock(n: number, valueBytes = 0): Buffer {
    const b = Buffer.alloc(n * (8 + valueBytes));
    for (let i = 0, off = 0; i < n; i++, off += 8 + valueBytes) {
      b.writeInt32LE(i, off);
      b.writeUInt32LE(valueBytes, off + 4);
    }
    return b;
  }
  const frameWith = (block: Buffer, body = Buffer.alloc(0)) =>
    Buffer.concat([preamble(block.length, body.length), block, body]);

  /** Pushes `wire` one byte at a time: nothing may come out or throw before the last byte; returns what that does. */
  function lastBytePush(d: FrameDecoder, wire: Buffer): () => Message[] {
    for (let i = 0; i < wire.length - 1; i++) expect(d.push(wire.subarray(i, i + 1))).toEqual([]);
    return () => d.push(wire.subarray(wire.length - 1));
  }

  it("the defaults: 256 headers, 64 KiB of header block, within the 4 MiB frame", () => {
    const d = new FrameDecoder();
    expect(d.maxHeaders).toBe(MAX_HEADERS);
    expect(d.maxHeaderBytes).toBe(MAX_HEADER_BYTES);
    expect(DEFAULT_MAX_HEADERS).toBe(MAX_HEADERS);
    expect(DEFAULT_MAX_HEADER_BYTES).toBe(MAX_HEADER_BYTES);
  });

  it("a frame with one header too many is refused (FRAME_TOO_LARGE), whole or fed one byte at a time", () => {
    const over = frameWith(headerBlock(MAX_HEADERS + 1), Buffer.from("body"));
    const err = pushError(new FrameDecoder(), over);
    expect(err.code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    expect(err.message).toMatch(/more than 256 headers in one message/);

    const d = new FrameDecoder();
    const last = lastBytePush(d, over);
    expect(last).toThrow(ProtocolError);
    expect(d.buffered).toBe(0);
    expect(pushError(d, HELLO_WIRE).code).toBe(ErrorCodes.FRAME_TOO_LARGE);

    // Exactly at the cap is a valid message, byte by byte too.
    const at = frameWith(headerBlock(MAX_HEADERS), Buffer.from("body"));
    const out = lastBytePush(new FrameDecoder(), at)();
    expect(out).toHaveLength(1);
    expect(out[0]!.headers.size).toBe(MAX_HEADERS);
    expect(out[0]!.body.toString()).toBe("body");
  });

  it("the count is checked before any entry is decoded: 8,192 empty headers (64 KiB) decode nothing", () => {
    const block = headerBlock(MAX_HEADER_BYTES / 8);
    const wire = frameWith(block);
    const d = new FrameDecoder();
    const { err, largest } = pushCaught(d, wire);
    expect((err as ProtocolError).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    // No copy of the header block was made (the copy is the first thing decoding does).
    expect(largest).toBeLessThan(1024);
    expect(() => decodeHeaders(block)).toThrow(/more than 256 headers/);
    expect(decodeHeaders(block, block.length / 8).size).toBe(block.length / 8);
  });

  it("a header block over 64 KiB is refused from the 20-byte preamble, without waiting for it or allocating it", () => {
    for (const hlen of [MAX_HEADER_BYTES + 1, DEFAULT_MAX_FRAME_BYTES]) {
      const d = new FrameDecoder();
      const pre = preamble(hlen, 0);
      for (let i = 0; i < PREAMBLE_BYTES - 1; i++) expect(d.push(pre.subarray(i, i + 1))).toEqual([]);
      const { err, largest } = pushCaught(d, pre.subarray(PREAMBLE_BYTES - 1));
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as ProtocolError).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
      expect((err as ProtocolError).message).toMatch(/header block exceeds the 65536-byte header limit/);
      expect(largest).toBeLessThan(1024);
      expect(d.buffered).toBe(0);
    }
  });

  it("one AppData header whose decoded size passes the cap by a byte is refused; at the cap it is accepted", () => {
    const entry = (valueBytes: number) => headerBlock(1, valueBytes);
    const over = frameWith(entry(MAX_HEADER_BYTES - 8 + 1));
    expect(pushError(new FrameDecoder(), over).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    const d = new FrameDecoder();
    expect(() => lastBytePush(d, over)()).toThrow(/header block exceeds/);

    const at = frameWith(entry(MAX_HEADER_BYTES - 8), Buffer.alloc(1000, 1));
    const out = lastBytePush(new FrameDecoder(), at)();
    expect(out).toHaveLength(1);
    expect(out[0]!.headers.get(0)!.length).toBe(MAX_HEADER_BYTES - 8);
  });

  it("the frame of the issue (524,288 empty headers in 4 MiB) is refused from its preamble", () => {
    const d = new FrameDecoder();
    const err = pushError(d, preamble(DEFAULT_MAX_FRAME_BYTES, 0));
    expect(err.code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    expect(d.buffered).toBe(0);
  });

  it("both caps can be set per decoder", () => {
    const d = new FrameDecoder({ maxHeaders: 2, maxHeaderBytes: 16 });
    expect(d.push(frameWith(headerBlock(2)))).toHaveLength(1);
    expect(pushError(d, frameWith(headerBlock(3))).message).toMatch(/header block exceeds the 16-byte/);
    expect(pushError(new FrameDecoder({ maxHeaders: 2 }), frameWith(headerBlock(3))).message).toMatch(
      /more than 2 headers/,
    );
  });
});

describe("typed header values", () => {
  it("encode little-endian to the sizes of §3.2 and decode back", () => {
    expect(enc.u16(513).toString("hex")).toBe("0102");
    expect(enc.u32(0x01020304).toString("hex")).toBe("04030201");
    expect(enc.bool(true).toString("hex")).toBe("01");
    expect(enc.bool(false).toString("hex")).toBe("00");
    expect(enc.str("héllo").toString("hex")).toBe(Buffer.from("héllo", "utf8").toString("hex"));

    const h: Headers = new Map();
    const u16s = [0, 1, 513, 0xffff];
    const u32s = [0, 1, 0xdeadbeef, 0xffffffff];
    const strs = ["", "tok", "héllo ✓ 🦀", "a".repeat(5000)];
    u16s.forEach((v, i) => h.set(100 + i, enc.u16(v)));
    u32s.forEach((v, i) => h.set(200 + i, enc.u32(v)));
    strs.forEach((v, i) => h.set(300 + i, enc.str(v)));
    h.set(400, enc.bool(true));
    h.set(401, enc.bool(false));

    // Through the wire and back, as a router would see them.
    const [m] = new FrameDecoder().push(
      encodeMessage({ contentType: 0, sequence: 0, headers: h, body: Buffer.alloc(0) }),
    );
    for (const headers of [h, m!.headers]) {
      u16s.forEach((v, i) => expect(dec.u16(headers, 100 + i)).toBe(v));
      u32s.forEach((v, i) => expect(dec.u32(headers, 200 + i)).toBe(v));
      strs.forEach((v, i) => expect(dec.str(headers, 300 + i)).toBe(v));
      expect(dec.bool(headers, 400)).toBe(true);
      expect(dec.bool(headers, 401)).toBe(false);
    }
  });

  it("decode to undefined when the header is absent or has the wrong size", () => {
    const h: Headers = new Map([
      [0, Buffer.alloc(0)],
      [1, Buffer.alloc(1)],
      [2, Buffer.alloc(2)],
      [3, Buffer.alloc(3)],
      [4, Buffer.alloc(4)],
      [5, Buffer.alloc(5)],
      [8, Buffer.alloc(8)],
    ]);
    for (const id of [0, 1, 3, 4, 5, 8, 99]) expect(dec.u16(h, id)).toBeUndefined();
    for (const id of [0, 1, 2, 3, 5, 8, 99]) expect(dec.u32(h, id)).toBeUndefined();
    expect(dec.u16(h, 2)).toBe(0);
    expect(dec.u32(h, 4)).toBe(0);
    expect(dec.bool(h, 0)).toBeUndefined();
    expect(dec.bool(h, 99)).toBeUndefined();
    expect(dec.str(h, 99)).toBeUndefined();
    expect(dec.str(h, 0)).toBe("");
  });
});
