/**
 * Layer 2: one virtual connection over a router channel, as a Node Duplex.
 *
 * - `_write` chunks the data into Data messages (xgress payloads with SDK flow control; encrypted when the service
 *   requires it) and calls back once the channel's socket accepted them (and, with SDK flow control, once they fit
 *   the circuit's window), waiting for 'drain' when it is full: real back-pressure.
 * - `_final` half-closes: on an encrypted connection a secretstream message tagged FINAL (no plaintext) marks
 *   the end of our stream, then FIN (an empty Data with Flags=FIN) goes out; the peer can still answer.
 * - Inbound data is pushed to the reader and buffered while it lags, up to `maxBufferedBytes` (below).
 * - `destroy()` sends StateClosed (unless the peer closed first) and leaves the channel's table (SDK flow control:
 *   the circuit drains, then XgClose).
 * - A connection never throws an unhandled 'error': its errors come from routers and peers, which are untrusted,
 *   and may strike before anyone could listen (a channel lost mid-dial). With no listener of its own the error
 *   still destroys the connection, is logged (NODE_DEBUG=scrapez:conn) and stays readable as `errored`.
 *
 * Flow control. Two modes, chosen per connection by the router's answer (see xgress.ts for the wire facts):
 *
 * SDK flow control ("xgress to SDK", routers v1.6.0+, asked for by default): the connection sends and receives
 * through its XgressCircuit (xgress-circuit.ts), which has the circuit's own window: a slow reader stops its sender,
 * on its circuit alone, and is never closed.
 *
 * Legacy mode (older routers, or `sdkFlowControl: false`): no per-circuit window. The channel's socket keeps being
 * read for every connection, and a connection whose reader lags buffers up to its own bound, past which it alone is
 * closed with ZITI_READER_TOO_SLOW (why: channel-types.ts, "Legacy flow control").
 *
 * This file is the Duplex, the hold of early messages and the legacy data path; the end-to-end stream and the
 * caller-proof first messages are conn-e2e.ts, the socket look-alikes socket-duplex.ts.
 */
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Channel } from "./channel.js";
import type { ConnSink, LaggingReader } from "./channel-types.js";
import type { StreamDecryptor, StreamEncryptor } from "./crypto.js";
import type { Body, Message } from "./frame.js";
import { ConnType, ContentType, Flag, Header, dec, enc, type Headers } from "./headers.js";
import { E2eStream, type FirstMessages } from "./conn-e2e.js";
import {
  ConnState,
  dataMessages,
  MAX_HELD_MESSAGES,
  TRANSITIONS,
  multipartRefused,
  type ConnInit,
} from "./conn-types.js";
import { SocketDuplex } from "./socket-duplex.js";
import { XgressCircuit } from "./xgress-circuit.js";
import { asZitiError, type XgInit, type XgStats } from "./xgress-circuit-types.js";

const log = debug("conn");

export { ConnState, MAX_DATA_CHUNK, MAX_HELD_MESSAGES, type ConnInit } from "./conn-types.js";
export type { FirstMessages } from "./conn-e2e.js";

export class ZitiConnection extends SocketDuplex implements LaggingReader {
  readonly service: string;
  readonly connId: number;
  readonly role: "dial" | "accepted";
  /** The name the dialer or router asserted (CallerId / DialerIdentityName). Not proof of anything. */
  callerId: string | undefined;
  /**
   * Accepted connections: the caller's identity as verified cryptographically (see api/caller-proof), or undefined
   * when the dialer sent no proof or it did not verify. Set by the listener before "connection" is emitted.
   */
  verifiedCaller: string | undefined;
  readonly peerPublicKey: Buffer | undefined;
  readonly appData: Buffer | undefined;
  /** The dialer's identity name as asserted by a v2.0+ router (never sent by v1.x routers, nor by dialers). */
  readonly dialerIdentityName: string | undefined;
  /** Accepted connections: the pin (`sha256:...`) of the key whose caller proof verified, if any. */
  callerKey: string | undefined;
  /** Accepted connections: how `verifiedCaller`/`callerKey` were established, if at all. */
  callerVerifiedBy: "router" | "proof" | undefined;
  /** Accepted connections: why no caller proof verified (for refusals and audit lines). */
  callerProofError: string | undefined;
  circuitId: string | undefined;
  /** Unread inbound bytes this connection may hold before it is closed with READER_TOO_SLOW. */
  maxBufferedBytes: number;
  /**
   * The peer is known to end its stream with a secretstream FINAL message before FIN (another scrapez; the API
   * layer sets this when the peer announced itself). Then a FIN without FINAL is a truncated stream and fails
   * with ZITI_STREAM_TRUNCATED. Only meaningful on end-to-end encrypted connections.
   */
  expectFinal = false;
  readonly #channel: Channel;
  /** What the channel's table holds for this connection: its dispatch and close hooks (not the connection's API). */
  readonly #sink: ConnSink = {
    connType: ConnType.Dial,
    handle: (m) => this.#handle(m),
    channelClosed: (err) => this.#channelClosed(err),
    inspect: () => `conn ${this.connId} service=${this.service} state=${this.#sm.state}`,
  };
  /**
   * The end-to-end stream and the first-message exchange: the key-exchange keys and stream headers a caller proof
   * binds, a host's hello, a captured first message (api/caller-handshake.ts reads them there).
   */
  readonly e2e: E2eStream;
  /** Our writes and the end of our stream wait for this (holdWrites). */
  #writeGate: Promise<void> | undefined;
  readonly #sm: StateMachine<ConnState>;
  #held: Message[] = [];
  #heldBytes = 0;
  #remoteClosed = false;
  #readEnded = false;
  #msgSeq = 0;
  /** SDK flow control: the circuit this connection sends and receives through (undefined: legacy). */
  #xg: XgressCircuit | undefined;

  constructor(channel: Channel, connId: number, init: ConnInit) {
    super({ allowHalfOpen: true, highWaterMark: 64 * 1024 });
    this.#channel = channel;
    this.connId = connId;
    this.service = init.service;
    this.callerId = init.callerId;
    this.circuitId = init.circuitId;
    this.role = init.role;
    this.peerPublicKey = init.peerPublicKey;
    this.appData = init.appData;
    this.dialerIdentityName = init.dialerIdentityName;
    this.maxBufferedBytes = channel.maxConnBufferedBytes;
    this.e2e = new E2eStream(init.service, connId);
    this.#sm = new StateMachine("conn", `${init.service}#${connId}`, ConnState.Connecting, TRANSITIONS, log);
    this.on("error", (err: Error) => {
      if (this.listenerCount("error") === 1)
        log("conn %d (%s): %s (nobody listens for 'error')", connId, this.service, err.message);
    });
  }

  /**
   * The first-message exchange of a scrapez caller proof (api/caller-handshake.ts). Set while connecting, before
   * start(); ignored on a connection without end-to-end encryption.
   */
  setFirstMessages(first: FirstMessages): void {
    if (this.#sm.is(ConnState.Connecting)) this.e2e.setFirstMessages(first);
  }

  /**
   * Our writes, and the end of our stream, wait for `gate`: a caller proof must be our first message, and the
   * host's stream header decides whether one is sent. A rejected gate destroys the connection with its error.
   */
  holdWrites(gate: Promise<void>): void {
    const g: Promise<void> = gate.then(
      () => {
        if (this.#writeGate === g) this.#writeGate = undefined;
      },
      (err: Error) => {
        this.destroy(err);
        throw err;
      },
    );
    g.catch(() => undefined);
    this.#writeGate = g;
  }

  /** Sends `data` now, ahead of the writes holdWrites() holds (the caller proof). */
  sendFirst(data: Buffer): Promise<void> {
    return this.#writeChunks([data], true);
  }

  /** Whether this connection is end-to-end encrypted (set by start()). */
  get encrypted(): boolean {
    return this.e2e.encrypted;
  }

  /** Resolves once the peer's stream header arrived; rejects if the connection ends first. */
  whenPeerHeader(): Promise<void> {
    return this.e2e.whenPeerHeader(this.destroyed || this.#readEnded);
  }

  /** Unread inbound bytes held for the reader. */
  get bufferedBytes(): number {
    return this.readableLength;
  }

  /** The receiving side saw the peer's FINAL message (end-to-end encrypted connections only). */
  get finalReceived(): boolean {
    return this.e2e.finalReceived;
  }

  get state(): ConnState {
    return this.#sm.state;
  }

  get channel(): Channel {
    return this.#channel;
  }

  /** "sdk" when the router gave this connection its own window (SDK flow control), else "legacy". */
  get flowControl(): "sdk" | "legacy" {
    return this.#xg ? "sdk" : "legacy";
  }

  /** SDK flow control figures (undefined on legacy connections). */
  get xgressStats(): XgStats | undefined {
    return this.#xg?.stats;
  }

  /**
   * The router answered this connection with SDK flow control (UseXgressToSdk): from now on data travels as
   * xgress payloads with their own window. Called before start(), while connecting.
   */
  useXgress(init: XgInit): void {
    if (this.#xg || !this.#sm.is(ConnState.Connecting)) return;
    this.#xg = new XgressCircuit(
      this,
      {
        channel: this.#channel,
        streamClosed: () => this.#sm.is(ConnState.Closed),
        deliver: (body, edgeFlags) => this.#onDataBody(body, edgeFlags),
        remoteClose: (reason) => this.#onRemoteClose(reason),
        unregister: () => this.#channel.unregister(this.connId, this.#sink),
      },
      init,
    );
  }

  /**
   * The handshake is done. With an encryptor, our 24-byte stream header goes out now as the first Data;
   * with a decryptor, the peer's header is expected as its first Data. Held inbound messages are replayed.
   */
  start(
    encryptor?: StreamEncryptor,
    decryptor?: StreamDecryptor,
    keys?: { local: Uint8Array; peer: Uint8Array },
  ): void {
    if (!this.#sm.is(ConnState.Connecting)) return;
    const first = this.e2e.start(encryptor, decryptor, keys);
    this.#sm.to(ConnState.Connected, encryptor ? "end-to-end encrypted" : "plaintext");
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    if (this.#xg) {
      this.#xg.start(first);
    } else {
      try {
        if (first) this.#sendRaw(first, 0);
      } catch (err) {
        this.destroy(asZitiError(err, ErrorCodes.CONNECTION_CLOSED));
        return;
      }
    }
    for (const m of held) this.#handle(m);
  }

  /** Enters the channel's table under its connId (a dial: before its Connect goes out; accepted: before DialSuccess). */
  register(): void {
    this.#channel.register(this.connId, this.#sink);
  }

  #handle(m: Message): void {
    if (this.#sm.is(ConnState.Closed)) {
      // A closed connection may still be draining its circuit: acks and the router's close still matter.
      if (this.#xg && !this.#xg.closed) this.#xg.handle(m);
      return;
    }
    if (this.#sm.is(ConnState.Connecting)) {
      // StateConnected's continuation runs after the rest of this socket read was dispatched: hold data until then.
      if (
        m.contentType === ContentType.Data ||
        m.contentType === ContentType.StateClosed ||
        m.contentType === ContentType.XgPayload ||
        m.contentType === ContentType.XgAcknowledgement
      )
        this.#hold(m);
      return;
    }
    if (this.#xg) {
      this.#xg.handle(m);
      return;
    }
    switch (m.contentType) {
      case ContentType.Data:
        this.#onData(m);
        return;
      case ContentType.StateClosed:
        this.#onRemoteClose(m.body.toString() || "closed by peer");
        return;
      default:
        log("conn %d: ignoring %d", this.connId, m.contentType);
    }
  }

  #hold(m: Message): void {
    this.#held.push(m);
    this.#heldBytes += m.body.length;
    const maxBytes = this.maxBufferedBytes;
    if (this.#held.length > MAX_HELD_MESSAGES || this.#heldBytes > maxBytes) {
      this.destroy(
        new ZitiError(
          ErrorCodes.PROTOCOL_ERROR,
          `${this.service} connection ${this.connId}: the router sent ${this.#held.length} messages (${this.#heldBytes} bytes) ` +
            `before the connection was established, over the bound of ${MAX_HELD_MESSAGES} messages / ${maxBytes} bytes; ` +
            "the connection was closed",
        ),
      );
    }
  }

  #onData(m: Message): void {
    this.#onDataBody(m.body, dec.u32(m.headers, Header.Flags) ?? 0);
  }

  /** One edge Data body with its edge Flags, from a Data message (legacy) or an xgress payload (in order). */
  #onDataBody(body: Buffer, flags: number): void {
    if (flags & Flag.MULTIPART_MSG) {
      this.destroy(multipartRefused(this.service, this.connId, body.length));
      return;
    }
    if (body.length > 0 && !this.#readEnded) {
      let plain: Buffer | undefined;
      try {
        plain = this.e2e.open(body);
      } catch (err) {
        this.destroy(asZitiError(err, ErrorCodes.CRYPTO_FAILED));
        return;
      }
      if (plain && plain.length > 0 && !this.#push(plain)) return;
    }
    if (flags & Flag.FIN && !this.#readEnded) {
      if (this.expectFinal && this.e2e.finalMissing) {
        this.destroy(
          new ZitiError(
            ErrorCodes.STREAM_TRUNCATED,
            `${this.service} connection ${this.connId}: the peer's stream ended (FIN) without its end-to-end FINAL ` +
              "message: the data may have been cut short on the way, so the connection is treated as broken",
          ),
        );
        return;
      }
      this.#readEnded = true;
      this.e2e.settle();
      this.push(null);
    }
  }

  /** Hands `b` to the reader; false when the connection was closed because its reader is too far behind. */
  #push(b: Buffer): boolean {
    this.bytesRead += b.length;
    this.touch();
    if (this.push(b) || this.destroyed) return !this.destroyed;
    // SDK flow control: the window we report stops the sender, and the receive buffer drops what passes the bound.
    if (this.#xg) return true;
    // The reader lags. The socket keeps reading for the channel's other connections; this one buffers, bounded.
    if (this.readableLength > this.maxBufferedBytes) {
      this.destroy(
        new ZitiError(
          ErrorCodes.READER_TOO_SLOW,
          `${this.service} connection ${this.connId}: the reader fell behind: ${this.readableLength} bytes unread, ` +
            `over this connection's bound of ${this.maxBufferedBytes} bytes; the connection was closed to keep the ` +
            "router channel flowing for the other connections",
        ),
      );
      return false;
    }
    this.#channel.noteLagging(this);
    return !this.destroyed;
  }

  shedForChannel(channelTotal: number, channelCap: number): void {
    this.destroy(
      new ZitiError(
        ErrorCodes.READER_TOO_SLOW,
        `${this.service} connection ${this.connId}: the reader fell behind: the lagging connections of router channel ` +
          `${this.#channel.id} held ${channelTotal} unread bytes together, over the channel's cap of ${channelCap}; ` +
          `this one held the most (${this.readableLength}) and was closed to keep the channel flowing for the others`,
      ),
    );
  }

  override _read(): void {
    if (!this.#xg) this.#channel.caughtUp(this);
  }

  // Every consumer (flowing mode, pipe, 'readable', async iteration) reads through read(): the place to see the
  // reader catch up and reopen the sender's window.
  override read(size?: number): unknown {
    const r: unknown = super.read(size);
    this.#xg?.windowUpdate();
    return r;
  }

  #onRemoteClose(reason: string): void {
    if (this.#remoteClosed) return;
    this.#remoteClosed = true;
    log("conn %d: closed by peer: %s", this.connId, reason);
    this.e2e.settle();
    if (!this.#readEnded) {
      this.#readEnded = true;
      this.push(null);
    }
    // Nothing more can be sent; finishing our side lets the stream end cleanly once the reader is done.
    if (!this.writableEnded) this.end();
  }

  #channelClosed(err: ZitiError): void {
    this.#remoteClosed = true;
    this.#xg?.finish(false, `channel closed: ${err.message}`);
    if (this.#sm.is(ConnState.Connecting) || !this.#readEnded || !this.writableFinished) {
      this.destroy(
        new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${this.service} lost: ${err.message}`, {
          cause: err,
        }),
      );
    }
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#writeChunks([chunk]).then(() => cb(), cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.#writeChunks(chunks.map((c) => c.chunk)).then(() => cb(), cb);
  }

  /** Sends what was written, in order, as Data messages (dataMessages), each once the window and socket take it. */
  async #writeChunks(chunks: readonly Buffer[], first = false): Promise<void> {
    if (this.#writeGate && !first) await this.#writeGate;
    if (this.#remoteClosed) {
      throw new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${this.service} was closed by the peer`);
    }
    for (const { pieces, size } of dataMessages(chunks)) {
      const body = this.e2e.seal(pieces);
      this.bytesWritten += size;
      this.touch();
      // SDK flow control: resolves once the payload fits the circuit's window (real back-pressure per connection).
      if (this.#xg) await this.#xg.send(body, 0);
      else if (!this.#sendRaw(body, 0)) await this.#channel.whenWritable();
    }
  }

  #sendRaw(body: Body, flags: number): boolean {
    const headers: Headers = new Map([[Header.ConnId, enc.u32(this.connId)]]);
    if (flags) headers.set(Header.Flags, enc.u32(flags));
    headers.set(Header.Seq, enc.u32(++this.#msgSeq));
    return this.#channel.send(ContentType.Data, headers, body);
  }

  override _final(cb: (err?: Error | null) => void): void {
    // Ending before a held caller proof went out would put our FINAL before it.
    if (this.#writeGate) this.#writeGate.then(() => this.#finalNow(cb), cb);
    else this.#finalNow(cb);
  }

  #finalNow(cb: (err?: Error | null) => void): void {
    if (this.#remoteClosed || !this.#channel.isOpen) return cb();
    if (this.#xg) {
      // FINAL and FIN ride as payloads (FIN as the edge Flags payload header), in order behind the data.
      const final = this.e2e.final();
      if (final) void this.#xg.send(final, 0).catch(() => undefined);
      this.#xg.send(Buffer.alloc(0), Flag.FIN).then(
        () => cb(),
        (err: Error) => cb(err),
      );
      return;
    }
    try {
      // The FINAL-tagged message proves to the receiver that the stream ended here and was not cut short.
      const final = this.e2e.final();
      if (final) this.#sendRaw(final, 0);
      this.#sendRaw(Buffer.alloc(0), Flag.FIN);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.e2e.settle(err);
    const wasOpen = !this.#sm.is(ConnState.Closed);
    if (wasOpen) this.#sm.to(ConnState.Closed, err?.message ?? "closed");
    if (this.#xg) {
      this.#held = [];
      this.#heldBytes = 0;
      this.stopIdleTimer();
      this.#xg.close(err, this.#remoteClosed);
      cb(err);
      return;
    }
    if (wasOpen && !this.#remoteClosed && this.#channel.isOpen) {
      try {
        this.#channel.send(
          ContentType.StateClosed,
          new Map([
            [Header.ConnId, enc.u32(this.connId)],
            [Header.Seq, enc.u32(++this.#msgSeq)],
          ]),
        );
      } catch {
        /* the channel went away meanwhile: nothing to tell */
      }
    }
    this.#held = [];
    this.#heldBytes = 0;
    this.stopIdleTimer();
    this.#channel.caughtUp(this);
    this.#channel.unregister(this.connId, this.#sink);
    cb(err);
  }
}
