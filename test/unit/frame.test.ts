import { describe, expect, it } from "vitest";
import { ErrorCodes, ProtocolError } from "../../src/ziti/errors.js";
import { FrameDecoder, encodeMessage, type Message } from "../../src/ziti/protocol/frame.js";
import { ContentType, Header, dec, enc } from "../../src/ziti/protocol/headers.js";
import { prng } from "./prng.js";

const hello: Message = {
  contentType: ContentType.Hello,
  sequence: -1,
  headers: new Map([[Header.SessionToken, Buffer.from("tok")]]),
  body: Buffer.from("id1"),
};
const HELLO_HEX = "0306090c00000000ffffffff0b00000003000000ea03000003000000746f6b696431";
const data: Message = {
  contentType: ContentType.Data,
  sequence: 7,
  headers: new Map([[Header.ConnId, enc.u32(5)]]),
  body: Buffer.from("hi"),
};
const DATA_HEX = "0306090c72ed0000070000000c00000002000000e803000004000000050000006869";

function same(a: Message, b: Message): void {
  expect(a.contentType).toBe(b.contentType);
  expect(a.sequence).toBe(b.sequence);
  expect([...a.headers].map(([k, v]) => [k, v.toString("hex")])).toEqual(
    [...b.headers].map(([k, v]) => [k, v.toString("hex")]),
  );
  expect(a.body.equals(b.body)).toBe(true);
}

function randomMessage(r: () => number): Message {
  const headers = new Map<number, Buffer>();
  const n = Math.floor(r() * 5);
  for (let i = 0; i < n; i++)
    headers.set(
      Math.floor(r() * 2000) - 10,
      Buffer.from(Array.from({ length: Math.floor(r() * 40) }, () => Math.floor(r() * 256))),
    );
  const body = Buffer.from(
    Array.from({ length: Math.floor(r() * (r() < 0.1 ? 5000 : 60)) }, () => Math.floor(r() * 256)),
  );
  return { contentType: Math.floor(r() * 70000) - 5, sequence: Math.floor(r() * 2 ** 32) - 2 ** 31, headers, body };
}

describe("frame codec (channel V2)", () => {
  it("encodes the specification's test vectors exactly and decodes them back", () => {
    expect(encodeMessage(hello).toString("hex")).toBe(HELLO_HEX);
    expect(encodeMessage(data).toString("hex")).toBe(DATA_HEX);
    const out = new FrameDecoder().push(Buffer.from(HELLO_HEX + DATA_HEX, "hex"));
    expect(out).toHaveLength(2);
    same(out[0]!, hello);
    same(out[1]!, data);
  });

  it("decodes the same messages when fed one byte at a time", () => {
    const stream = Buffer.concat([
      encodeMessage(hello),
      encodeMessage(data),
      encodeMessage({ ...data, body: Buffer.alloc(0), headers: new Map() }),
    ]);
    const d = new FrameDecoder();
    const got: Message[] = [];
    for (const b of stream) got.push(...d.push(Buffer.from([b])));
    expect(got).toHaveLength(3);
    same(got[0]!, hello);
    same(got[1]!, data);
    expect(got[2]!.headers.size).toBe(0);
    expect(d.buffered).toBe(0);
  });

  it("decodes random messages under random splits (seed 42)", () => {
    const r = prng(42);
    const msgs = Array.from({ length: 300 }, () => randomMessage(r));
    const stream = Buffer.concat(msgs.map(encodeMessage));
    const d = new FrameDecoder();
    const got: Message[] = [];
    for (let off = 0; off < stream.length;) {
      const n = 1 + Math.floor(r() * 3000);
      got.push(...d.push(stream.subarray(off, off + n)));
      off += n;
    }
    expect(got).toHaveLength(msgs.length);
    got.forEach((m, i) => same(m, msgs[i]!));
    expect(d.buffered).toBe(0);
  });

  it("rejects a bad magic as soon as the first wrong byte arrives", () => {
    expect(() => new FrameDecoder().push(Buffer.from([0x16]))).toThrow(ProtocolError);
    const d = new FrameDecoder();
    expect(() => d.push(Buffer.from([3, 6, 9, 0x0d]))).toThrow(/bad frame magic/);
    expect(() => d.push(Buffer.from(HELLO_HEX, "hex"))).toThrow(ProtocolError); // stays failed
  });

  it("rejects an oversized frame from its preamble, before the body arrives or is allocated", () => {
    const d = new FrameDecoder({ maxFrameBytes: 1024 });
    const pre = Buffer.alloc(20);
    Buffer.from([3, 6, 9, 12]).copy(pre);
    pre.writeUInt32LE(0, 12);
    pre.writeUInt32LE(0xfffffff0, 16);
    let err: unknown;
    try {
      d.push(pre);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as ProtocolError).code).toBe(ErrorCodes.FRAME_TOO_LARGE);
    expect(d.buffered).toBe(0);
  });

  it("rejects truncated and overrunning header entries", () => {
    const m = encodeMessage(data);
    const shortEntry = Buffer.from(m);
    shortEntry.writeUInt32LE(6, 12); // header block of 6 bytes: shorter than one entry
    expect(() => new FrameDecoder().push(shortEntry)).toThrow(/truncated header entry/);
    const overrun = Buffer.from(m);
    overrun.writeUInt32LE(100, 24); // the ConnId entry claims 100 bytes
    expect(() => new FrameDecoder().push(overrun)).toThrow(/claims 100 bytes/);
  });

  it("reads typed header values and refuses wrong sizes", () => {
    const h = new Map([
      [1, enc.u32(0xdeadbeef)],
      [2, enc.u16(513)],
      [3, enc.bool(true)],
      [4, enc.str("héllo")],
      [5, Buffer.from([1, 2, 3])],
    ]);
    expect(dec.u32(h, 1)).toBe(0xdeadbeef);
    expect(dec.u16(h, 2)).toBe(513);
    expect(dec.bool(h, 3)).toBe(true);
    expect(dec.str(h, 4)).toBe("héllo");
    expect(dec.u32(h, 5)).toBeUndefined();
    expect(dec.u16(h, 1)).toBeUndefined();
    expect(dec.u32(h, 99)).toBeUndefined();
  });
});
