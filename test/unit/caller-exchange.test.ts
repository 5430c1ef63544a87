/**
 * The caller-proof exchange on real connections (issue 18 items 3 and 8), against the scripted router
 * (test/harness/fake-router.ts): it plays the dialer (or the host) byte by byte, records what a dialer sent and
 * replays it, which a real router will not do on demand. The host side runs the real accept path: a ZitiListener
 * whose host is a real ZitiContext's prepareCaller/verifyCaller. The real overlay is test/integration/caller.test.ts.
 */
import { once } from "node:events";
import { randomBytes, sign } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  CallerProver,
  contextInternals,
  type Channel,
  clientSessionKeys,
  ContentType,
  dec,
  dialOnChannel,
  enc,
  Flag,
  generateKeyPair,
  Header,
  type Headers,
  HOST_HELLO,
  type Identity,
  identityKeyPin,
  initCrypto,
  type KeyPair,
  type ListenerHost,
  makeCallerProof,
  MAX_PENDING_PROOFS,
  type Message,
  proofMarker,
  proveToHost,
  serverSessionKeys,
  StreamDecryptor,
  StreamEncryptor,
  verifyCallerProof,
  XgFlag,
  type ZitiConnection,
  ZitiContext,
  ZitiListener,
} from "../../src/ziti/internal.js";
import { ErrorCodes } from "../../src/ziti/errors.js";
import { FakeRouter } from "../harness/fake-router.js";
import { issueLeaf, makePki } from "../harness/pki.js";
import { removeDir, tempDir } from "../harness/process.js";

const TOKEN = "bind-session-token";
const REQUEST = Buffer.from("GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n");
let dir: string;
let ctx: ZitiContext;
let central: { certPem: string; keyPem: string };
let other: { certPem: string; keyPem: string };
let rogue: { certPem: string; keyPem: string };
const routers: FakeRouter[] = [];
const closers: (() => unknown)[] = [];

beforeAll(async () => {
  await initCrypto();
  dir = tempDir("caller-exchange");
  const pki = makePki(join(dir, "pki"));
  const read = (f: string) => readFileSync(f, "utf8");
  const leaf = (name: string, ca: "ca" | "rogue-ca") => {
    const f = issueLeaf(join(dir, "pki"), name, ca, { cn: "prometheus-central" });
    return { certPem: read(f.crt), keyPem: read(f.key) };
  };
  central = leaf("central", "ca");
  other = leaf("other", "ca");
  rogue = leaf("rogue-central", "rogue-ca");
  const identity: Identity = {
    ztAPI: "https://127.0.0.1:1/edge/client/v1", // never reached: these tests need no controller
    certPem: read(pki["server.crt"]!),
    keyPem: read(pki["server.key"]!),
    caPem: read(pki["ca.crt"]!),
    name: "bind-host",
    raw: {},
  };
  ctx = await ZitiContext.open(identity, { waitForController: false });
}, 60_000);

afterAll(() => {
  ctx.destroy();
  removeDir(dir);
});

afterEach(async () => {
  for (const c of closers.splice(0)) await c();
  for (const r of routers.splice(0)) await r.close();
});

/** A listener on the fake router through the real accept path: the context decides who is calling. */
async function bound(
  encrypt: boolean,
): Promise<{ router: FakeRouter; listener: ZitiListener; bindId: number; hostKx?: Buffer }> {
  const router = await FakeRouter.start();
  routers.push(router);
  const host: ListenerHost = {
    identityName: "bind-host",
    bindTimeoutMs: 5_000,
    bindSession: () => Promise.resolve({ token: TOKEN, encrypt, routerUrls: [`tls://fake-router:${router.port}`] }),
    dropSession: () => undefined,
    channel: () => router.openChannel({ latencyIntervalMs: 3_600_000 }),
    prepareCaller: (c) => contextInternals(ctx).listenerHost.prepareCaller!(c),
    verifyCaller: (c) => contextInternals(ctx).listenerHost.verifyCaller!(c),
  };
  const listener = new ZitiListener(host, "node");
  closers.push(() => listener.close());
  const started = listener.start();
  const bind = await router.next(ContentType.Bind);
  router.reply(bind, ContentType.StateConnected, new Map([[Header.ConnId, bind.headers.get(Header.ConnId)!]]));
  await started;
  const hostKx = bind.headers.get(Header.PublicKey);
  return { router, listener, bindId: dec.u32(bind.headers, Header.ConnId)!, ...(hostKx ? { hostKx } : {}) };
}

interface DialIn {
  connId: number;
  kx?: Buffer | undefined;
  appData?: Buffer | undefined;
  xg?: boolean;
}

/** The router's Dial to the bound host; resolves with the host's answer. */
async function dialIn(b: { router: FakeRouter; bindId: number }, d: DialIn): Promise<Message> {
  const extra: Headers = new Map();
  if (d.kx) extra.set(Header.PublicKey, d.kx);
  if (d.appData) extra.set(Header.AppData, d.appData);
  if (d.xg) {
    extra.set(Header.UseXgressToSdk, enc.bool(true));
    extra.set(Header.XgressCtrlId, enc.str("ctrl"));
    extra.set(Header.XgressAddress, enc.str("addr"));
  }
  const answer = await b.router.dial(b.bindId, d.connId, TOKEN, extra);
  expect(answer.contentType).toBe(ContentType.DialSuccess);
  return answer;
}

/** The host's first Data body on a legacy connection. */
function hostFirstData(router: FakeRouter, connId: number): Promise<Buffer> {
  return router
    .next((m) => m.contentType === ContentType.Data && dec.u32(m.headers, Header.ConnId) === connId)
    .then((m) => m.body);
}

/** Everything the accepted connection lets its reader see, up to its end. */
async function readAll(c: ZitiConnection): Promise<Buffer> {
  const got: Buffer[] = [];
  c.on("data", (d: Buffer) => got.push(d));
  await once(c, "end");
  return Buffer.concat(got);
}

/** A scripted scrapez dialer: its key pair, and its stream once the host's key is known. */
class Dialer {
  readonly keys: KeyPair = generateKeyPair();
  enc!: StreamEncryptor;
  dec!: StreamDecryptor;
  get kx(): Buffer {
    return Buffer.from(this.keys.publicKey);
  }
  connect(hostKx: Uint8Array): this {
    const k = clientSessionKeys(this.keys, hostKx);
    this.enc = new StreamEncryptor(k.tx);
    this.dec = new StreamDecryptor(k.rx);
    return this;
  }
}

/** A v1 proof as the old dialers put it in AppData: bound to the dialer's kx key only. */
function v1AppData(id: { certPem: string; keyPem: string }, service: string, kx: Buffer): Buffer {
  const msg = Buffer.concat([Buffer.from("scrapez caller proof v1\0"), Buffer.from(service), Buffer.from([0]), kx]);
  const der = Buffer.from(id.certPem.replace(/-----[^-]+-----|\s/g, ""), "base64");
  const sig = sign("sha256", msg, id.keyPem);
  return Buffer.from(JSON.stringify({ scrapez: { v: 1, cert: der.toString("base64"), sig: sig.toString("base64") } }));
}

/**
 * One v2 dial by `id` to the bound host, on a legacy connection: announce, read the host's header and hello,
 * prove, send the request. Returns the accepted connection and what the dialer sent (to replay it).
 */
async function provenDial(
  b: Awaited<ReturnType<typeof bound>>,
  connId: number,
  id: { certPem: string; keyPem: string },
  tweak: { service?: string; tamper?: boolean } = {},
): Promise<{ conn: ZitiConnection; sent: Buffer[]; dialer: Dialer; hostHeader: Buffer }> {
  const dialer = new Dialer().connect(b.hostKx!);
  // This dial's connection: others still waiting for their proof (the MAX_PENDING_PROOFS test) are handed on
  // unverified when their wait ends, which a loaded machine reaches before this dial is admitted.
  const accepted = new Promise<[ZitiConnection]>((resolve) => {
    const on = (c: { connId: number }) => {
      if (c.connId !== connId) return;
      b.listener.off("connection", on);
      resolve([c as unknown as ZitiConnection]);
    };
    b.listener.on("connection", on);
  });
  await dialIn(b, { connId, kx: dialer.kx, appData: proofMarker() });
  const first = await hostFirstData(b.router, connId);
  // A scrapez host: its header and, in the same Data, the encrypted hello.
  expect(first.length).toBeGreaterThan(24);
  const hostHeader = first.subarray(0, 24);
  dialer.dec.init(hostHeader);
  expect(dialer.dec.decrypt(first.subarray(24))).toEqual(HOST_HELLO);
  let proof = makeCallerProof(id, {
    service: tweak.service ?? "node",
    dialerKx: dialer.kx,
    hostKx: b.hostKx!,
    hostHeader,
    dialerHeader: dialer.enc.header,
  });
  if (tweak.tamper) {
    const j = JSON.parse(proof.toString()) as { sig: string };
    const sig = Buffer.from(j.sig, "base64");
    sig[sig.length - 3]! ^= 0x01;
    j.sig = sig.toString("base64");
    proof = Buffer.from(JSON.stringify(j));
  }
  const sent = [dialer.enc.header, dialer.enc.encrypt(proof), dialer.enc.encrypt(REQUEST), dialer.enc.final()];
  for (const body of sent) b.router.data(connId, body);
  b.router.data(connId, Buffer.alloc(0), Flag.FIN);
  const [conn] = await accepted;
  return { conn, sent, dialer, hostHeader };
}

describe("caller proof v2 through the accept path (scripted router)", () => {
  it("admits a proof bound to this connection: the pin is set before 'connection', the proof never reaches the reader", async () => {
    const b = await bound(true);
    const { conn } = await provenDial(b, 501, central);
    expect(conn.callerKey).toBe(identityKeyPin(central.certPem));
    expect(conn.callerVerifiedBy).toBe("proof");
    expect(conn.callerProofError).toBeUndefined();
    expect(conn.expectFinal).toBe(true);
    expect((await readAll(conn)).toString()).toBe(REQUEST.toString());
  });

  it.each([
    ["a tampered signature", "central", { tamper: true }, /signature does not match this connection/],
    [
      "a proof made for another service",
      central,
      { service: "other" },
      /signature does not match this connection \(service "node"/,
    ],
    ["a certificate from another CA", "rogue", {}, /was not issued by this overlay's CA/],
  ] as const)("refuses %s: unverified with a reason, no pin", async (_n, id, tweak, re) => {
    const b = await bound(true);
    const { conn } = await provenDial(b, 502, id === "rogue" ? rogue : central, tweak);
    expect(conn.callerKey).toBeUndefined();
    expect(conn.callerVerifiedBy).toBeUndefined();
    expect(conn.callerProofError).toMatch(re);
    expect(conn.expectFinal).toBe(false);
    expect((await readAll(conn)).toString()).toBe(REQUEST.toString());
  });

  it("reports the pin of the key that signed, whichever name it claims (another identity's key, another pin)", async () => {
    const b = await bound(true);
    const { conn } = await provenDial(b, 503, other);
    expect(conn.callerKey).toBe(identityKeyPin(other.certPem));
    expect(conn.callerKey).not.toBe(identityKeyPin(central.certPem));
  });

  it("a dialer that announced a proof and ended its stream without one is unverified at once", async () => {
    const b = await bound(true);
    const dialer = new Dialer().connect(b.hostKx!);
    const accepted = once(b.listener, "connection") as Promise<[ZitiConnection]>;
    await dialIn(b, { connId: 504, kx: dialer.kx, appData: proofMarker() });
    b.router.data(504, dialer.enc.header);
    b.router.data(504, Buffer.alloc(0), Flag.FIN);
    const [conn] = await accepted;
    expect(conn.callerKey).toBeUndefined();
    expect(conn.callerProofError).toMatch(/no caller proof \(the dialer's first message was not one\)/);
  });

  it("with SDK flow control too: the hello rides in the header's payload and the first payload is the proof", async () => {
    const b = await bound(true);
    const dialer = new Dialer().connect(b.hostKx!);
    const accepted = once(b.listener, "connection") as Promise<[ZitiConnection]>;
    await dialIn(b, { connId: 505, kx: dialer.kx, appData: proofMarker(), xg: true });
    const circuit = "circuit-505";
    b.router.xgPayload(505, circuit, 0, Buffer.alloc(0), { flags: XgFlag.CircuitStart });
    const first = await b.router.next(
      (m) => m.contentType === ContentType.XgPayload && b.router.xgSent(circuit).some((p) => p.data.length > 24),
    );
    expect(first).toBeDefined();
    const body = b.router.xgSent(circuit).find((p) => p.data.length > 24)!.data;
    const hostHeader = body.subarray(0, 24);
    dialer.dec.init(hostHeader);
    expect(dialer.dec.decrypt(body.subarray(24))).toEqual(HOST_HELLO);
    const proof = makeCallerProof(central, {
      service: "node",
      dialerKx: dialer.kx,
      hostKx: b.hostKx!,
      hostHeader,
      dialerHeader: dialer.enc.header,
    });
    const bodies = [dialer.enc.header, dialer.enc.encrypt(proof), dialer.enc.encrypt(REQUEST)];
    bodies.forEach((d, i) => b.router.xgPayload(505, circuit, i + 1, d));
    const [conn] = await accepted;
    expect(conn.flowControl).toBe("sdk");
    expect(conn.callerKey).toBe(identityKeyPin(central.certPem));
    const got: Buffer[] = [];
    conn.on("data", (d: Buffer) => got.push(d));
    await new Promise((r) => setTimeout(r, 50));
    expect(Buffer.concat(got).toString()).toBe(REQUEST.toString());
    conn.destroy();
  });
});

describe("connections waiting for their caller proof (scripted router)", () => {
  it(`at most ${MAX_PENDING_PROOFS} wait: one more closes the one waiting longest, and a dialer that proves itself is still admitted`, async () => {
    const b = await bound(true);
    const closedByHost = (connId: number) => b.router.sentFor(connId, ContentType.StateClosed).length > 0;
    // Announce a proof and never send it, MAX_PENDING_PROOFS times: all of them wait (nothing is closed).
    const first = 700;
    for (let i = 0; i < MAX_PENDING_PROOFS; i++) {
      const d = new Dialer().connect(b.hostKx!);
      await dialIn(b, { connId: first + i, kx: d.kx, appData: proofMarker() });
      b.router.data(first + i, d.enc.header);
    }
    await new Promise((r) => setTimeout(r, 50));
    expect([...Array(MAX_PENDING_PROOFS).keys()].filter((i) => closedByHost(first + i))).toEqual([]);
    // One more that proves itself: the oldest waiting connection is closed, the newcomer is admitted by its proof.
    const { conn } = await provenDial(b, first + MAX_PENDING_PROOFS, central);
    expect(conn.callerVerifiedBy).toBe("proof");
    await b.router.next(
      (m) => m.contentType === ContentType.StateClosed && dec.u32(m.headers, Header.ConnId) === first,
    );
    expect([...Array(MAX_PENDING_PROOFS).keys()].filter((i) => closedByHost(first + i))).toEqual([0]);
  });
});

describe("proofs on unencrypted connections, and replays (scripted router)", () => {
  it("never admits a proof on a connection without end-to-end encryption (a captured v1 proof and its key header, or a v2 marker)", async () => {
    const b = await bound(false);
    expect(b.hostKx).toBeUndefined();
    // A captured v1 proof replayed in plaintext with the key header it names.
    const kx = randomBytes(32);
    let accepted = once(b.listener, "connection") as Promise<[ZitiConnection]>;
    await dialIn(b, { connId: 601, kx, appData: v1AppData(central, "node", kx) });
    b.router.data(601, REQUEST);
    let [conn] = await accepted;
    expect(conn.callerKey).toBeUndefined();
    expect(conn.callerVerifiedBy).toBeUndefined();
    expect(conn.callerProofError).toMatch(/caller proof v1 is no longer accepted/);
    // A v2 marker: the host sends no hello (nothing is encrypted) and takes no first message as a proof.
    accepted = once(b.listener, "connection") as Promise<[ZitiConnection]>;
    await dialIn(b, { connId: 602, kx, appData: proofMarker() });
    const proof = makeCallerProof(central, {
      service: "node",
      dialerKx: kx,
      hostKx: randomBytes(32),
      hostHeader: randomBytes(24),
      dialerHeader: randomBytes(24),
    });
    b.router.data(602, proof);
    b.router.data(602, Buffer.alloc(0), Flag.FIN);
    [conn] = await accepted;
    expect(conn.callerKey).toBeUndefined();
    expect(conn.callerProofError).toMatch(/not end-to-end encrypted, so a caller proof cannot be bound to it/);
    expect(await readAll(conn)).toEqual(proof);
    expect(b.router.sentFor(602, ContentType.Data)).toHaveLength(0);
  });

  it("a recorded v2 dial replayed byte for byte is not admitted: the host's new stream header is not what was signed", async () => {
    const b = await bound(true);
    const original = await provenDial(b, 701, central);
    expect(original.conn.callerKey).toBe(identityKeyPin(central.certPem));
    // The router replays the Dial (same kx key, same AppData) and every Data the dialer sent.
    const accepted = once(b.listener, "connection") as Promise<[ZitiConnection]>;
    await dialIn(b, { connId: 702, kx: original.dialer.kx, appData: proofMarker() });
    const first = await hostFirstData(b.router, 702);
    expect(first.subarray(0, 24).equals(original.hostHeader)).toBe(false);
    for (const body of original.sent) b.router.data(702, body);
    b.router.data(702, Buffer.alloc(0), Flag.FIN);
    const [conn] = await accepted;
    expect(conn.callerKey).toBeUndefined();
    expect(conn.callerVerifiedBy).toBeUndefined();
    expect(conn.callerProofError).toMatch(/signature does not match this connection/);
    // What does hold (docs/crypto.md): the host's key pair is per listener, so the replayed request still decrypts;
    // it is served, if at all, as an unverified caller's.
    expect((await readAll(conn)).toString()).toBe(REQUEST.toString());
  });

  it("a recorded v1 dial (its proof in AppData) replayed with its ciphertext is not admitted", async () => {
    const b = await bound(true);
    const dialer = new Dialer().connect(b.hostKx!);
    const appData = v1AppData(central, "node", dialer.kx);
    const recorded = [dialer.enc.header, dialer.enc.encrypt(REQUEST)];
    for (const connId of [801, 802]) {
      const accepted = once(b.listener, "connection") as Promise<[ZitiConnection]>;
      await dialIn(b, { connId, kx: dialer.kx, appData });
      for (const body of recorded) b.router.data(connId, body);
      const [conn] = await accepted;
      expect(conn.callerKey).toBeUndefined();
      expect(conn.callerProofError).toMatch(/caller proof v1 is no longer accepted: upgrade the dialer/);
      conn.destroy();
    }
  });
});

describe("the dialer's side: proof to scrapez hosts only, and their FINAL enforced (scripted router)", () => {
  /** A scrapez dialer announcing a v2 proof to "node" on a fresh scripted router; the dial awaits its Connect's answer. */
  async function startDial(xg = false): Promise<{ router: FakeRouter; ch: Channel; dialing: Promise<ZitiConnection> }> {
    const router = await FakeRouter.start();
    routers.push(router);
    const ch = await router.openChannel({ latencyIntervalMs: 3_600_000, sdkFlowControl: xg });
    closers.push(() => ch.close("test over"));
    const dialing = dialOnChannel(ch, {
      service: "node",
      sessionToken: "t",
      encrypt: true,
      callerId: "prometheus-central",
      appData: proofMarker(),
      acceptHello: true,
      timeoutMs: 5_000,
    });
    return { router, ch, dialing };
  }

  async function dialTo(
    hello: Buffer | undefined,
    xg = false,
  ): Promise<{
    router: FakeRouter;
    ch: Channel;
    conn: ZitiConnection;
    host: { enc: StreamEncryptor; dec: StreamDecryptor };
    hostKx: Buffer;
    circuit?: string;
  }> {
    const { router, ch, dialing } = await startDial(xg);
    const connect = await router.next(ContentType.Connect);
    expect(JSON.parse(connect.headers.get(Header.AppData)!.toString())).toEqual({ scrapez: { v: 2 } });
    const hostKeys = generateKeyPair();
    const k = serverSessionKeys(hostKeys, connect.headers.get(Header.PublicKey)!);
    const host = { enc: new StreamEncryptor(k.tx), dec: new StreamDecryptor(k.rx) };
    const first = hello ? Buffer.concat([host.enc.header, host.enc.encrypt(hello)]) : host.enc.header;
    const connId = dec.u32(connect.headers, Header.ConnId)!;
    let circuit: string | undefined;
    if (xg) {
      circuit = router.connectedXg(connect, hostKeys.publicKey);
      router.xgPayload(connId, circuit, 0, first, { flags: XgFlag.Originator });
    } else router.connected(connect, hostKeys.publicKey, [router.dataFrame(connId, first)]);
    const conn = await dialing;
    conn.on("error", () => undefined);
    const hostKx = Buffer.from(hostKeys.publicKey);
    return { router, ch, conn, host, hostKx, ...(circuit ? { circuit } : {}) };
  }

  /** What the dialer sent on its connection, decrypted by the scripted host. */
  function decryptSent(bodies: Buffer[], host: { dec: StreamDecryptor }): { header: Buffer; messages: Buffer[] } {
    const [header, ...rest] = bodies.filter((b) => b.length > 0);
    host.dec.init(header!);
    return { header: header!, messages: rest.map((b) => host.dec.decrypt(b)) };
  }

  it.each([false, true])(
    "to a scrapez host (SDK flow control: %s): sends the proof first, then data; a FIN without FINAL is a truncation",
    async (xg) => {
      const { router, conn, host, hostKx, circuit } = await dialTo(HOST_HELLO, xg);
      await proveToHost(conn, new CallerProver(central), "node", Date.now() + 5_000);
      expect(conn.expectFinal).toBe(true);
      expect(conn.e2e.peerHello).toEqual(HOST_HELLO);
      conn.write(REQUEST);
      const sentBodies = async () =>
        circuit
          ? router
              .xgSent(circuit)
              .filter((p) => !(p.flags & XgFlag.CircuitStart))
              .map((p) => p.data)
          : router.sentFor(conn.connId, ContentType.Data).map((m) => m.body);
      let bodies: Buffer[] = [];
      for (let i = 0; i < 200 && bodies.length < 3; i++) {
        bodies = await sentBodies();
        await new Promise((r) => setTimeout(r, 10));
      }
      const { header, messages } = decryptSent(bodies, host);
      const r = verifyCallerProof(
        messages[0],
        {
          service: "node",
          dialerKx: conn.e2e.keys!.local,
          hostKx,
          hostHeader: conn.e2e.peerHeader,
          dialerHeader: header,
        },
        contextInternals(ctx).identity.caPem,
      );
      expect(r).toMatchObject({ ok: true, spkiSha256: identityKeyPin(central.certPem) });
      expect(messages[1]).toEqual(REQUEST);
      // The host's answer is cut short: data, then FIN without the FINAL message.
      const errored = once(conn, "error") as Promise<[Error & { code?: string }]>;
      const answer = host.enc.encrypt(Buffer.from("HTTP/1.1 200 OK\r\n"));
      if (circuit) {
        router.xgPayload(conn.connId, circuit, 1, answer, { flags: XgFlag.Originator });
        router.xgPayload(conn.connId, circuit, 2, Buffer.alloc(0), { flags: XgFlag.Originator, edgeFlags: Flag.FIN });
      } else {
        router.data(conn.connId, answer);
        router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
      }
      conn.resume();
      const [err] = await errored;
      expect(err.code).toBe(ErrorCodes.STREAM_TRUNCATED);
    },
  );

  it("the caller's writes (and its end) wait for the proof: a request ended at once still goes out after it", async () => {
    const { router, dialing } = await startDial();
    const connect = await router.next(ContentType.Connect);
    const hostKeys = generateKeyPair();
    const k = serverSessionKeys(hostKeys, connect.headers.get(Header.PublicKey)!);
    const host = { enc: new StreamEncryptor(k.tx), dec: new StreamDecryptor(k.rx) };
    router.connected(connect, hostKeys.publicKey); // the host's header comes later
    const conn = await dialing;
    conn.holdWrites(proveToHost(conn, new CallerProver(central), "node", Date.now() + 5_000));
    conn.end(REQUEST);
    await new Promise((r) => setTimeout(r, 50));
    // Nothing but our stream header before the host showed what it is.
    expect(router.sentFor(conn.connId, ContentType.Data).map((m) => m.body.length)).toEqual([24]);
    router.data(conn.connId, Buffer.concat([host.enc.header, host.enc.encrypt(HOST_HELLO)]));
    const fin = await router.next(
      (m) =>
        m.contentType === ContentType.Data && dec.u32(m.headers, Header.ConnId) === conn.connId && m.body.length === 0,
    );
    expect(dec.u32(fin.headers, Header.Flags)).toBe(Flag.FIN);
    const { messages } = decryptSent(
      router.sentFor(conn.connId, ContentType.Data).map((m) => m.body),
      host,
    );
    expect(JSON.parse(messages[0]!.toString())).toMatchObject({ v: 2 });
    expect(messages[1]).toEqual(REQUEST);
    expect(messages[2]).toEqual(Buffer.alloc(0)); // FINAL
    expect(host.dec.final).toBe(true);
    expect(conn.expectFinal).toBe(true);
  });

  it("a host that never sends its stream header: the held writes fail with the connection (no proof, no data sent)", async () => {
    const { router, dialing } = await startDial();
    router.connected(await router.next(ContentType.Connect), generateKeyPair().publicKey);
    const conn = await dialing;
    conn.holdWrites(proveToHost(conn, new CallerProver(central), "node", Date.now() + 200));
    const errored = once(conn, "error") as Promise<[Error & { code?: string }]>;
    conn.write(REQUEST);
    const [err] = await errored;
    expect(err.code).toBe(ErrorCodes.DIAL_TIMEOUT);
    expect(router.sentFor(conn.connId, ContentType.Data).map((m) => m.body.length)).toEqual([24]);
  });

  it("to a scrapez host that ends with FINAL: a clean end", async () => {
    const { router, conn, host } = await dialTo(HOST_HELLO);
    await proveToHost(conn, new CallerProver(central), "node", Date.now() + 5_000);
    router.data(conn.connId, host.enc.encrypt(Buffer.from("ok")));
    router.data(conn.connId, host.enc.final());
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    expect((await readAll(conn)).toString()).toBe("ok");
    expect(conn.errored).toBeNull();
  });

  it("to a Go host (a bare stream header): sends no proof, expects no FINAL, and its data reaches the reader", async () => {
    const { router, conn, host } = await dialTo(undefined);
    await proveToHost(conn, new CallerProver(central), "node", Date.now() + 5_000);
    expect(conn.expectFinal).toBe(false);
    expect(conn.e2e.peerHello).toBeUndefined();
    router.data(conn.connId, host.enc.encrypt(Buffer.from("from go")));
    router.data(conn.connId, Buffer.alloc(0), Flag.FIN);
    expect((await readAll(conn)).toString()).toBe("from go");
    // Only our stream header went out: nothing a Go host would hand its upstream as data. (It may still be on its
    // way: a channel's frames leave at the end of the turn they were sent in.)
    await router.next((m) => m.contentType === ContentType.Data && dec.u32(m.headers, Header.ConnId) === conn.connId);
    expect(router.sentFor(conn.connId, ContentType.Data).map((m) => m.body.length)).toEqual([24]);
  });

  it("a host whose first Data is no stream header fails the wait with the decryption's own error", async () => {
    const { router, dialing } = await startDial();
    const connect = await router.next(ContentType.Connect);
    router.connected(connect, generateKeyPair().publicKey);
    const conn = await dialing;
    conn.on("error", () => undefined);
    const proving = proveToHost(conn, new CallerProver(central), "node", Date.now() + 5_000);
    router.data(conn.connId, randomBytes(10));
    await expect(proving).rejects.toMatchObject({
      code: ErrorCodes.CRYPTO_FAILED,
      message: expect.stringMatching(/expected a 24-byte crypto header, got 10 bytes/),
    });
  });

  it("refuses a host whose header Data carries something other than the scrapez hello", async () => {
    const { conn } = await dialTo(Buffer.from("hello from elsewhere"));
    await expect(proveToHost(conn, new CallerProver(central), "node", Date.now() + 5_000)).rejects.toMatchObject({
      code: ErrorCodes.PROTOCOL_ERROR,
    });
  });
});
