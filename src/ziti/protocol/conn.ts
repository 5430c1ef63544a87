/**
 * Layer 2: one virtual connection over a router channel, as a Node Duplex.
 *
 * - `_write` chunks the data into Data messages (encrypted when the service requires it) and calls back once
 *   the channel's socket accepted them, waiting for 'drain' when it is full: real back-pressure.
 * - `_final` half-closes: on an encrypted connection a secretstream message tagged FINAL (no plaintext) marks
 *   the end of our stream, then FIN (an empty Data with Flags=FIN) goes out; the peer can still answer.
 * - Inbound data is pushed to the reader and buffered while it lags, up to `maxBufferedBytes` (below).
 * - `destroy()` sends StateClosed (unless the peer closed first) and leaves the channel's table.
 * - A connection never throws an unhandled 'error': its errors come from routers and peers, which are untrusted,
 *   and may strike before anyone could listen (a channel lost mid-dial). With no listener of its own the error
 *   still destroys the connection, is logged (NODE_DEBUG=scrapez:conn) and stays readable as `errored`.
 *
 * Inbound flow control, and why it is a bound and not a window. We speak the edge protocol's legacy flow-control
 * mode: the router gives the SDK no per-circuit window. Its edge xgress hands each payload to the channel
 * (`edgeXgressConn.WritePayload` -> channel send queue of 4 messages, router/xgress_edge/fabric.go@v1.6.3) and
 * counts it as delivered, acknowledging it to the far side, as soon as it is queued for our socket; the SDK-to-
 * router direction is a 4-message queue per connection (msg_queue.go `NewMsgQueue(4)`). The only signal we can
 * give the router is to stop reading the shared TLS socket, and that stops every connection and the latency
 * probes on the channel with it (ziti-protocol.md §7 pitfall 5). So the socket keeps reading for everyone, and a
 * connection whose reader lags buffers its data up to its own bound (default 4 MiB of unread data; a channel
 * caps its laggards' total, see channel.ts); past the bound, that connection alone is closed with
 * ZITI_READER_TOO_SLOW and the router closes its circuit.
 *
 * OpenZiti's SDK-side flow control ("xgress to SDK": UseXgressToSdk 1028 on Connect/Bind, then content types
 * 1100-1103 carrying xgress payloads, acks, control and close between router and SDK) would give each connection
 * a real window. v1.6.3 routers accept it, but it means running a full xgress endpoint in the SDK (payload
 * sequencing, acknowledgements, the retransmitter and the RTT-driven tx portal), the Go SDK leaves it off unless
 * asked (`SdkFlowControl`, sdk-golang@v1.1.2 ziti/ziti.go), and v1.6.3's `ziti tunnel` peers never use it.
 * It is not used yet.
 *
 * What the bound means for a slow reader of a big answer: the router sends as fast as the network allows, not
 * as fast as the reader reads, so the bound is on how far the reader may fall behind, not on the answer's size.
 * A reader that keeps pace (piping into a socket that drains) reads answers of any size; a reader that stops,
 * or reads slower than the data arrives, fails once its backlog passes the bound. Raise `maxBufferedBytes`
 * (per connection, or as the context's default) for readers that must pause on big answers.
 *
 * What it does not cover: outbound, when the *peer* stops reading. The router queues 4 messages per connection
 * and, once that circuit's fabric window is full, its receive loop for our whole channel blocks (xgress
 * `LinkSendBuffer.BufferPayload` -> `msg_queue.go` Push), so every connection we send on over that channel
 * waits, and nothing we send (not even StateClosed) reaches the router until the channel closes. Only SDK-side
 * flow control (a window per circuit) avoids that; in legacy mode it lasts until the channel is declared dead.
 */
import { Duplex } from "node:stream";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Channel, ConnSink, LaggingReader } from "./channel.js";
import type { StreamDecryptor, StreamEncryptor } from "./crypto.js";
import type { Message } from "./frame.js";
import { ConnType, ContentType, Flag, Header, dec, enc, type Headers } from "./headers.js";

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
  readonly #channel: Channel;
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

  /**
   * The handshake is done. With an encryptor, our 24-byte stream header goes out now as the first Data;
   * with a decryptor, the peer's header is expected as its first Data. Held inbound messages are replayed.
   */
  start(encryptor?: StreamEncryptor, decryptor?: StreamDecryptor): void {
    if (!this.#sm.is(ConnState.Connecting)) return;
    this.#encryptor = encryptor;
    this.#decryptor = decryptor;
    this.#sm.to(ConnState.Connected, encryptor ? "end-to-end encrypted" : "plaintext");
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    try {
      if (encryptor) this.#sendRaw(Buffer.from(encryptor.header), 0);
    } catch (err) {
      this.destroy(asZitiError(err, ErrorCodes.CONNECTION_CLOSED));
      return;
    }
    for (const m of held) this.handle(m);
  }

  handle(m: Message): void {
    if (this.#sm.is(ConnState.Closed)) return;
    if (this.#sm.is(ConnState.Connecting)) {
      // StateConnected's continuation runs after the rest of this socket read was dispatched: hold data until then.
      if (m.contentType === ContentType.Data || m.contentType === ContentType.StateClosed) this.#hold(m);
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
    const flags = dec.u32(m.headers, Header.Flags) ?? 0;
    if (m.body.length > 0 && !this.#readEnded) {
      let plain: Buffer | undefined = m.body;
      let parts: Buffer[] | undefined;
      try {
        if (this.#decryptor) {
          if (!this.#headerReceived) {
            if (m.body.length !== HEADER_BYTES) {
              throw new ZitiError(
                ErrorCodes.CRYPTO_FAILED,
                `conn ${this.connId} (${this.service}): expected a ${HEADER_BYTES}-byte crypto header, got ${m.body.length} bytes`,
              );
            }
            this.#decryptor.init(m.body);
            this.#headerReceived = true;
            plain = undefined;
          } else {
            if (this.#decryptor.final) {
              throw new ZitiError(
                ErrorCodes.CRYPTO_FAILED,
                `conn ${this.connId} (${this.service}): data after the peer's FINAL message (its stream had ended)`,
              );
            }
            plain = this.#decryptor.decrypt(m.body);
          }
        }
        if (plain && plain.length > 0 && flags & Flag.MULTIPART_MSG) parts = splitMultipart(plain);
      } catch (err) {
        this.destroy(asZitiError(err, ErrorCodes.CRYPTO_FAILED));
        return;
      }
      if (parts) {
        for (const part of parts) if (!this.#push(part)) return;
      } else if (plain && plain.length > 0) {
        if (!this.#push(plain)) return;
      }
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
      this.push(null);
    }
  }

  /** Hands `b` to the reader; false when the connection was closed because its reader is too far behind. */
  #push(b: Buffer): boolean {
    this.bytesRead += b.length;
    this.#touch();
    if (this.push(b) || this.destroyed) return !this.destroyed;
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
    this.#channel.caughtUp(this);
  }

  #onRemoteClose(reason: string): void {
    if (this.#remoteClosed) return;
    this.#remoteClosed = true;
    log("conn %d: closed by peer: %s", this.connId, reason);
    if (!this.#readEnded) {
      this.#readEnded = true;
      this.push(null);
    }
    // Nothing more can be sent; finishing our side lets the stream end cleanly once the reader is done.
    if (!this.writableEnded) this.end();
  }

  channelClosed(err: ZitiError): void {
    this.#remoteClosed = true;
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

  async #writeChunks(data: Buffer): Promise<void> {
    if (this.#remoteClosed) {
      throw new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${this.service} was closed by the peer`);
    }
    for (let off = 0; off < data.length; off += MAX_DATA_CHUNK) {
      const slice = data.subarray(off, Math.min(off + MAX_DATA_CHUNK, data.length));
      const body = this.#encryptor ? Buffer.from(this.#encryptor.encrypt(slice)) : slice;
      this.bytesWritten += slice.length;
      this.#touch();
      if (!this.#sendRaw(body, 0)) await this.#channel.whenWritable();
    }
  }

  #sendRaw(body: Buffer, flags: number): boolean {
    const headers: Headers = new Map([[Header.ConnId, enc.u32(this.connId)]]);
    if (flags) headers.set(Header.Flags, enc.u32(flags));
    headers.set(Header.Seq, enc.u32(++this.#msgSeq));
    return this.#channel.send(ContentType.Data, headers, body);
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.#remoteClosed || !this.#channel.isOpen) return cb();
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
    const wasOpen = !this.#sm.is(ConnState.Closed);
    if (wasOpen) this.#sm.to(ConnState.Closed, err?.message ?? "closed");
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

function asZitiError(err: unknown, code: ZitiError["code"]): ZitiError {
  return err instanceof ZitiError ? err : new ZitiError(code, String((err as Error)?.message ?? err), { cause: err });
}

/** Splits a MULTIPART_MSG body: repeated u16 LE length + bytes. */
export function splitMultipart(b: Buffer): Buffer[] {
  const parts: Buffer[] = [];
  let off = 0;
  while (off + 2 <= b.length) {
    const len = b.readUInt16LE(off);
    off += 2;
    if (off + len > b.length) throw new ZitiError(ErrorCodes.PROTOCOL_ERROR, "truncated multipart message");
    parts.push(b.subarray(off, off + len));
    off += len;
  }
  return parts;
}
