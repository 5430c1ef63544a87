/**
 * How a connection's writes become Data messages (src/ziti/protocol/conn-types.ts, dataMessages): sizes, order,
 * views rather than copies, and which messages are joined before they are sealed.
 */
import { describe, expect, it } from "vitest";
import { MAX_DATA_CHUNK, dataMessages } from "../../src/ziti/protocol/conn-types.js";

const KiB = 1024;
const bytes = (n: number, fill: number) => Buffer.alloc(n, fill);

describe("a connection's writes as Data messages", () => {
  const cases: { what: string; writes: number[]; sizes: number[]; pieces: number[] }[] = [
    { what: "one small write", writes: [100], sizes: [100], pieces: [1] },
    {
      what: "an HTTP head and a body past one message",
      writes: [150, 60 * KiB],
      sizes: [32 * KiB, 28 * KiB + 150],
      pieces: [2, 1],
    },
    { what: "two writes within 4 KiB: joined", writes: [150, 3000], sizes: [3150], pieces: [1] },
    {
      what: "three pieces (chunked framing around data): joined",
      writes: [6, 18 * KiB, 2],
      sizes: [18 * KiB + 8],
      pieces: [1],
    },
    {
      what: "one write of exactly two messages",
      writes: [2 * MAX_DATA_CHUNK],
      sizes: [MAX_DATA_CHUNK, MAX_DATA_CHUNK],
      pieces: [1, 1],
    },
    { what: "empty writes add nothing", writes: [0, 10, 0], sizes: [10], pieces: [1] },
    { what: "nothing written", writes: [], sizes: [], pieces: [] },
  ];
  for (const c of cases) {
    it(`${c.what}: messages of ${c.sizes.join(", ") || "none"} bytes, in order`, () => {
      const writes = c.writes.map((n, i) => bytes(n, i + 1));
      const out = [...dataMessages(writes)];
      expect(out.map((m) => m.size)).toEqual(c.sizes);
      expect(out.map((m) => m.pieces.length)).toEqual(c.pieces);
      for (const m of out) expect(m.pieces.reduce((n, p) => n + p.length, 0)).toBe(m.size);
      expect(Buffer.concat(out.flatMap((m) => m.pieces)).equals(Buffer.concat(writes))).toBe(true);
    });
  }

  it("pieces left as they are are views into the writes, not copies", () => {
    const head = bytes(150, 1);
    const body = bytes(60 * KiB, 2);
    const [first, second] = [...dataMessages([head, body])];
    expect(first!.pieces[0]).toBe(head);
    expect(first!.pieces[1]!.buffer).toBe(body.buffer);
    expect(second!.pieces[0]!.buffer).toBe(body.buffer);
  });
});
