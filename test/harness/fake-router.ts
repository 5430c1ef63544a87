/**
 * A scripted fake edge router for fast unit tests of the protocol engine. It speaks the channel framing
 * (src/ziti/protocol/frame.ts) over loopback TCP (127.0.0.1, a port chosen by the kernel), answers the hello, and
 * lets a test script everything else: answer Connect or Bind, send Dial/Data/StateClosed/Latency, reuse
 * connection ids, write malformed bytes, stop reading, drop the connection mid-dial, and read what the SDK sent.
 *
 * It is a stand-in, never the proof of a feature: the real router (test/harness/overlay.ts) is. It exists so that
 * the router's misbehaviour, which the real one will not produce on demand, can be tested in milliseconds.
 */
import net from "node:net";
import type { Duplex } from "node:stream";
import {
  Channel,
  type Body,
  type ChannelOptions,
  ContentType,
  dec,
  enc,
  encodeAck,
  encodeMessage,
  encodePayload,
  FrameDecoder,
  Header,
  type Headers,
  type Message,
  XgHeader,
} from "../../src/ziti/internal.js";

export interface FakeRouterOptions {
  /** Answer the hello by itself (default true). */
  autoHello?: boolean;
  /** Announce SupportsBindSuccess in the hello reply (default false: binds count as established at once). */
  supportsBindSuccess?: boolean;
  routerId?: string;
}

interface Wanted {
  pred: (m: Message) => boolean;
  resolve: (m: Message) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class FakeRouter {
  readonly port: number;
  /** Every message the SDK sent, in order. */
  readonly received: Message[] = [];
  readonly #server: net.Server;
  readonly #opts: Required<FakeRouterOptions>;
  #socket: net.Socket | undefined;
  /** The SDK's end of the last connection the connector opened (tests may break it from the SDK's side). */
  sdkSide: net.Socket | undefined;
  #seq = 1000;
  #wanted: Wanted[] = [];
  #sockets = new Set<net.Socket>();

  private constructor(server: net.Server, port: number, opts: FakeRouterOptions) {
    this.#server = server;
    this.port = port;
    this.#opts = { autoHello: true, supportsBindSuccess: false, routerId: "fake-router", ...opts };
    server.on("connection", (s) => this.#accept(s));
  }

  static async start(opts: FakeRouterOptions = {}): Promise<FakeRouter> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    return new FakeRouter(server, (server.address() as net.AddressInfo).port, opts);
  }

  /** A connector for ChannelOptions.connect: plain TCP to this fake router. */
  connector(): () => Promise<Duplex> {
    return () =>
      new Promise((resolve, reject) => {
        const s = net.connect(this.port, "127.0.0.1");
        s.once("error", reject);
        s.once("connect", () => {
          s.off("error", reject);
          this.sdkSide = s;
          resolve(s);
        });
      });
  }

  /** Opens an SDK Channel to this fake router (its hello answered unless autoHello is off). */
  openChannel(opts: Partial<ChannelOptions> = {}): Promise<Channel> {
    return Channel.open(`tls://fake-router:${this.port}`, {
      identityName: "fake-sdk",
      sessionToken: "api-session-token",
      credentials: { certPem: "", keyPem: "", caPem: "" },
      connect: this.connector(),
      ...opts,
    });
  }

  /** The SDK's current connection (the last one accepted). */
  get socket(): net.Socket {
    if (!this.#socket) throw new Error("fake router: no SDK connected");
    return this.#socket;
  }

  #accept(s: net.Socket): void {
    this.#socket = s;
    // As a real router's (Go sets TCP_NODELAY on every TCP connection): without it, Nagle held a write of ours
    // behind an earlier one until the SDK's delayed ACK, 40 ms each time the SDK had nothing to answer with.
    s.setNoDelay(true);
    this.#sockets.add(s);
    s.on("close", () => this.#sockets.delete(s));
    s.on("error", () => undefined);
    const decoder = new FrameDecoder({ maxFrameBytes: 64 * 1024 * 1024 });
    s.on("data", (chunk: Buffer) => {
      let msgs: Message[];
      try {
        msgs = decoder.push(chunk);
      } catch {
        s.destroy();
        return;
      }
      for (const m of msgs) this.#onMessage(m);
    });
  }

  #onMessage(m: Message): void {
    this.received.push(m);
    if (m.contentType === ContentType.Hello && this.#opts.autoHello) {
      const h: Headers = new Map([
        [Header.ResultSuccess, enc.bool(true)],
        [Header.Id, enc.str(this.#opts.routerId)],
        [Header.HelloVersion, enc.str("v1.6.3|fake")],
      ]);
      if (this.#opts.supportsBindSuccess) h.set(Header.SupportsBindSuccess, enc.bool(true));
      this.reply(m, ContentType.Result, h);
    }
    for (const w of [...this.#wanted]) {
      if (w.pred(m)) {
        this.#wanted.splice(this.#wanted.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(m);
      }
    }
  }

  /** The first message (already received or still to come) that matches; by content type or predicate. */
  next(what: number | ((m: Message) => boolean), timeoutMs = 5_000, after = 0): Promise<Message> {
    const pred = typeof what === "number" ? (m: Message) => m.contentType === what : what;
    const seen = this.received.slice(after).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#wanted = this.#wanted.filter((w) => w.timer !== timer);
        reject(new Error(`fake router: no matching message from the SDK within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#wanted.push({ pred, resolve, reject, timer });
    });
  }

  /** Messages of one type the SDK sent for one connection id. */
  sentFor(connId: number, contentType?: number): Message[] {
    return this.received.filter(
      (m) =>
        dec.u32(m.headers, Header.ConnId) === connId && (contentType === undefined || m.contentType === contentType),
    );
  }

  /** Writes one message to the SDK; returns the socket's write() result. */
  send(contentType: number, headers: Headers = new Map(), body: Buffer = Buffer.alloc(0), sequence?: number): boolean {
    return this.writeRaw(encodeMessage({ contentType, sequence: sequence ?? ++this.#seq, headers, body }));
  }

  /** Answers `to` (ReplyFor = its sequence). */
  reply(to: Message, contentType: number, headers: Headers = new Map(), body: Buffer = Buffer.alloc(0)): boolean {
    headers.set(Header.ReplyFor, enc.i32(to.sequence));
    return this.send(contentType, headers, body);
  }

  /** Sends a request and resolves with the SDK's reply (ReplyFor = its sequence). */
  async request(contentType: number, headers: Headers = new Map(), body?: Buffer, timeoutMs = 5_000): Promise<Message> {
    const sequence = ++this.#seq;
    const reply = this.next((m) => dec.u32(m.headers, Header.ReplyFor) === sequence, timeoutMs, this.received.length);
    this.send(contentType, headers, body, sequence);
    return reply;
  }

  /** Raw bytes to the SDK (malformed frames). */
  writeRaw(b: Buffer): boolean {
    return this.socket.write(b);
  }

  /** One encoded message, to be written later (several in one write arrive in one socket read). */
  frame(contentType: number, headers: Headers = new Map(), body: Body = Buffer.alloc(0), sequence?: number): Buffer {
    return encodeMessage({ contentType, sequence: sequence ?? ++this.#seq, headers, body });
  }

  /**
   * Answers a Connect with StateConnected, as a v1.6.3 router does (with the host's public key, if any).
   * `then` frames go out in the same write, so the SDK reads them in the same socket read.
   */
  connected(connect: Message, hostPublicKey?: Uint8Array, then: Buffer[] = []): void {
    const h: Headers = new Map([
      [Header.ConnId, connect.headers.get(Header.ConnId)!],
      [Header.CircuitId, enc.str(`circuit-${this.#seq}`)],
      [Header.ReplyFor, enc.i32(connect.sequence)],
    ]);
    if (hostPublicKey) h.set(Header.PublicKey, Buffer.from(hostPublicKey));
    this.writeRaw(Buffer.concat([this.frame(ContentType.StateConnected, h), ...then]));
  }

  /**
   * Answers a Connect with StateConnected granting SDK flow control (UseXgressToSdk + ctrl id + address), as a
   * v1.6.3 router does when the Connect asked for it. Returns the circuit id.
   */
  connectedXg(connect: Message, hostPublicKey?: Uint8Array): string {
    const circuitId = `circuit-${++this.#seq}`;
    const h: Headers = new Map([
      [Header.ConnId, connect.headers.get(Header.ConnId)!],
      [Header.CircuitId, enc.str(circuitId)],
      [Header.UseXgressToSdk, enc.bool(true)],
      [Header.XgressCtrlId, enc.str("ctrl")],
      [Header.XgressAddress, enc.str("fake-xgress-address")],
      [Header.ReplyFor, enc.i32(connect.sequence)],
    ]);
    if (hostPublicKey) h.set(Header.PublicKey, Buffer.from(hostPublicKey));
    this.writeRaw(this.frame(ContentType.StateConnected, h));
    return circuitId;
  }

  /** One xgress payload for `connId` (the far side's: originator flag as given), encoded. */
  xgPayloadFrame(
    connId: number,
    circuitId: string,
    sequence: number,
    data: Buffer,
    opts: { flags?: number; edgeFlags?: number; capabilities?: number } = {},
  ): Buffer {
    const m = encodePayload(connId, {
      circuitId,
      sequence,
      flags: opts.flags ?? 0,
      edgeFlags: opts.edgeFlags ?? 0,
      ...(opts.capabilities !== undefined ? { capabilities: opts.capabilities } : {}),
      data,
    });
    return this.frame(m.contentType, m.headers, m.body);
  }

  xgPayload(
    connId: number,
    circuitId: string,
    sequence: number,
    data: Buffer,
    opts: { flags?: number; edgeFlags?: number; capabilities?: number } = {},
  ): boolean {
    return this.writeRaw(this.xgPayloadFrame(connId, circuitId, sequence, data, opts));
  }

  /** Acknowledges `sequences` of `connId`'s payloads, reporting `recvBufferSize` unconsumed at the far side. */
  xgAck(connId: number, circuitId: string, sequences: number[], recvBufferSize = 0): boolean {
    const m = encodeAck(connId, { circuitId, flags: 0, recvBufferSize, sequences });
    return this.writeRaw(this.frame(m.contentType, m.headers, m.body));
  }

  /** The xgress payloads the SDK sent for a circuit: sequence, flags, edge flags, capabilities (if any), data. */
  xgSent(circuitId: string): {
    sequence: number;
    flags: number;
    edgeFlags: number;
    capabilities: number | undefined;
    data: Buffer;
  }[] {
    return this.received
      .filter((m) => m.contentType === ContentType.XgPayload && dec.str(m.headers, XgHeader.CircuitId) === circuitId)
      .map((m) => ({
        sequence: Number(m.headers.get(XgHeader.Sequence)!.readBigUInt64LE(0)),
        flags: dec.u32(m.headers, XgHeader.Flags) ?? 0,
        edgeFlags: dec.u32(m.headers, XgHeader.EdgeFlags) ?? 0,
        capabilities: m.headers.get(XgHeader.Capabilities)?.readUInt32BE(0),
        data: m.body,
      }));
  }

  /** The acknowledgements the SDK sent for a circuit: sequences and the receive buffer it reported. */
  xgAcks(circuitId: string): { sequences: number[]; recvBufferSize: number }[] {
    return this.received
      .filter(
        (m) => m.contentType === ContentType.XgAcknowledgement && dec.str(m.headers, XgHeader.CircuitId) === circuitId,
      )
      .map((m) => {
        const sequences: number[] = [];
        for (let o = 0; o < m.body.length; o += 4) sequences.push(m.body.readInt32BE(o));
        return { sequences, recvBufferSize: dec.u32(m.headers, XgHeader.RecvBufferSize) ?? -1 };
      });
  }

  /** One Data message for `connId` (optional Flags), encoded. */
  dataFrame(connId: number, body: Buffer, flags = 0): Buffer {
    const h: Headers = new Map([[Header.ConnId, enc.u32(connId)]]);
    if (flags) h.set(Header.Flags, enc.u32(flags));
    return this.frame(ContentType.Data, h, body);
  }

  /** Sends one Data message for `connId` (optional Flags). */
  data(connId: number, body: Buffer, flags = 0): boolean {
    return this.writeRaw(this.dataFrame(connId, body, flags));
  }

  /** Sends the router's Dial for an incoming circuit to bind `bindConnId`, with a router-chosen connection id. */
  dial(bindConnId: number, newConnId: number, token: string, extra: Headers = new Map()): Promise<Message> {
    const h: Headers = new Map([
      [Header.ConnId, enc.u32(bindConnId)],
      [Header.RouterProvidedConnId, enc.u32(newConnId)],
      [Header.CallerId, enc.str("fake-dialer")],
      [Header.CircuitId, enc.str(`circuit-${newConnId}`)],
      ...extra,
    ]);
    return this.request(ContentType.Dial, h, Buffer.from(token));
  }

  /** Stops (or resumes) reading what the SDK sends. */
  pauseReading(paused = true): void {
    if (paused) this.socket.pause();
    else this.socket.resume();
  }

  /** Drops the SDK's connection at once, as a crashed router would. */
  drop(): void {
    this.#socket?.destroy();
  }

  async close(): Promise<void> {
    for (const w of this.#wanted) {
      clearTimeout(w.timer);
      w.reject(new Error("fake router closed"));
    }
    this.#wanted = [];
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
