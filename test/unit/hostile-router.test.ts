/**
 * What one hostile router can do to the SDK, against the scripted fake router (test/harness/fake-router.ts): what a
 * real router will not do on demand.
 *
 * - Issue 18 item 6: a frame whose headers would decode to far more than its wire size (524,288 empty headers in
 *   4 MiB, or one header over the count cap) ends that router's channel with ZITI_FRAME_TOO_LARGE, and nothing
 *   else: another router's channel and its connections keep flowing, and nothing reaches the process handlers.
 * - Issue 18 item 7: the MULTIPART_MSG edge flag travels outside the end-to-end encryption. We never advertise the
 *   MULTIPART capability, so a flag that arrives was forged: the connection fails with ZITI_PROTOCOL_ERROR, and the
 *   reader never sees a stream that ended cleanly with bytes missing (the old split dropped them silently).
 */
import sodium from "libsodium-wrappers";
import { beforeAll, describe, expect, it } from "vitest";
import { ErrorCodes, ZitiError } from "../../src/ziti/errors.js";
import {
  type Channel,
  ContentType,
  dec,
  dialOnChannel,
  Flag,
  generateKeyPair,
  Header,
  initCrypto,
  MAGIC,
  type Message,
  PREAMBLE_BYTES,
  serverSessionKeys,
  StreamDecryptor,
  XgFlag,
  type ZitiConnection,
} from "../../src/ziti/internal.js";
import { FakeRouter } from "../harness/fake-router.js";
import { scriptedRouterScope } from "../harness/scripted-scope.js";

beforeAll(initCrypto);

// Every test also proves that nothing escaped to uncaughtException (test/harness/scripted-scope.ts).
const { routers, channels } = scriptedRouterScope();

async function setup(sdkFlowControl = false): Promise<{ router: FakeRouter; ch: Channel }> {
  const router = await FakeRouter.start();
  routers.push(router);
  const ch = await router.openChannel({ latencyIntervalMs: 3_600_000, sdkFlowControl });
  channels.push(ch);
  return { router, ch };
}

/** Rejects with `what` if `p` has not settled within `ms` (so a test of old behaviour fails fast, not by timeout). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms)),
  ]);
}

function startDial(ch: Channel, encrypt: boolean): Promise<ZitiConnection> {
  return dialOnChannel(ch, { service: "svc", sessionToken: "dial-token", encrypt, callerId: "me", timeoutMs: 5_000 });
}

async function dialPlain(router: FakeRouter, ch: Channel): Promise<ZitiConnection> {
  const before = router.received.length;
  const p = startDial(ch, false);
  router.connected(await router.next(ContentType.Connect, 5_000, before));
  return p;
}

/** The hosting side's sending stream, played by the test with libsodium directly. */
type HostTx = (plain: Buffer) => Buffer;

function hostStream(keys: { tx: Uint8Array }): { header: Buffer; tx: HostTx } {
  const s = sodium.crypto_secretstream_xchacha20poly1305_init_push(keys.tx);
  return {
    header: Buffer.from(s.header),
    tx: (plain) =>
      Buffer.from(
        sodium.crypto_secretstream_xchacha20poly1305_push(
          s.state,
          plain,
          null,
          sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE,
        ),
      ),
  };
}

/** Starts an encrypted dial and takes its Connect as the hosting side: the host's keys and sending stream, unanswered. */
async function encryptedConnect(router: FakeRouter, ch: Channel) {
  const host = generateKeyPair();
  const before = router.received.length;
  const dialing = startDial(ch, true);
  const connect = await router.next(ContentType.Connect, 5_000, before);
  const keys = serverSessionKeys(host, connect.headers.get(Header.PublicKey)!);
  return { host, dialing, connect, keys, ...hostStream(keys) };
}

/** An end-to-end encrypted dial over legacy Data messages; the test plays the hosting side. */
async function dialEncrypted(router: FakeRouter, ch: Channel): Promise<{ conn: ZitiConnection; tx: HostTx }> {
  const { host, dialing, connect, keys, header, tx } = await encryptedConnect(router, ch);
  router.connected(connect, host.publicKey, [router.dataFrame(dec.u32(connect.headers, Header.ConnId)!, header)]);
  const conn = await dialing;
  // Our own stream header reached the host: the stream is set up both ways.
  new StreamDecryptor(keys.rx).init((await router.next((m) => isData(m, conn.connId))).body);
  return { conn, tx };
}

/** The same over SDK flow control (xgress payloads): the host's stream header is payload 0. */
async function dialEncryptedXg(
  router: FakeRouter,
  ch: Channel,
): Promise<{ conn: ZitiConnection; tx: HostTx; circuit: string }> {
  const { host, dialing, connect, header, tx } = await encryptedConnect(router, ch);
  const circuit = router.connectedXg(connect, host.publicKey);
  const conn = await dialing;
  expect(conn.flowControl).toBe("sdk");
  router.xgPayload(conn.connId, circuit, 0, header, { flags: XgFlag.Originator });
  return { conn, tx, circuit };
}

function isData(m: Message, connId: number): boolean {
  return m.contentType === ContentType.Data && dec.u32(m.headers, Header.ConnId) === connId;
}

/** What the reader got, and how the stream ended: "end" (cleanly, all delivered) or the error. */
function outcome(s: ZitiConnection): Promise<{ data: string; end: "end" | ZitiError }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("end", () => resolve({ data: Buffer.concat(chunks).toString("latin1"), end: "end" }));
    s.on("error", (e) => resolve({ data: Buffer.concat(chunks).toString("latin1"), end: e as ZitiError }));
  });
}

describe("one hostile router frame ends only that router's channel (issue 18 item 6)", () => {
  /** A frame of `n` empty headers (distinct ids), content type Data: 8 bytes of wire per header. */
  function manyHeaders(n: number): Buffer {
    const pre = Buffer.alloc(PREAMBLE_BYTES);
    MAGIC.copy(pre);
    pre.writeInt32LE(ContentType.Data, 4);
    pre.writeInt32LE(1, 8);
    pre.writeUInt32LE(n * 8, 12);
    const block = Buffer.alloc(n * 8);
    for (let i = 0; i < n; i++) block.writeInt32LE(i, i * 8);
    return Buffer.concat([pre, block]);
  }

  const cases: [string, Buffer][] = [
    ["524,288 empty headers in 4 MiB (the issue's frame)", manyHeaders(524_288)],
    ["257 headers in 2 KiB, one over the count cap", manyHeaders(257)],
  ];
  for (const [what, frame] of cases) {
    it(`${what}: that channel fails with ZITI_FRAME_TOO_LARGE; the other router's channel and connection flow on`, async () => {
      const a = await setup();
      const b = await setup();
      const connA = await dialPlain(a.router, a.ch);
      const connB = await dialPlain(b.router, b.ch);
      const endA = outcome(connA);
      const closedA = new Promise<ZitiError>((r) => a.ch.once("closed", r));
      let bClosed = false;
      b.ch.once("closed", () => (bClosed = true));

      a.router.writeRaw(frame);
      const err = await within(closedA, 3_000, "router A's channel was not closed");
      expect(err.code).toBe(ErrorCodes.FRAME_TOO_LARGE);
      const e = (await endA).end as ZitiError;
      expect(e.code).toBe(ErrorCodes.CONNECTION_CLOSED);
      expect((e.cause as ZitiError).code).toBe(ErrorCodes.FRAME_TOO_LARGE);

      // Router B, its channel and its connection never noticed.
      const endB = outcome(connB);
      connB.write("ping");
      const sent = await b.router.next((m) => isData(m, connB.connId) && m.body.length > 0);
      expect(sent.body.toString()).toBe("ping");
      b.router.data(connB.connId, Buffer.from("pong"), Flag.FIN);
      expect(await endB).toEqual({ data: "pong", end: "end" });
      expect(b.ch.isOpen).toBe(true);
      expect(bClosed).toBe(false);
      // And router A's channel can be opened again (the SDK did not give up on the router, only that channel).
      const again = await a.router.openChannel({ latencyIntervalMs: 3_600_000 });
      channels.push(again);
      expect(again.isOpen).toBe(true);
    });
  }
});

describe("a forged MULTIPART_MSG flag fails the connection loudly (issue 18 item 7)", () => {
  // Plaintext a router cannot read, but whose first bytes happen to parse as a part length: the old split took
  // "\x05\x00" as a length, delivered "hello" and dropped the lone "!" after it, and the stream then ended cleanly.
  const parsable = Buffer.from("\x05\x00hello!", "latin1");

  it("encrypted, legacy Data: the connection fails with ZITI_PROTOCOL_ERROR, never a clean end with bytes lost", async () => {
    const { router, ch } = await setup();
    const { conn, tx } = await dialEncrypted(router, ch);
    const end = outcome(conn);
    // We never advertise MULTIPART (nor STREAM): no honest peer (the C SDK) sends us MULTIPART_MSG.
    conn.write("a request of some length");
    await router.next((m) => isData(m, conn.connId) && m.body.length > 24);
    for (const m of router.sentFor(conn.connId, ContentType.Data)) {
      expect((dec.u32(m.headers, Header.Flags) ?? 0) & (Flag.MULTIPART | Flag.STREAM)).toBe(0);
    }

    router.data(conn.connId, tx(Buffer.from("first ")));
    router.data(conn.connId, tx(parsable), Flag.MULTIPART_MSG);
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    const got = await within(end, 3_000, "the connection neither ended nor failed");
    expect(got.end).not.toBe("end");
    const e = got.end as ZitiError;
    expect(e.code).toBe(ErrorCodes.PROTOCOL_ERROR);
    expect(e.message).toMatch(/MULTIPART_MSG/);
    // What the reader got is an exact prefix of what the host sent, never a re-split of it.
    expect("first " + parsable.toString("latin1")).toContain(got.data);
    expect(got.data.startsWith("first ") || got.data === "").toBe(true);
    expect(ch.isOpen).toBe(true);
  });

  it("encrypted, SDK flow control: the same when the flag rides as the payload's edge flags", async () => {
    const { router, ch } = await setup(true);
    const { conn, tx, circuit } = await dialEncryptedXg(router, ch);
    const end = outcome(conn);
    const T = XgFlag.Originator;
    router.xgPayload(conn.connId, circuit, 1, tx(Buffer.from("first ")), { flags: T });
    router.xgPayload(conn.connId, circuit, 2, tx(parsable), { flags: T, edgeFlags: Flag.MULTIPART_MSG | Flag.FIN });
    const got = await within(end, 3_000, "the connection neither ended nor failed");
    expect(got.end).not.toBe("end");
    expect((got.end as ZitiError).code).toBe(ErrorCodes.PROTOCOL_ERROR);
    expect(got.data === "" || got.data === "first ").toBe(true);
    expect(ch.isOpen).toBe(true);
  });

  it("plaintext: refused too (only a forger or a broken peer sends it), and only that connection closes", async () => {
    const { router, ch } = await setup();
    const bad = await dialPlain(router, ch);
    const good = await dialPlain(router, ch);
    const endBad = outcome(bad);
    const endGood = outcome(good);
    router.data(bad.connId, parsable, Flag.MULTIPART_MSG | Flag.FIN);
    const got = await within(endBad, 3_000, "the connection neither ended nor failed");
    expect(got.end).not.toBe("end");
    expect((got.end as ZitiError).code).toBe(ErrorCodes.PROTOCOL_ERROR);
    expect(got.data).toBe("");
    router.data(good.connId, Buffer.from("fine"), Flag.FIN);
    expect(await endGood).toEqual({ data: "fine", end: "end" });
    expect(ch.isOpen).toBe(true);
  });
});
