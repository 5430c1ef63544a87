/**
 * SDK flow control ("xgress to SDK"): the pure parts (receive reorder buffer, send window) and the connection
 * engine against the scripted fake router (test/harness/fake-router.ts). The real overlay is the proof
 * (test/integration/sdk-xg.test.ts); these pin down ordering, acknowledgements, windows, retransmission and close.
 */
import { describe, expect, it } from "vitest";
import { ErrorCodes } from "../../src/ziti/errors.js";
import {
  BindHandle,
  type Channel,
  type ChannelOptions,
  ContentType,
  dec,
  dialOnChannel,
  enc,
  Flag,
  Header,
  MAX_DATA_CHUNK,
  XG_CAPABILITY_EOF,
  XgFlag,
  type XgPayload,
  XgReceiveBuffer,
  XgSendBuffer,
  XgState,
  rttClock,
  type ZitiConnection,
} from "../../src/ziti/internal.js";
import { FakeRouter } from "../harness/fake-router.js";
import { scriptedRouterScope } from "../harness/scripted-scope.js";

const KiB = 1024;
const MiB = 1024 * 1024;
const settle = (ms = 30) => new Promise((r) => setTimeout(r, ms));

async function until<T>(check: () => T | undefined | false | null, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const payload = (sequence: number, data = "", flags = 0): XgPayload => ({
  circuitId: "c",
  sequence,
  flags,
  edgeFlags: 0,
  rtt: undefined,
  data: Buffer.from(data),
});

describe("XgReceiveBuffer", () => {
  it("delivers in sequence order, acknowledges duplicates again, drops new payloads past its bound", () => {
    let unread = 0;
    const rx = new XgReceiveBuffer(
      () => 10,
      () => unread,
    );
    expect(rx.receive(payload(2, "cc"))).toEqual({ ack: true, ready: [] });
    expect(rx.receive(payload(1, "b"))).toEqual({ ack: true, ready: [] });
    expect(rx.size).toBe(3);
    const r = rx.receive(payload(0, "a"));
    expect(r.ack).toBe(true);
    expect(r.ready.map((p) => p.data.toString())).toEqual(["a", "b", "cc"]);
    expect(rx.receive(payload(1, "b"))).toEqual({ ack: true, ready: [] });
    expect(rx.duplicates).toBe(1);
    unread = 11; // the reader lags past the bound: a new payload is dropped, unacknowledged (the sender resends it)
    expect(rx.receive(payload(3, "d"))).toEqual({ ack: false, ready: [] });
    expect(rx.dropped).toBe(1);
    unread = 0;
    expect(rx.receive(payload(3, "d")).ready).toHaveLength(1);
  });

  it("never holds more than its bound plus one payload: gap fills past it wait, the awaited one always passes", () => {
    let unread = 0;
    const rx = new XgReceiveBuffer(
      () => 10,
      () => unread,
    );
    expect(rx.receive(payload(0, "aaaaaa")).ack).toBe(true); // 6 unread
    unread = 6;
    expect(rx.receive(payload(1, "bbbbb")).ack).toBe(false); // 6 + 5 > 10: dropped, even though it is next
    expect(rx.receive(payload(2, "cccc")).ack).toBe(true); // out of order, 6 + 4 <= 10: held
    expect(rx.size).toBe(10);
    expect(rx.receive(payload(1, "bbbbb")).ack).toBe(false); // the gap fill would exceed the bound: it waits
    unread = 0; // the reader caught up: the payload it waits for passes although it takes the size to 9 + ... > bound
    const r = rx.receive(payload(1, "bbbbb"));
    expect(r.ack).toBe(true);
    expect(r.ready.map((p) => p.data.toString())).toEqual(["bbbbb", "cccc"]);
    // A payload bigger than the whole bound still passes when the reader waits for it (no deadlock).
    expect(rx.receive(payload(3, "x".repeat(50))).ack).toBe(true);
    expect(rx.dropped).toBe(2);
  });
});

describe("XgSendBuffer", () => {
  it("blocks on its own window and on the peer's reported buffer, lets one through when nothing is in flight", () => {
    const tx = new XgSendBuffer({ txPortalStart: 100, txPortalMax: 1000 });
    expect(tx.blockedBy()).toBeUndefined();
    const a = tx.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(150) });
    expect(tx.blockedBy()).toBe("local");
    tx.ack({ circuitId: "c", flags: 0, recvBufferSize: 2000, rtt: undefined, sequences: [a.sequence] });
    expect(tx.blockedBy()).toBeUndefined(); // nothing in flight: one may go, it probes the window
    tx.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(10) });
    expect(tx.blockedBy()).toBe("remote");
    tx.ack({ circuitId: "c", flags: 0, recvBufferSize: 0, rtt: undefined, sequences: [] });
    expect(tx.blockedBy()).toBeUndefined();
  });

  it("retransmits on timeout with back-off, and at once when later payloads were acknowledged", () => {
    const tx = new XgSendBuffer({ retxStartMs: 200, retxMaxMs: 2000 }, () => 0); // no jitter
    const ps = [0, 1, 2, 3, 4].map(() => tx.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(1) }, 0));
    expect(tx.due(100)).toEqual([]);
    expect(tx.due(200).map((p) => p.sequence)).toEqual([0, 1, 2, 3, 4]);
    expect(tx.due(300)).toEqual([]); // backed off: 400 ms now
    tx.ack({ circuitId: "c", flags: 0, recvBufferSize: 0, rtt: undefined, sequences: [2, 3, 4] }, 350);
    // 0 and 1 were overtaken by three acknowledged payloads: resent at once, without waiting out the timeout.
    expect(tx.due(350).map((p) => p.sequence)).toEqual([0, 1]);
    const t2 = new XgSendBuffer({}, () => 0);
    [0, 1, 2, 3, 4].forEach(() => t2.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(1) }, 0));
    t2.ack({ circuitId: "c", flags: 0, recvBufferSize: 0, rtt: undefined, sequences: [2, 3, 4] }, 10);
    expect(t2.due(10).map((p) => p.sequence)).toEqual([0, 1]);
    expect(ps).toHaveLength(5);
  });

  it("jitters each retransmission wait, and resends at most the limit it is given, oldest first, the rest staying due", () => {
    // Circuits that timed out together must not resend together: each wait is stretched by 1 + retxJitter x random.
    const draws = [0.25, 0.75];
    const tx = new XgSendBuffer({ retxStartMs: 200, retxJitter: 0.5 }, () => draws.shift() ?? 0);
    tx.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(1) }, 0); // waits 200 x 1.125 = 225
    tx.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(1) }, 0); // waits 200 x 1.375 = 275
    expect(tx.due(224)).toEqual([]);
    expect(tx.due(225).map((p) => p.sequence)).toEqual([0]);
    expect(tx.due(274)).toEqual([]);
    expect(tx.due(275).map((p) => p.sequence)).toEqual([1]);
    // The limit (the channel's allowance): only the oldest go now, the others on a later call.
    const t2 = new XgSendBuffer({ retxStartMs: 100 }, () => 0);
    for (let i = 0; i < 5; i++) t2.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(1) }, 0);
    expect(t2.due(100, 2).map((p) => p.sequence)).toEqual([0, 1]);
    expect(t2.due(100, 0)).toEqual([]);
    expect(t2.due(101, 8).map((p) => p.sequence)).toEqual([2, 3, 4]);
    expect(t2.retransmits).toBe(5);
  });

  it("times out after the smoothed RTT plus four deviations, not a multiple of the mean", () => {
    const tx = new XgSendBuffer({ retxMinMs: 10 }, () => 0);
    const ack = (seq: number, sentAt: number, now: number) =>
      tx.ack({ circuitId: "c", flags: 0, recvBufferSize: 0, rtt: rttClock(sentAt), sequences: [seq] }, now);
    const add = (now: number) => tx.add({ circuitId: "c", flags: 0, edgeFlags: 0, data: Buffer.alloc(1) }, now);
    add(1000);
    ack(0, 1000, 1100); // first sample 100: srtt 100, deviation 50
    expect(tx.retxTimeoutMs).toBe(300);
    add(2000);
    ack(1, 2000, 2100); // steady: the deviation shrinks
    expect(tx.retxTimeoutMs).toBe(Math.ceil(100 + 4 * 37.5));
    add(3000);
    ack(2, 3000, 3500); // one late ack widens it
    expect(tx.retxTimeoutMs).toBeGreaterThan(600);
  });
});

// Every test also proves that nothing escaped to uncaughtException (test/harness/scripted-scope.ts).
const { routers, channels } = scriptedRouterScope();

async function setup(opts: Partial<ChannelOptions> = {}): Promise<{ router: FakeRouter; ch: Channel }> {
  const router = await FakeRouter.start();
  routers.push(router);
  const ch = await router.openChannel({ latencyIntervalMs: 3_600_000, ...opts });
  channels.push(ch);
  return { router, ch };
}

/** A plaintext dial the fake router grants SDK flow control. */
async function dialXg(router: FakeRouter, ch: Channel): Promise<{ c: ZitiConnection; circuit: string; id: number }> {
  const before = router.received.length;
  const p = dialOnChannel(ch, { service: "svc", sessionToken: "t", encrypt: false, callerId: "me", timeoutMs: 5_000 });
  const connect = await router.next(ContentType.Connect, 5_000, before);
  expect(dec.bool(connect.headers, Header.UseXgressToSdk)).toBe(true);
  const circuit = router.connectedXg(connect);
  const c = await p;
  return { c, circuit, id: c.connId };
}

const T = XgFlag.Originator; // payloads from the far (terminator) side carry the originator flag

describe("SDK flow control on a connection (fake router)", () => {
  it("negotiates per connection: the Connect asks, the answer decides; legacy when not granted or forced", async () => {
    const { router, ch } = await setup();
    const { c, circuit } = await dialXg(router, ch);
    expect(c.flowControl).toBe("sdk");
    // The initiator opens the circuit with an empty CircuitStart payload, sequence 0.
    const start = await until(() => router.xgSent(circuit)[0], "circuit start");
    expect(start).toMatchObject({ sequence: 0, flags: XgFlag.CircuitStart, data: Buffer.alloc(0) });
    // A router that does not answer with UseXgressToSdk gets a legacy connection.
    const before = router.received.length;
    const p = dialOnChannel(ch, {
      service: "svc",
      sessionToken: "t",
      encrypt: false,
      callerId: "me",
      timeoutMs: 5_000,
    });
    router.connected(await router.next(ContentType.Connect, 5_000, before));
    expect((await p).flowControl).toBe("legacy");
    // Forced legacy: the Connect does not ask.
    const legacy = await setup({ sdkFlowControl: false });
    const b2 = legacy.router.received.length;
    const p2 = dialOnChannel(legacy.ch, {
      service: "s",
      sessionToken: "t",
      encrypt: false,
      callerId: "m",
      timeoutMs: 5_000,
    });
    const connect = await legacy.router.next(ContentType.Connect, 5_000, b2);
    expect(connect.headers.has(Header.UseXgressToSdk)).toBe(false);
    legacy.router.connected(connect);
    expect((await p2).flowControl).toBe("legacy");
  });

  it("delivers payloads in sequence order whatever order they arrive in; one ack per socket read carries every sequence and the unread size", async () => {
    const { router, ch } = await setup();
    const { c, circuit, id } = await dialXg(router, ch);
    c.pause();
    // Four payloads in one write (one socket read): one acknowledgement for all of them, duplicates included.
    router.writeRaw(
      Buffer.concat([
        router.xgPayloadFrame(id, circuit, 2, Buffer.from("three"), { flags: T }),
        router.xgPayloadFrame(id, circuit, 0, Buffer.from("one-"), { flags: T }),
        router.xgPayloadFrame(id, circuit, 1, Buffer.from("two-"), { flags: T }),
        router.xgPayloadFrame(id, circuit, 1, Buffer.from("two-"), { flags: T }), // a duplicate: acknowledged again
      ]),
    );
    const first = await until(() => router.xgAcks(circuit)[0], "the first ack");
    expect(first.sequences).toEqual([2, 0, 1, 1]);
    // The size reported is what the reader has not consumed yet (plus what waits out of order), after the read.
    expect(first.recvBufferSize).toBe(13);
    // A later read gets its own acknowledgement.
    router.xgPayload(id, circuit, 3, Buffer.alloc(0), { flags: T, edgeFlags: Flag.FIN });
    const acks = await until(() => (router.xgAcks(circuit).length === 2 ? router.xgAcks(circuit) : false), "2 acks");
    expect(acks[1]).toEqual({ sequences: [3], recvBufferSize: 13 });
    const got: Buffer[] = [];
    c.on("data", (d: Buffer) => got.push(d));
    c.resume();
    await new Promise((r) => c.once("end", r));
    expect(Buffer.concat(got).toString()).toBe("one-two-three");
  });

  it("a lagging reader makes the sender stop: past its bound new payloads go unacknowledged; reading reopens the window", async () => {
    const { router, ch } = await setup();
    const { c, circuit, id } = await dialXg(router, ch);
    c.maxBufferedBytes = 64 * KiB;
    c.pause();
    for (let s = 0; s < 4; s++) router.xgPayload(id, circuit, s, Buffer.alloc(32 * KiB, s), { flags: T });
    await until(() => router.xgAcks(circuit).flatMap((a) => a.sequences).length >= 2, "acks");
    await settle(50);
    const acks = router.xgAcks(circuit);
    // 0 and 1 fill the 64 KiB bound and are taken; 2 and 3 would pass it: dropped, not acknowledged.
    expect(acks.flatMap((a) => a.sequences)).toEqual([0, 1]);
    expect(acks.at(-1)!.recvBufferSize).toBe(64 * KiB);
    expect(c.destroyed).toBe(false);
    // The reader catches up: an empty acknowledgement tells the sender the buffer emptied.
    let read = 0;
    c.on("data", (d: Buffer) => (read += d.length));
    c.resume();
    const update = await until(
      () => router.xgAcks(circuit).find((a) => a.sequences.length === 0),
      "window update (empty ack)",
    );
    expect(update.recvBufferSize).toBeLessThan(48 * KiB);
    // The sender's retransmissions.
    for (let s = 2; s < 4; s++) router.xgPayload(id, circuit, s, Buffer.alloc(32 * KiB, s), { flags: T });
    await until(() => read === 128 * KiB, "all 128 KiB read");
  });

  it("a resent plaintext payload carries the bytes as written, though the writer reused its buffers after the callback", async () => {
    const { router, ch } = await setup();
    const { c, circuit } = await dialXg(router, ch);
    const head = Buffer.from("head|");
    const body = Buffer.alloc(8 * KiB, "body of the answer "); // over the size below which the pieces are joined
    const written = Buffer.concat([head, body]).toString();
    // Corked: the two writes reach the connection together (_writev), as an HTTP head and its body do.
    c.cork();
    c.write(head);
    c.write(body, () => {
      head.fill(0);
      body.fill(0);
    });
    c.uncork();
    const data = (p: { data: Buffer }) => p.data.toString();
    const resent = await until(
      () => router.xgSent(circuit).find((p) => p.flags & XgFlag.Retransmit && p.data.length > 0),
      "a retransmission of the unacknowledged payload",
    );
    expect(head.every((b) => b === 0) && body.every((b) => b === 0)).toBe(true);
    expect(data(resent)).toBe(written);
  });

  it("writes wait for the window: unacknowledged bytes stay under it until acks arrive; unacknowledged ones are resent", async () => {
    const { router, ch } = await setup();
    const { c, circuit, id } = await dialXg(router, ch);
    let finished = false;
    c.end(Buffer.alloc(MiB, 7), () => (finished = true));
    await settle(500); // the first timeout: 200 ms, stretched by up to half (jitter), seen on a 100 ms tick
    const sent = () => router.xgSent(circuit).filter((p) => !(p.flags & XgFlag.Retransmit));
    const first = sent();
    const bytes = first.reduce((n, p) => n + p.data.length, 0);
    // 128 KiB window (+ the payload that crossed it); nothing acknowledged, so the rest waits.
    expect(bytes).toBeGreaterThan(0);
    expect(bytes).toBeLessThanOrEqual(128 * KiB + MAX_DATA_CHUNK);
    expect(finished).toBe(false);
    // Not acknowledged in time: resent, flagged as retransmissions, same sequences.
    const retx = router.xgSent(circuit).filter((p) => p.flags & XgFlag.Retransmit);
    expect(retx.length).toBeGreaterThan(0);
    expect(retx.every((r) => first.some((f) => f.sequence === r.sequence))).toBe(true);
    // Acknowledge everything as it comes: the whole MiB and the FIN go out, and end() completes.
    const acked = new Set<number>();
    const pump = setInterval(() => {
      const seqs = sent()
        .map((p) => p.sequence)
        .filter((s) => !acked.has(s));
      seqs.forEach((s) => acked.add(s));
      if (seqs.length) router.xgAck(id, circuit, seqs, 0);
    }, 5);
    try {
      await until(() => finished, "end() completes");
      await until(() => sent().some((p) => p.edgeFlags === Flag.FIN), "the FIN payload at the router");
    } finally {
      clearInterval(pump);
    }
    const all = sent();
    expect(all.reduce((n, p) => n + p.data.length, 0)).toBe(MiB);
    expect(all[all.length - 1]!.edgeFlags).toBe(Flag.FIN);
    expect(all.map((p) => p.sequence)).toEqual(all.map((_, i) => i));
  });

  it("close: the peer's CircuitEnd ends the stream; our destroy drains, sends CircuitEnd, then XgClose", async () => {
    const { router, ch } = await setup();
    const a = await dialXg(router, ch);
    a.c.write("last words");
    const data = await until(() => router.xgSent(a.circuit).find((p) => p.data.length > 0), "data payload");
    a.c.destroy();
    expect(a.c.xgressStats?.state).toBe(XgState.Draining);
    const end = await until(() => router.xgSent(a.circuit).find((p) => p.flags & XgFlag.CircuitEnd), "circuit end");
    expect(router.received.some((m) => m.contentType === ContentType.XgClose)).toBe(false);
    router.xgAck(a.id, a.circuit, [0, data.sequence, end.sequence]);
    const close = await router.next(ContentType.XgClose);
    expect(close.body.toString()).toBe(a.circuit);
    expect(a.c.xgressStats?.state).toBe(XgState.Closed);
    expect(ch.hasConn(a.id)).toBe(false);
    // No legacy StateClosed for an SDK-flow-control connection: the router has no such connection to close.
    expect(router.sentFor(a.id, ContentType.StateClosed)).toHaveLength(0);

    const b = await dialXg(router, ch);
    const ended = new Promise((r) => b.c.once("end", r));
    b.c.resume();
    router.xgPayload(b.id, b.circuit, 0, Buffer.alloc(0), { flags: T | XgFlag.CircuitEnd });
    await ended;
    b.c.destroy();
    await until(
      () => router.received.some((m) => m.contentType === ContentType.XgClose && m.body.toString() === b.circuit),
      "XgClose for b",
    );
    expect(ch.hasConn(b.id)).toBe(false);
  });

  it("EOF (sdk-golang v1.7, OpenZiti 2.0): our dial announces no capabilities; an EOF ends the peer's direction only", async () => {
    const { router, ch } = await setup();
    const { c, circuit, id } = await dialXg(router, ch);
    const start = await until(() => router.xgSent(circuit)[0], "circuit start");
    expect(start).toMatchObject({ flags: XgFlag.CircuitStart, capabilities: undefined });
    // The far side's capability answer (an empty payload) delivers nothing; its EOF ends our readable side ...
    router.xgPayload(id, circuit, 0, Buffer.alloc(0), { flags: T, capabilities: XG_CAPABILITY_EOF });
    router.xgPayload(id, circuit, 1, Buffer.from("request"), { flags: T });
    router.xgPayload(id, circuit, 2, Buffer.alloc(0), { flags: T | XgFlag.EOF });
    const got: Buffer[] = [];
    c.on("data", (d: Buffer) => got.push(d));
    await new Promise((r) => c.once("end", r));
    expect(Buffer.concat(got).toString()).toBe("request");
    // ... and we can still answer: the circuit stays open (a CircuitEnd would have closed it).
    c.end("answer");
    const answer = await until(() => router.xgSent(circuit).find((p) => p.data.toString() === "answer"), "answer");
    expect(answer.flags & XgFlag.CircuitEnd).toBe(0);
    await until(() => router.xgSent(circuit).find((p) => p.edgeFlags & Flag.FIN), "our FIN");
    c.destroy();
  });

  it("a CircuitEnd from a peer that announced capabilities (Go xgress v1.7+) ends its direction only; from others, the circuit", async () => {
    const { router, ch } = await setup();
    const { c, circuit, id } = await dialXg(router, ch);
    router.xgPayload(id, circuit, 0, Buffer.alloc(0), { flags: T, capabilities: XG_CAPABILITY_EOF });
    router.xgPayload(id, circuit, 1, Buffer.from("request"), { flags: T });
    // Its CloseWrite before our capabilities reached it: a CircuitEnd, meaning "my direction ended".
    router.xgPayload(id, circuit, 2, Buffer.alloc(0), { flags: T | XgFlag.CircuitEnd });
    c.resume();
    await new Promise((r) => c.once("end", r));
    c.end("answer");
    await until(() => router.xgSent(circuit).find((p) => p.data.toString() === "answer"), "the answer still goes out");
    expect(c.xgressStats?.state).not.toBe(XgState.Closed);
    c.destroy();
    // (The other case, a peer without capabilities whose CircuitEnd closes the connection, is the close test above.)
  });

  it("a malformed payload or the router's StateClosed closes that connection alone", async () => {
    const { router, ch } = await setup();
    const a = await dialXg(router, ch);
    const b = await dialXg(router, ch);
    const errA = new Promise<Error>((r) => a.c.once("error", r));
    router.send(ContentType.XgPayload, new Map([[Header.ConnId, enc.u32(a.id)]]), Buffer.from("no headers"));
    expect(((await errA) as { code?: string }).code).toBe(ErrorCodes.FLOW_CONTROL);
    router.send(ContentType.StateClosed, new Map([[Header.ConnId, enc.u32(b.id)]]), Buffer.from("xgress unrouted"));
    await until(() => b.c.readableEnded || b.c.destroyed || b.c.xgressStats?.state === XgState.Closed, "b closed");
    expect(b.c.xgressStats?.state).toBe(XgState.Closed);
    expect(ch.isOpen).toBe(true);
  });

  it("accepted connections: the Bind asks; the terminator sends nothing before the initiator's CircuitStart", async () => {
    const { router, ch } = await setup();
    const h = new BindHandle(ch, { service: "svc", sessionToken: "bt", listenerId: "l", timeoutMs: 5_000 });
    const bound = h.bind();
    const bind = await router.next(ContentType.Bind);
    expect(dec.bool(bind.headers, Header.UseXgressToSdk)).toBe(true);
    router.reply(bind, ContentType.StateConnected, new Map([[Header.ConnId, bind.headers.get(Header.ConnId)!]]));
    await bound;
    const accepted = new Promise<ZitiConnection>((r) => h.once("connection", r));
    const reply = await router.dial(
      h.connId,
      0x80000001,
      "bt",
      new Map([
        [Header.UseXgressToSdk, enc.bool(true)],
        [Header.XgressCtrlId, enc.str("ctrl")],
        [Header.XgressAddress, enc.str("addr")],
      ]),
    );
    expect(reply.contentType).toBe(ContentType.DialSuccess);
    const c = await accepted;
    expect(c.flowControl).toBe("sdk");
    c.write("hello");
    await settle(100);
    expect(router.xgSent("circuit-2147483649")).toHaveLength(0);
    // A dialer announcing capabilities (as the Go SDK of OpenZiti 2.0 does) gets ours back.
    router.xgPayload(c.connId, "circuit-2147483649", 0, Buffer.alloc(0), {
      flags: XgFlag.CircuitStart,
      capabilities: XG_CAPABILITY_EOF | 0x200,
    });
    const p = await until(() => router.xgSent("circuit-2147483649")[0], "first payload after circuit start");
    // Sequence 0 of the terminator's direction, with the originator flag.
    expect(p).toMatchObject({ sequence: 0, flags: XgFlag.Originator, data: Buffer.from("hello") });
    const caps = await until(() => router.xgSent("circuit-2147483649")[1], "capabilities answer");
    expect(caps).toMatchObject({ sequence: 1, flags: XgFlag.Originator, capabilities: XG_CAPABILITY_EOF });
    expect(caps.data).toHaveLength(0);
    // And a Dial that asks for flow control without the xgress data is refused.
    const bad = await router.dial(h.connId, 0x80000002, "bt", new Map([[Header.UseXgressToSdk, enc.bool(true)]]));
    expect(bad.contentType).toBe(ContentType.DialFailed);
  });
});
