/**
 * Layer 2: one virtual connection over a router channel, as a Node Duplex.
 *
 * - `_write` chunks the data into Data messages (xgress payloads with SDK flow control; encrypted when the service
 *   requires it) and calls back once the channel's socket accepted them (and, with SDK flow control, once they fit
 *   the circuit's window), waiting for 'drain' when it is full: real back-pressure.
 * - `_final` half-closes: on an encrypted connection a secretstream message tagged FINAL (no plaintext) marks
 *   the end of our stream, then FIN (an empty Data with Flags=FIN) goes out; the peer can still answer.
 * - Inbound data is pushed to the reader and buffered while it lags, up to `maxBufferedBytes` (below).
 * - `destroy()` sends StateClosed (unless the peer closed first) and leaves the channel's table (with SDK flow
 *   control: drains the circuit, then XgClose; see below).
 * - A connection never throws an unhandled 'error': its errors come from routers and peers, which are untrusted,
 *   and may strike before anyone could listen (a channel lost mid-dial). With no listener of its own the error
 *   still destroys the connection, is logged (NODE_DEBUG=scrapez:conn) and stays readable as `errored`.
 *
 * Flow control. Two modes, chosen per connection by the router's answer (see xgress.ts for the wire facts):
 *
 * SDK flow control ("xgress to SDK", routers v1.6.0+, asked for by default): the SDK is one end of the circuit's
 * xgress and the router only forwards. Data travels as sequenced payloads (edge Flags such as FIN ride in a payload
 * header; E2EE ciphertext, FINAL included, is the payload data). Inbound: payloads are delivered in sequence order
 * and acknowledged at once with the bytes we hold unread, so the far sender stops once our reader lags (past 4 MiB
 * reported) and starts again when an empty acknowledgement says the reader caught up; a payload arriving past
 * `maxBufferedBytes` is dropped unacknowledged and resent later. A slow reader therefore never closes: it is
 * stopped, on its circuit alone. Outbound: `_write` calls back once the payload fits the circuit's window
 * (unacknowledged bytes, and the peer's reported buffer), so a peer that stops reading stops only our writer on
 * that connection; unacknowledged payloads are resent (routers drop when a queue is full). A closed stream drains:
 * its last payloads and a CircuitEnd are acknowledged (or 30 s pass) before XgClose releases the circuit. The
 * router knows no Data or StateClosed for such a connection, so none are sent.
 *
 * Legacy mode (older routers, or `sdkFlowControl: false`): the router gives the SDK no per-circuit window. Its edge
 * xgress hands each payload to the channel (`edgeXgressConn.WritePayload` -> channel send queue of 4 messages,
 * router/xgress_edge/fabric.go@v1.6.3) and counts it as delivered, acknowledging it to the far side, as soon as it
 * is queued for our socket; the SDK-to-router direction is a 4-message queue per connection (msg_queue.go
 * `NewMsgQueue(4)`). The only signal we can give the router is to stop reading the shared TLS socket, and that
 * stops every connection and the latency probes on the channel with it (ziti-protocol.md §7 pitfall 5). So the
 * socket keeps reading for everyone, and a connection whose reader lags buffers its data up to its own bound
 * (default 4 MiB of unread data; a channel caps its laggards' total, see channel.ts); past the bound, that
 * connection alone is closed with ZITI_READER_TOO_SLOW and the router closes its circuit. The bound is on how far
 * the reader may fall behind, not on the answer's size. What legacy mode cannot cover: when the *peer* stops
 * reading, the router's receive loop for our whole channel blocks once that circuit's window is full (xgress
 * `LinkSendBuffer.BufferPayload` -> `msg_queue.go` Push), so every connection we send on over that channel waits
 * until the channel is declared dead. SDK flow control is what avoids that (test/integration/sdk-xg.test.ts).
 *
 * Size: over 400 lines because one connection runs in two modes (legacy Data frames and SDK flow control) that
 * share the Duplex; the xgress driving (#xg*) is the part to move next, beside xgress.ts.
 */
import { Duplex } from "node:stream";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Channel, ConnSink, LaggingReader } from "./channel.js";
import type { StreamDecryptor, StreamEncryptor } from "./crypto.js";
import type { Message } from "./frame.js";
import { ConnType, ContentType, Flag, Header, dec, enc, type Headers } from "./headers.js";
import { XgressCircuit, asZitiError, type XgInit, type XgStats } from "./xgress-circuit.js";

const log = debug("conn");

/** Largest plaintext carried in one Data message (the C SDK consolidates up to 31 KiB). */
export const MAX_DATA_CHUNK = 32 * 1024;
const HEADER_BYTES = 24;
/** Messages held for a connection that is still connecting (legitimately: the rest of one socket read). */
export const MAX_HELD_MESSAGES = 1024;

export enum ConnState {
  /** Registered; waiting for the handshake (StateConnected / crypto keys). Inbound data is held. */
  Connecting = "connecting",
  Connected = "connected",
  Closed = "closed",
}

const TRANSITIONS: Record<ConnState, readonly ConnState[]> = {
  [ConnState.Connecting]: [ConnState.Connected, ConnState.Closed],
  [ConnState.Connected]: [ConnState.Closed],
  [ConnState.Closed]: [],
};

export interface ConnInit {
  service: string;
  callerId?: string | undefined;
  circuitId?: string | undefined;
  /** "dial" for connections we dialed, "accepted" for those a listener accepted. */
  role: "dial" | "accepted";
  /** Accepted connections: the dialer's end-to-end key-exchange public key (32 bytes), as the router relayed it. */
  peerPublicKey?: Buffer | undefined;
  /** Accepted connections: the dialer's AppData, as the router relayed it (untrusted bytes). */
  appData?: Buffer | undefined;
  /** Accepted connections: DialerIdentityName (1035), asserted by v2.0+ routers only. */
  dialerIdentityName?: string | undefined;
}

/** The first messages of a scrapez caller-proof exchange (api/caller-handshake.ts); all need encryption. */
export interface FirstMessages {
  /** Host: sent encrypted in the same Data as our stream header. */
  hello?: Buffer | undefined;
  /** Dialer: the peer's header Data may carry an encrypted hello after the 24 header bytes (see peerHello). */
  acceptHello?: boolean | undefined;
  /** Host: the peer's first decrypted message is kept from the reader, for firstMessage(). */
  capture?: boolean | undefined;
}

export class ZitiConnection extends Duplex implements ConnSink, LaggingReader {
  readonly connType = ConnType.Dial;
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
  /**
   * The end-to-end key-exchange public keys, ours and the peer's (for a dialer: the host's, from StateConnected).
   * Set by start() on encrypted connections; what a caller proof binds (api/caller-proof.ts).
   */
  e2eKeys: { local: Buffer; peer: Buffer } | undefined;
  readonly #channel: Channel;
  /** First-message exchange (api/caller-handshake.ts); see setFirstMessages(). */
  #first: FirstMessages = {};
  #peerHeader: Buffer | undefined;
  #peerHello: Buffer | undefined;
  #headerWaiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  #captured: { done: boolean; value: Buffer | undefined; waiters: ((b: Buffer | undefined) => void)[] } | undefined;
  /** Our writes and the end of our stream wait for this (holdWrites). */
  #writeGate: Promise<void> | undefined;
  readonly #sm: StateMachine<ConnState>;
  #encryptor: StreamEncryptor | undefined;
  #decryptor: StreamDecryptor | undefined;
  #headerReceived = false;
  #held: Message[] = [];
  #heldBytes = 0;
  #remoteClosed = false;
  #readEnded = false;
  #msgSeq = 0;
  #idleMs = 0;
  #idleTimer: NodeJS.Timeout | undefined;
  /** SDK flow control: the circuit this connection sends and receives through (undefined: legacy). */
  #xg: XgressCircuit | undefined;
  bytesRead = 0;
  bytesWritten = 0;

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
    if (this.#sm.is(ConnState.Connecting)) this.#first = { ...first };
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
    return this.#writeChunks(data, true);
  }

  /** Our secretstream header (encrypted connections). */
  get localStreamHeader(): Buffer | undefined {
    return this.#encryptor?.header;
  }

  /** The peer's secretstream header, once it arrived. */
  get peerStreamHeader(): Buffer | undefined {
    return this.#peerHeader;
  }

  /** What the peer sent encrypted in the Data of its stream header (only read when `acceptHello` was set). */
  get peerHello(): Buffer | undefined {
    return this.#peerHello;
  }

  /** Whether this connection is end-to-end encrypted (set by start()). */
  get encrypted(): boolean {
    return this.#encryptor !== undefined;
  }

  /** Resolves once the peer's stream header arrived; rejects if the connection ends first. */
  whenPeerHeader(): Promise<void> {
    if (this.#peerHeader) return Promise.resolve();
    if (this.destroyed || this.#readEnded) return Promise.reject(this.#noHeaderError());
    return new Promise((resolve, reject) => this.#headerWaiters.push({ resolve, reject }));
  }

  /**
   * With `capture` set: the peer's first decrypted message, kept from the reader; undefined if the stream ended
   * (or the connection closed) before one came. Without `capture`: undefined at once.
   */
  firstMessage(): Promise<Buffer | undefined> {
    const c = this.#captured;
    if (!c || c.done) return Promise.resolve(c?.value);
    return new Promise((resolve) => c.waiters.push(resolve));
  }

  #noHeaderError(): ZitiError {
    return new ZitiError(
      ErrorCodes.CONNECTION_CLOSED,
      `${this.service} connection ${this.connId}: closed before the peer's end-to-end stream header arrived`,
    );
  }

  /** Ends the first-message waits: the stream ended or the connection closed (with `err`, if it failed). */
  #settleFirst(err?: Error | null): void {
    const waiters = this.#headerWaiters.splice(0);
    const why = err instanceof ZitiError ? err : this.#noHeaderError();
    if (waiters.length > 0 && !this.#peerHeader) for (const w of waiters) w.reject(why);
    this.#capture(undefined);
  }

  #capture(value: Buffer | undefined): void {
    const c = this.#captured;
    if (!c || c.done) return;
    c.done = true;
    c.value = value;
    for (const w of c.waiters.splice(0)) w(value);
  }

  /** Unread inbound bytes held for the reader. */
  get bufferedBytes(): number {
    return this.readableLength;
  }

  /** The receiving side saw the peer's FINAL message (end-to-end encrypted connections only). */
  get finalReceived(): boolean {
    return this.#decryptor?.final === true;
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
        unregister: () => this.#channel.unregister(this.connId, this),
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
    this.#encryptor = encryptor;
    this.#decryptor = decryptor;
    if (encryptor && decryptor && keys) this.e2eKeys = { local: Buffer.from(keys.local), peer: Buffer.from(keys.peer) };
    // The first-message exchange needs end-to-end encryption: without it there is nothing to bind or hide.
    if (!encryptor || !decryptor) this.#first = {};
    if (this.#first.capture) this.#captured = { done: false, value: undefined, waiters: [] };
    // A scrapez host answers a dialer that announced a caller proof with a hello in its header's Data (one
    // message, so the dialer tells a scrapez host from a Go or C host by the host's first message alone).
    const first = encryptor
      ? this.#first.hello
        ? Buffer.concat([encryptor.header, encryptor.encrypt(this.#first.hello)])
        : Buffer.from(encryptor.header)
      : undefined;
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
    for (const m of held) this.handle(m);
  }

  handle(m: Message): void {
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
      this.#refuseMultipart(body.length);
      return;
    }
    if (body.length > 0 && !this.#readEnded) {
      let plain: Buffer | undefined = body;
      try {
        if (this.#decryptor) {
          if (!this.#headerReceived) {
            // A dialer that announced a caller proof accepts a scrapez host's hello in the header's Data.
            let hello: Buffer | undefined;
            if (this.#first.acceptHello && body.length > HEADER_BYTES) {
              hello = body.subarray(HEADER_BYTES);
              body = body.subarray(0, HEADER_BYTES);
            }
            if (body.length !== HEADER_BYTES) {
              throw new ZitiError(
                ErrorCodes.CRYPTO_FAILED,
                `conn ${this.connId} (${this.service}): expected a ${HEADER_BYTES}-byte crypto header, got ${body.length} bytes`,
              );
            }
            this.#decryptor.init(body);
            this.#headerReceived = true;
            this.#peerHeader = Buffer.from(body);
            plain = undefined;
            if (hello) {
              this.#peerHello = this.#decryptor.decrypt(hello);
              if (this.#decryptor.final) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "a FINAL-tagged hello");
            }
            for (const w of this.#headerWaiters.splice(0)) w.resolve();
          } else {
            if (this.#decryptor.final) {
              throw new ZitiError(
                ErrorCodes.CRYPTO_FAILED,
                `conn ${this.connId} (${this.service}): data after the peer's FINAL message (its stream had ended)`,
              );
            }
            plain = this.#decryptor.decrypt(body);
            // The first message of a dialer that announced a caller proof is the proof: not the reader's.
            if (this.#captured && !this.#captured.done) {
              this.#capture(plain);
              plain = undefined;
            }
          }
        }
      } catch (err) {
        this.destroy(asZitiError(err, ErrorCodes.CRYPTO_FAILED));
        return;
      }
      if (plain && plain.length > 0 && !this.#push(plain)) return;
    }
    if (flags & Flag.FIN && !this.#readEnded) {
      if (this.expectFinal && this.#decryptor && !this.#decryptor.final) {
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
      this.#settleFirst();
      this.push(null);
    }
  }

  /**
   * MULTIPART_MSG (edge Flags 16) says "this body is repeated u16 length + bytes": it decides how the plaintext is
   * split, yet the Flags travel outside the end-to-end encryption, so a router can set or clear it at will, and
   * splitting by lengths the sender never wrote silently drops bytes (each 2-byte length read is data lost). The C
   * SDK, the only one that sends it, does so only to a peer that set MULTIPART on a message of its own (a
   * capability, CONN_CAP_MASK in ziti-sdk-c library/connect.c); without it the C SDK sends one Data per write, as
   * Go always does. We never advertise MULTIPART, so no honest peer sends this flag to us: when it arrives a router
   * forged it (or a peer broke the protocol), and the connection fails loudly rather than guess how to split.
   */
  #refuseMultipart(bodyBytes: number): void {
    this.destroy(
      new ZitiError(
        ErrorCodes.PROTOCOL_ERROR,
        `${this.service} connection ${this.connId}: a Data message (${bodyBytes} bytes) arrived flagged MULTIPART_MSG, ` +
          "which this SDK never asks for; the flag is outside the end-to-end encryption, so it was forged on the way " +
          "or the peer broke the protocol. The connection was closed rather than re-split the data",
      ),
    );
  }

  /** Hands `b` to the reader; false when the connection was closed because its reader is too far behind. */
  #push(b: Buffer): boolean {
    this.bytesRead += b.length;
    this.#touch();
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
    this.#settleFirst();
    if (!this.#readEnded) {
      this.#readEnded = true;
      this.push(null);
    }
    // Nothing more can be sent; finishing our side lets the stream end cleanly once the reader is done.
    if (!this.writableEnded) this.end();
  }

  channelClosed(err: ZitiError): void {
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

  // net.Socket look-alikes, so http.Server and http.Agent can use a connection as their socket.

  /** Emits 'timeout' after `ms` without reads or writes (0 disables), like net.Socket. */
  setTimeout(ms: number, cb?: () => void): this {
    this.#idleMs = ms;
    // As net.Socket: a callback is added for a timeout, and removed when the timeout is cleared with 0.
    if (cb) {
      if (ms === 0) this.removeListener("timeout", cb);
      else this.once("timeout", cb);
    }
    this.#touch();
    return this;
  }

  #touch(): void {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    if (this.#idleMs > 0 && !this.destroyed) {
      this.#idleTimer = setTimeout(() => this.emit("timeout"), this.#idleMs);
      this.#idleTimer.unref();
    }
  }

  setNoDelay(_noDelay?: boolean): this {
    return this;
  }

  setKeepAlive(_enable?: boolean, _delay?: number): this {
    return this;
  }

  ref(): this {
    return this;
  }

  unref(): this {
    return this;
  }

  get remoteAddress(): string | undefined {
    return undefined;
  }

  inspect(): string {
    return `conn ${this.connId} service=${this.service} state=${this.#sm.state}`;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#writeChunks(chunk).then(() => cb(), cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    const all = chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk));
    this.#writeChunks(all).then(() => cb(), cb);
  }

  async #writeChunks(data: Buffer, first = false): Promise<void> {
    if (this.#writeGate && !first) await this.#writeGate;
    if (this.#remoteClosed) {
      throw new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${this.service} was closed by the peer`);
    }
    for (let off = 0; off < data.length; off += MAX_DATA_CHUNK) {
      const slice = data.subarray(off, Math.min(off + MAX_DATA_CHUNK, data.length));
      const body = this.#encryptor ? Buffer.from(this.#encryptor.encrypt(slice)) : slice;
      this.bytesWritten += slice.length;
      this.#touch();
      // SDK flow control: resolves once the payload fits the circuit's window (real back-pressure per connection).
      if (this.#xg) await this.#xg.send(body, 0);
      else if (!this.#sendRaw(body, 0)) await this.#channel.whenWritable();
    }
  }

  #sendRaw(body: Buffer, flags: number): boolean {
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
      if (this.#encryptor) void this.#xg.send(Buffer.from(this.#encryptor.final()), 0).catch(() => undefined);
      this.#xg.send(Buffer.alloc(0), Flag.FIN).then(
        () => cb(),
        (err: Error) => cb(err),
      );
      return;
    }
    try {
      // The FINAL-tagged message proves to the receiver that the stream ended here and was not cut short.
      if (this.#encryptor) this.#sendRaw(this.#encryptor.final(), 0);
      this.#sendRaw(Buffer.alloc(0), Flag.FIN);
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#settleFirst(err);
    const wasOpen = !this.#sm.is(ConnState.Closed);
    if (wasOpen) this.#sm.to(ConnState.Closed, err?.message ?? "closed");
    if (this.#xg) {
      this.#held = [];
      this.#heldBytes = 0;
      if (this.#idleTimer) clearTimeout(this.#idleTimer);
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
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#channel.caughtUp(this);
    this.#channel.unregister(this.connId, this);
    cb(err);
  }
}
