/**
 * A channel's writes per event-loop turn (issue 23 item 1): the frames sent in one turn leave as one socket write,
 * byte for byte the frames in order, and the wire counters (wire-stats.ts) say so; the retransmission allowance
 * that bounds what a channel's circuits resend at once. Against the scripted fake router (plain TCP), which sees
 * the raw chunks.
 */
import { describe, expect, it } from "vitest";
import {
  BATCH_FLUSH_BYTES,
  type Channel,
  ContentType,
  encodeMessage,
  enc,
  Header,
  type Headers,
  RETX_BURST,
  wireStats,
} from "../../src/ziti/internal.js";
import { FakeRouter } from "../harness/fake-router.js";
import { scriptedRouterScope } from "../harness/scripted-scope.js";

const { routers, channels } = scriptedRouterScope();

async function setup(): Promise<{ router: FakeRouter; ch: Channel; chunks: Buffer[] }> {
  const router = await FakeRouter.start();
  routers.push(router);
  const ch = await router.openChannel({ latencyIntervalMs: 3_600_000, writeBatch: true });
  channels.push(ch);
  const chunks: Buffer[] = [];
  router.socket.on("data", (c: Buffer) => chunks.push(c));
  return { router, ch, chunks };
}

const turn = () => new Promise((r) => setImmediate(r));

describe("channel writes: one socket write per event-loop turn", () => {
  it("three frames sent together arrive as one chunk, exactly the three encoded frames in order", async () => {
    const { ch, chunks } = await setup();
    await new Promise((r) => setTimeout(r, 50)); // the hello exchange is over
    chunks.length = 0;
    const before = { ...wireStats };
    const bodies = [Buffer.from("first"), Buffer.alloc(3000, 2), Buffer.alloc(0)];
    const sent = bodies.map((body, i) => {
      const headers: Headers = new Map([[Header.ConnId, enc.u32(100 + i)]]);
      const sequence = ch.nextSequence();
      ch.send(ContentType.Data, headers, body, sequence);
      return encodeMessage({ contentType: ContentType.Data, sequence, headers, body });
    });
    expect(chunks).toHaveLength(0); // nothing left before our code returned
    await new Promise((r) => setTimeout(r, 50));
    expect(Buffer.concat(chunks).equals(Buffer.concat(sent))).toBe(true);
    expect(chunks).toHaveLength(1);
    expect(wireStats.framesSent - before.framesSent).toBe(3);
    expect(wireStats.bytesSent - before.bytesSent).toBe(Buffer.concat(sent).length);
    expect(wireStats.socketWrites - before.socketWrites).toBe(1);
    expect(wireStats.tlsRecords - before.tlsRecords).toBe(1);
  });

  it("frames sent from separate callbacks of one turn (a timer each, a microtask) leave as one write", async () => {
    const { ch, chunks } = await setup();
    await new Promise((r) => setTimeout(r, 50));
    chunks.length = 0;
    const before = { ...wireStats };
    const send = (n: number) => ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(n)]]), Buffer.from("x"));
    // Timers due together run in one timers phase, before the turn's end (setImmediate).
    await new Promise<void>((done) => {
      setTimeout(() => {
        send(1);
        queueMicrotask(() => send(2));
      }, 5);
      setTimeout(() => {
        send(3);
        setImmediate(done);
      }, 5);
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(wireStats.framesSent - before.framesSent).toBe(3);
    expect(wireStats.socketWrites - before.socketWrites).toBe(1);
    expect(Buffer.concat(chunks).length).toBe(wireStats.bytesSent - before.bytesSent);
  });

  it("frames sent in different turns are separate writes; 16 KiB gathered are written at once", async () => {
    const { ch, chunks } = await setup();
    await new Promise((r) => setTimeout(r, 50));
    chunks.length = 0;
    const before = { ...wireStats };
    ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(1)]]), Buffer.from("a"));
    await turn();
    await turn();
    expect(wireStats.socketWrites - before.socketWrites).toBe(1);
    ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(1)]]), Buffer.from("b"));
    // Gathered with "b", this frame passes BATCH_FLUSH_BYTES: both leave now, not at the end of the turn.
    ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(1)]]), Buffer.alloc(20_000, 1));
    expect(wireStats.socketWrites - before.socketWrites).toBe(2);
    ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(1)]]), Buffer.alloc(20_000, 2));
    expect(wireStats.socketWrites - before.socketWrites).toBe(3);
    await new Promise((r) => setTimeout(r, 50));
    expect(wireStats.socketWrites - before.socketWrites).toBe(3);
    // "a"; "b" + 20,000 bytes of body (plus headers): 2 records of at most 16 KiB; the last frame: 2 records.
    expect(wireStats.tlsRecords - before.tlsRecords).toBe(1 + 2 + 2);
    expect(wireStats.framesSent - before.framesSent).toBe(4);
    expect(BATCH_FLUSH_BYTES).toBe(16 * 1024);
  });

  it("what was sent just before a local close still reaches the router", async () => {
    const { router, ch } = await setup();
    await new Promise((r) => setTimeout(r, 50));
    const last = router.next((m) => m.contentType === ContentType.Data && m.body.toString() === "last words");
    ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(7)]]), Buffer.from("last words"));
    ch.close("done");
    expect((await last).body.toString()).toBe("last words");
  });

  it("send() still reports a full socket while corked, and whenWritable() resolves once the batch drained", async () => {
    const { router, ch } = await setup();
    router.pauseReading(true);
    let full = false;
    for (let i = 0; i < 200 && !full; i++) {
      full = !ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(1)]]), Buffer.alloc(64 * 1024, i));
    }
    expect(full).toBe(true);
    const drained = ch.whenWritable();
    router.pauseReading(false);
    await drained;
  });
});

describe("channel writes without batching", () => {
  it("writes each frame at once without writeBatch (the default)", async () => {
    const router = await FakeRouter.start();
    routers.push(router);
    const ch = await router.openChannel({ latencyIntervalMs: 3_600_000 });
    channels.push(ch);
    await new Promise((r) => setTimeout(r, 50));
    const before = { ...wireStats };
    for (let i = 0; i < 3; i++) ch.send(ContentType.Data, new Map([[Header.ConnId, enc.u32(1)]]), Buffer.from("x"));
    expect(wireStats.socketWrites - before.socketWrites).toBe(3);
    expect(wireStats.tlsRecords - before.tlsRecords).toBe(3);
  });
});

describe("the channel's retransmission allowance", () => {
  it("gives at most RETX_BURST at once, refills with time, and what is spent is gone", async () => {
    const { ch } = await setup();
    const t = 1_000_000;
    expect(ch.retransmitAllowance(t)).toBe(RETX_BURST);
    ch.retransmitted(RETX_BURST);
    expect(ch.retransmitAllowance(t)).toBe(0);
    expect(ch.retransmitAllowance(t + 4)).toBe(2); // 1 per 2 ms
    ch.retransmitted(2);
    expect(ch.retransmitAllowance(t + 10_000)).toBe(RETX_BURST); // never more than the burst
  });
});
