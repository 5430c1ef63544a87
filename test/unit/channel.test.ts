/**
 * The protocol engine (channel, connections, dial and bind handshakes) against a scripted fake router
 * (test/harness/fake-router.ts): what a real router will not do on demand. A channel dropped mid-dial, malformed
 * frames, reused connection ids, slow readers, floods before a connection is established, and the end-to-end
 * FINAL marker. The real overlay stays the proof of each feature (test/integration/sdk*.test.ts).
 */
import sodium from "libsodium-wrappers";
import { beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import {
  BindHandle,
  type Channel,
  type ChannelOptions,
  ContentType,
  dec,
  dialOnChannel,
  enc,
  Flag,
  generateKeyPair,
  Header,
  initCrypto,
  MAX_HELD_MESSAGES,
  type Message,
  serverSessionKeys,
  StreamDecryptor,
  type ZitiConnection,
} from "../../src/ziti/internal.js";
import { FakeRouter } from "../harness/fake-router.js";
import { scriptedRouterScope } from "../harness/scripted-scope.js";
import { readAll } from "../harness/streams.js";

const KiB = 1024;
const MiB = 1024 * 1024;

beforeAll(initCrypto);

/** Lets anything scheduled on nextTick/immediate run (an 'error' event with no listener would crash here). */
const settle = () => new Promise((r) => setTimeout(r, 30));

// Every test also proves that nothing escaped to uncaughtException (test/harness/scripted-scope.ts).
const { routers, channels } = scriptedRouterScope();

async function setup(opts: Partial<ChannelOptions> = {}): Promise<{ router: FakeRouter; ch: Channel }> {
  const router = await FakeRouter.start();
  routers.push(router);
  // No latency probes of the SDK's own unless a test asks: they would add messages the scripts do not expect.
  const ch = await router.openChannel({ latencyIntervalMs: 3_600_000, ...opts });
  channels.push(ch);
  return { router, ch };
}

/** Polls `check` every few ms (unit tests: short, generous deadline). */
async function until<T>(check: () => T | undefined | false | null, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function startDial(ch: Channel, service: string, encrypt: boolean): Promise<ZitiConnection> {
  return dialOnChannel(ch, { service, sessionToken: "dial-token", encrypt, callerId: "me", timeoutMs: 5_000 });
}

/** A plaintext dial the fake router connects. */
async function dialPlain(router: FakeRouter, ch: Channel, service = "svc"): Promise<ZitiConnection> {
  const before = router.received.length;
  const p = startDial(ch, service, false);
  router.connected(await router.next(ContentType.Connect, 5_000, before));
  return p;
}

/** The hosting side's sending stream, played by the test with libsodium directly (it may break the rules). */
interface HostTx {
  push(plain: string, tag?: "message" | "final"): Buffer;
}

/** An encrypted dial; the test plays the hosting side's crypto (`tx` to send, `rx` to read what the SDK sent). */
async function dialEncrypted(
  router: FakeRouter,
  ch: Channel,
): Promise<{ conn: ZitiConnection; tx: HostTx; rx: StreamDecryptor }> {
  const host = generateKeyPair();
  const before = router.received.length;
  const p = startDial(ch, "secret", true);
  const connect = await router.next(ContentType.Connect, 5_000, before);
  const keys = serverSessionKeys(host, connect.headers.get(Header.PublicKey)!);
  const s = sodium.crypto_secretstream_xchacha20poly1305_init_push(keys.tx);
  const tx: HostTx = {
    push: (plain, tag = "message") =>
      Buffer.from(
        sodium.crypto_secretstream_xchacha20poly1305_push(
          s.state,
          Buffer.from(plain),
          null,
          tag === "final"
            ? sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
            : sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
        ),
      ),
  };
  const connId = dec.u32(connect.headers, Header.ConnId)!;
  router.connected(connect, host.publicKey, [router.dataFrame(connId, Buffer.from(s.header))]);
  const conn = await p;
  const rx = new StreamDecryptor(keys.rx);
  rx.init((await router.next((m) => isData(m, conn.connId))).body);
  return { conn, tx, rx };
}

function isData(m: Message, connId: number): boolean {
  return m.contentType === ContentType.Data && dec.u32(m.headers, Header.ConnId) === connId;
}

function errorOf(s: ZitiConnection): Promise<ZitiError> {
  return new Promise((resolve) => s.once("error", (e) => resolve(e as ZitiError)));
}

/** Binds `service` through the fake router (no BindSuccess: bound at once). */
async function bind(router: FakeRouter, ch: Channel, keys?: ReturnType<typeof generateKeyPair>): Promise<BindHandle> {
  const h = new BindHandle(ch, {
    service: "hosted",
    sessionToken: "bind-token",
    listenerId: "l1",
    timeoutMs: 5_000,
    keys,
  });
  const bound = h.bind();
  const req = await router.next(ContentType.Bind);
  router.reply(req, ContentType.StateConnected, new Map([[Header.ConnId, req.headers.get(Header.ConnId)!]]));
  await bound;
  return h;
}

describe("a router channel that drops while a dial waits (issue 9 item 2)", () => {
  for (const encrypt of [false, true]) {
    it(`${encrypt ? "encrypted" : "plaintext"}: the dial rejects with a typed error and no 'error' event escapes`, async () => {
      const { router, ch } = await setup();
      const before = router.received.length;
      const dial = startDial(ch, "svc", encrypt);
      await router.next(ContentType.Connect, 5_000, before);
      router.drop();
      const err = await dial.then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ZitiError);
      expect((err as ZitiError).code).toBe(ErrorCodes.CHANNEL_CLOSED);
      // A half-made connection destroyed with an error and no listener would be an uncaught exception here.
      await settle();
      expect(ch.state).toBe("closed");
      expect(ch.connectionCount).toBe(0);
    });
  }

  it("a dial whose handshake fails in the held messages rejects with the typed error, not a dead connection", async () => {
    const { router, ch } = await setup();
    const host = generateKeyPair();
    const p = startDial(ch, "secret", true);
    const connect = await router.next(ContentType.Connect);
    const connId = dec.u32(connect.headers, Header.ConnId)!;
    // The host's "crypto header" is 5 bytes, in the same read as StateConnected: held, then replayed by start().
    router.connected(connect, host.publicKey, [router.dataFrame(connId, Buffer.from("short"))]);
    await expect(p).rejects.toMatchObject({ code: ErrorCodes.CRYPTO_FAILED });
    await settle();
    expect(ch.isOpen).toBe(true);
    expect(ch.hasConn(connId)).toBe(false);
  });

  it("bind side: a channel broken while a Dial is accepted leaves no orphan to emit 'error' later", async () => {
    const { router, ch } = await setup();
    const h = await bind(router, ch);
    const accepted: ZitiConnection[] = [];
    h.on("connection", (c: ZitiConnection) => accepted.push(c));
    await router.dial(h.connId, 0x80000001, "bind-token");
    const first = accepted[0]!;
    const firstErr = errorOf(first);
    // The first conn's reader breaks the SDK's socket; the Dial in the same read then fails to answer.
    first.on("data", () => router.sdkSide!.destroy());
    const dialHeaders = new Map([
      [Header.ConnId, enc.u32(h.connId)],
      [Header.RouterProvidedConnId, enc.u32(0x80000002)],
    ]);
    router.writeRaw(
      Buffer.concat([
        router.dataFrame(0x80000001, Buffer.from("x")),
        router.frame(ContentType.Dial, dialHeaders, Buffer.from("bind-token")),
      ]),
    );
    expect((await firstErr).code).toBe(ErrorCodes.CONNECTION_CLOSED);
    await settle();
    expect(accepted).toHaveLength(1);
    expect(ch.state).toBe("closed");
  });

  it("a handed-out connection nobody listens to for 'error' closes quietly when its channel drops", async () => {
    const { router, ch } = await setup();
    const h = await bind(router, ch);
    const accepted: ZitiConnection[] = [];
    h.on("connection", (c: ZitiConnection) => accepted.push(c));
    await router.dial(h.connId, 0x80000001, "bind-token");
    const conn = accepted[0]!;
    router.drop();
    await until(() => conn.destroyed, "connection closed");
    await settle();
    expect((conn.errored as ZitiError).code).toBe(ErrorCodes.CONNECTION_CLOSED);
  });
});

describe("malformed frames from the router", () => {
  const preamble = (contentType: number, hlen: number, blen: number) => {
    const b = Buffer.alloc(20);
    Buffer.from([3, 6, 9, 12]).copy(b);
    b.writeInt32LE(contentType, 4);
    b.writeInt32LE(1, 8);
    b.writeUInt32LE(hlen, 12);
    b.writeUInt32LE(blen, 16);
    return b;
  };
  const lyingHeader = Buffer.concat([
    preamble(ContentType.Data, 12, 0),
    enc.i32(Header.ConnId),
    enc.u32(100),
    Buffer.alloc(4),
  ]);
  const cases: [string, Buffer, string][] = [
    [
      "bytes that are not the channel protocol",
      Buffer.from("HTTP/1.1 400 Bad Request\r\n\r\n"),
      ErrorCodes.PROTOCOL_ERROR,
    ],
    ["a frame over the size limit", preamble(ContentType.Data, 0, 0x7fffffff), ErrorCodes.FRAME_TOO_LARGE],
    ["a header that claims more bytes than its block holds", lyingHeader, ErrorCodes.PROTOCOL_ERROR],
  ];
  for (const [what, bytes, code] of cases) {
    it(`${what}: the channel fails cleanly; a waiting dial and an open connection get typed errors`, async () => {
      const { router, ch } = await setup();
      const open = await dialPlain(router, ch);
      const openErr = errorOf(open);
      const closed = new Promise<ZitiError>((r) => ch.once("closed", r));
      const before = router.received.length;
      const waiting = startDial(ch, "svc", false);
      await router.next(ContentType.Connect, 5_000, before);
      router.writeRaw(bytes);
      await expect(waiting).rejects.toMatchObject({ code });
      expect((await closed).code).toBe(code);
      const e = await openErr;
      expect(e.code).toBe(ErrorCodes.CONNECTION_CLOSED);
      expect((e.cause as ZitiError).code).toBe(code);
      await settle();
      expect(ch.state).toBe("closed");
    });
  }

  it("a malformed multipart body closes that connection alone with PROTOCOL_ERROR", async () => {
    const { router, ch } = await setup();
    const bad = await dialPlain(router, ch);
    const good = await dialPlain(router, ch);
    const badErr = errorOf(bad);
    // A part that claims 200 bytes of a 5-byte body.
    router.data(bad.connId, Buffer.concat([enc.u16(200), Buffer.from("abc")]), Flag.MULTIPART_MSG);
    expect((await badErr).code).toBe(ErrorCodes.PROTOCOL_ERROR);
    router.data(good.connId, Buffer.from("fine"), Flag.FIN);
    expect((await readAll(good)).toString()).toBe("fine");
    expect(ch.isOpen).toBe(true);
  });
});

describe("router-chosen connection ids (issue 9 item 11)", () => {
  it("a Dial for an id already in use is answered DialFailed and the live connection keeps working", async () => {
    const { router, ch } = await setup();
    const h = await bind(router, ch);
    const accepted: ZitiConnection[] = [];
    h.on("connection", (c: ZitiConnection) => accepted.push(c));
    const first = await router.dial(h.connId, 0x80000001, "bind-token");
    expect(first.contentType).toBe(ContentType.DialSuccess);
    const again = await router.dial(h.connId, 0x80000001, "bind-token");
    expect(again.contentType).toBe(ContentType.DialFailed);
    expect(again.body.toString()).toBe("connection id in use");
    expect(dec.u32(again.headers, Header.ConnId)).toBe(h.connId);
    expect(accepted).toHaveLength(1);
    // The live connection still gets its data and still answers.
    const live = accepted[0]!;
    const got = readAll(live);
    router.data(0x80000001, Buffer.from("still here"), Flag.FIN);
    expect((await got).toString()).toBe("still here");
    live.end("and answering");
    const answer = await router.next((m) => isData(m, 0x80000001) && m.body.length > 0);
    expect(answer.body.toString()).toBe("and answering");
    // Ids of the SDK's own dial and of the bind itself are refused too.
    const own = await dialPlain(router, ch);
    expect((await router.dial(h.connId, own.connId, "bind-token")).contentType).toBe(ContentType.DialFailed);
    expect((await router.dial(h.connId, h.connId, "bind-token")).contentType).toBe(ContentType.DialFailed);
    expect(accepted).toHaveLength(1);
    expect(h.state).toBe("bound");
  });

  it("the channel refuses to register a second sink under a live id", async () => {
    const { router, ch } = await setup();
    const conn = await dialPlain(router, ch);
    const h = new BindHandle(ch, { service: "x", sessionToken: "t", listenerId: "l", timeoutMs: 1_000 });
    expect(() => ch.register(conn.connId, h)).toThrow(/already in use/);
  });
});

describe("messages held while a connection is connecting (issue 9 item 11)", () => {
  for (const [what, count, size] of [
    ["too many messages", MAX_HELD_MESSAGES + 10, 1],
    ["too many bytes", 40, 128 * KiB],
  ] as const) {
    it(`${what} before StateConnected: the dial fails with a clear error, the channel lives`, async () => {
      const { router, ch } = await setup();
      const p = startDial(ch, "svc", false);
      const connect = await router.next(ContentType.Connect);
      const connId = dec.u32(connect.headers, Header.ConnId)!;
      for (let i = 0; i < count; i++) router.data(connId, Buffer.alloc(size, 1));
      router.connected(connect);
      const err = (await p.then(
        () => undefined,
        (e: unknown) => e,
      )) as ZitiError;
      expect(err.code).toBe(ErrorCodes.PROTOCOL_ERROR);
      expect(err.message).toMatch(/before the connection was established, over the bound of \d+ messages \/ \d+ bytes/);
      await router.next(
        (m) => m.contentType === ContentType.StateClosed && dec.u32(m.headers, Header.ConnId) === connId,
      );
      expect(ch.isOpen).toBe(true);
      expect(ch.hasConn(connId)).toBe(false);
    });
  }

  it("data in the same read as StateConnected (the legitimate case) is held and delivered in order", async () => {
    const { router, ch } = await setup();
    const p = startDial(ch, "svc", false);
    const connect = await router.next(ContentType.Connect);
    const connId = dec.u32(connect.headers, Header.ConnId)!;
    router.connected(connect, undefined, [
      router.dataFrame(connId, Buffer.from("one ")),
      router.dataFrame(connId, Buffer.from("two")),
      router.dataFrame(connId, Buffer.alloc(0), Flag.FIN),
    ]);
    expect((await readAll(await p)).toString()).toBe("one two");
  });
});

describe("per-connection flow control: a slow reader never stalls its channel (issue 9 item 3)", () => {
  it("one connection never read: the others and the latency probes keep flowing; it alone fails, memory bounded", async () => {
    const { router, ch } = await setup();
    const laggard = await dialPlain(router, ch, "big-answer");
    const laggardErr = errorOf(laggard);
    let heldAtError = -1;
    laggard.once("error", () => (heldAtError = laggard.readableLength));
    const others: ZitiConnection[] = [];
    for (let i = 0; i < 5; i++) others.push(await dialPlain(router, ch, "small"));
    const chunk = Buffer.alloc(32 * KiB, 7);

    // 3 MiB: under the laggard's bound, far over its stream's high-water mark (which used to pause the socket).
    for (let i = 0; i < 96; i++) router.data(laggard.connId, chunk);
    await until(() => laggard.readableLength >= 3 * MiB, "the laggard holding 3 MiB");
    const probe = await router.request(ContentType.Latency, new Map([[Header.Reflected, enc.u64(1n)]]));
    expect(probe.contentType).toBe(ContentType.Result);
    const replies = others.map((c) => readAll(c));
    others.forEach((c, i) => router.data(c.connId, Buffer.from(`hello ${i}`), Flag.FIN));
    expect((await Promise.all(replies)).map(String)).toEqual(others.map((_, i) => `hello ${i}`));
    expect(laggard.destroyed).toBe(false);

    // 5 MiB more (8 MiB in all): over the bound. Only the laggard closes, with its own code.
    for (let i = 0; i < 160; i++) router.data(laggard.connId, chunk);
    const err = await laggardErr;
    expect(err.code).toBe(ErrorCodes.READER_TOO_SLOW);
    expect(err.message).toContain("big-answer");
    expect(err.message).toContain(`connection ${laggard.connId}`);
    expect(err.message).toContain(String(4 * MiB));
    expect(err.message).toMatch(/fell behind.*closed to keep the router channel flowing for the other connections/);
    // Memory: never more than the bound plus the one message that crossed it; the rest was dropped.
    expect(heldAtError).toBeGreaterThan(4 * MiB);
    expect(heldAtError).toBeLessThanOrEqual(4 * MiB + chunk.length);
    await router.next(
      (m) => m.contentType === ContentType.StateClosed && dec.u32(m.headers, Header.ConnId) === laggard.connId,
    );
    await settle();
    expect(ch.laggingBytes).toBe(0);
    // The channel carries on: a new connection works and probes are answered.
    expect(ch.isOpen).toBe(true);
    const late = await dialPlain(router, ch, "small");
    router.data(late.connId, Buffer.from("after"), Flag.FIN);
    expect((await readAll(late)).toString()).toBe("after");
    expect((await router.request(ContentType.Latency)).contentType).toBe(ContentType.Result);
  });

  it("over the channel's cap the largest laggard is closed first; the others keep every byte", async () => {
    const { router, ch } = await setup({ maxConnBufferedBytes: 4 * MiB, maxChannelBufferedBytes: 6 * MiB });
    const [a, b, c] = [
      await dialPlain(router, ch, "a"),
      await dialPlain(router, ch, "b"),
      await dialPlain(router, ch, "c"),
    ];
    const bErr = errorOf(b);
    const chunk = Buffer.alloc(64 * KiB, 1);
    const send = (conn: ZitiConnection, bytes: number) => {
      for (let i = 0; i < bytes / chunk.length; i++) router.data(conn.connId, chunk);
    };
    send(a, 1 * MiB);
    send(b, 3 * MiB);
    await until(() => b.readableLength === 3 * MiB, "b holding 3 MiB");
    send(c, 2.5 * MiB);
    router.data(a.connId, Buffer.alloc(0), Flag.FIN);
    router.data(c.connId, Buffer.alloc(0), Flag.FIN);
    const e = await bErr;
    expect(e.code).toBe(ErrorCodes.READER_TOO_SLOW);
    expect(e.message).toMatch(
      /held \d+ unread bytes together, over the channel's cap of 6291456; this one held the most/,
    );
    expect((await readAll(a)).length).toBe(1 * MiB);
    expect((await readAll(c)).length).toBe(2.5 * MiB);
    expect(ch.isOpen).toBe(true);
  });

  it("bind side: a dialer that sends and never reads is closed alone; other accepted connections flow", async () => {
    const { router, ch } = await setup();
    const h = await bind(router, ch);
    const accepted: ZitiConnection[] = [];
    h.on("connection", (c: ZitiConnection) => accepted.push(c));
    await router.dial(h.connId, 0x80000001, "bind-token");
    await router.dial(h.connId, 0x80000002, "bind-token");
    const [stuck, fine] = accepted as [ZitiConnection, ZitiConnection];
    const stuckErr = errorOf(stuck);
    const chunk = Buffer.alloc(32 * KiB, 2);
    for (let i = 0; i < 256; i++) router.data(stuck.connId, chunk);
    expect((await stuckErr).code).toBe(ErrorCodes.READER_TOO_SLOW);
    router.data(fine.connId, Buffer.from("ok"), Flag.FIN);
    expect((await readAll(fine)).toString()).toBe("ok");
    expect(h.state).toBe("bound");
  });

  it("a reader that pauses under its bound loses nothing", async () => {
    const { router, ch } = await setup();
    const conn = await dialPlain(router, ch);
    const sent: Buffer[] = [];
    for (let i = 0; i < 96; i++) {
      const b = Buffer.alloc(32 * KiB, i);
      sent.push(b);
      router.data(conn.connId, b);
    }
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    await until(() => conn.readableLength === 3 * MiB, "3 MiB buffered while paused");
    expect((await readAll(conn)).equals(Buffer.concat(sent))).toBe(true);
  });

  it("a connection's own bound can be raised", async () => {
    const { router, ch } = await setup({ maxConnBufferedBytes: 1 * MiB });
    const conn = await dialPlain(router, ch);
    expect(conn.maxBufferedBytes).toBe(1 * MiB);
    conn.maxBufferedBytes = 3 * MiB;
    for (let i = 0; i < 64; i++) router.data(conn.connId, Buffer.alloc(32 * KiB, 3));
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    expect((await readAll(conn)).length).toBe(2 * MiB);
  });
});

describe("secretstream FINAL on half-close (issue 9 item 12)", () => {
  it("end() on an encrypted connection sends a FINAL-tagged message with no plaintext, then FIN", async () => {
    const { router, ch } = await setup();
    const { conn, rx } = await dialEncrypted(router, ch);
    const from = router.received.length;
    conn.end("bye");
    await router.next((m) => isData(m, conn.connId) && ((dec.u32(m.headers, Header.Flags) ?? 0) & Flag.FIN) !== 0);
    const sent = router.received.slice(from).filter((m) => isData(m, conn.connId));
    expect(sent).toHaveLength(3);
    expect(rx.decrypt(sent[0]!.body).toString()).toBe("bye");
    expect(rx.final).toBe(false);
    expect(rx.decrypt(sent[1]!.body)).toHaveLength(0);
    expect(rx.final).toBe(true);
    expect(sent[2]!.body).toHaveLength(0);
    expect(dec.u32(sent[2]!.headers, Header.Flags)).toBe(Flag.FIN);
  });

  it("a plaintext connection half-closes with FIN alone", async () => {
    const { router, ch } = await setup();
    const conn = await dialPlain(router, ch);
    const from = router.received.length;
    conn.end();
    await router.next((m) => isData(m, conn.connId), 5_000, from);
    const sent = router.received.slice(from).filter((m) => isData(m, conn.connId));
    expect(sent.map((m) => [m.body.length, dec.u32(m.headers, Header.Flags)])).toEqual([[0, Flag.FIN]]);
  });

  it("expectFinal: FIN without FINAL is a truncated stream (ZITI_STREAM_TRUNCATED)", async () => {
    const { router, ch } = await setup();
    const { conn, tx } = await dialEncrypted(router, ch);
    conn.expectFinal = true;
    const err = errorOf(conn);
    conn.resume();
    router.data(conn.connId, tx.push("partial answ"));
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    const e = await err;
    expect(e.code).toBe(ErrorCodes.STREAM_TRUNCATED);
    expect(e.message).toMatch(/secret connection \d+: the peer's stream ended \(FIN\) without its end-to-end FINAL/);
  });

  it("expectFinal: FINAL then FIN ends the stream cleanly with every byte", async () => {
    const { router, ch } = await setup();
    const { conn, tx } = await dialEncrypted(router, ch);
    conn.expectFinal = true;
    const got = readAll(conn);
    router.data(conn.connId, tx.push("complete answer"));
    router.data(conn.connId, tx.push("", "final"));
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    expect((await got).toString()).toBe("complete answer");
    expect(conn.finalReceived).toBe(true);
  });

  it("by default (Go peers never send FINAL) FIN alone ends the stream cleanly", async () => {
    const { router, ch } = await setup();
    const { conn, tx } = await dialEncrypted(router, ch);
    const got = readAll(conn);
    router.data(conn.connId, tx.push("from go"));
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    expect((await got).toString()).toBe("from go");
    expect(conn.finalReceived).toBe(false);
  });

  it("data after the peer's FINAL is refused (the stream had ended)", async () => {
    const { router, ch } = await setup();
    const { conn, tx } = await dialEncrypted(router, ch);
    const err = errorOf(conn);
    conn.resume();
    // libsodium lets a sender push after FINAL; a receiver must not accept it as part of the stream.
    router.data(conn.connId, tx.push("", "final"));
    router.data(conn.connId, tx.push("smuggled"));
    const e = await err;
    expect(e.code).toBe(ErrorCodes.CRYPTO_FAILED);
    expect(e.message).toMatch(/data after the peer's FINAL message/);
  });
});
