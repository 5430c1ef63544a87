/** Randomized: ≥ 100,000 hostile inputs never crash, hang or grow the decoder without bound. */
import { describe, expect, it } from "vitest";
import { ProtocolError } from "../../src/ziti/errors.js";
import { FrameDecoder, encodeMessage } from "../../src/ziti/protocol/frame.js";
import { prng } from "./prng.js";

const SEED = 20261122;
const MAX = 4096;

function feed(input: Buffer, r: () => number): void {
  const d = new FrameDecoder({ maxFrameBytes: MAX });
  try {
    for (let off = 0; off < input.length;) {
      const n = 1 + Math.floor(r() * 64);
      d.push(input.subarray(off, off + n));
      off += n;
      expect(d.buffered).toBeLessThanOrEqual(Math.min(off, MAX + 20 + 64));
    }
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
  }
}

describe(`frame decoder under random input (seed ${SEED})`, () => {
  it("100,000 random byte strings and mutated valid streams: only ProtocolError, bounded buffering", () => {
    const r = prng(SEED);
    const valid = Buffer.concat(
      Array.from({ length: 8 }, (_, i) =>
        encodeMessage({
          contentType: 60786,
          sequence: i,
          headers: new Map([[1000, Buffer.from([i, 0, 0, 0])]]),
          body: Buffer.alloc(i * 37, i),
        }),
      ),
    );
    for (let i = 0; i < 100_000; i++) {
      let input: Buffer;
      if (i % 2 === 0) {
        input = Buffer.from(Array.from({ length: Math.floor(r() * 80) }, () => Math.floor(r() * 256)));
        if (r() < 0.5 && input.length >= 4) Buffer.from([3, 6, 9, 12]).copy(input); // get past the magic check
      } else {
        input = Buffer.from(valid.subarray(0, Math.floor(r() * valid.length) + 1));
        const flips = 1 + Math.floor(r() * 4);
        for (let f = 0; f < flips; f++) input[Math.floor(r() * input.length)] = Math.floor(r() * 256);
      }
      feed(input, r);
    }
  });
});
