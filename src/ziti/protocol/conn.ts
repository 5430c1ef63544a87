/**
 * Layer 2: one virtual connection over a router channel, as a Node Duplex.
 *
 * - `_write` chunks the data into Data messages (encrypted when the service requires it) and calls back once
 *   the channel's socket accepted them, waiting for 'drain' when it is full: real back-pressure.
 * - `_final` sends FIN (an empty Data with Flags=FIN): a half-close, the peer can still answer.
 * - Inbound data is pushed to the reader; when the reader lags, the channel's socket is paused.
 * - `destroy()` sends StateClosed (unless the peer closed first) and leaves the channel's table.
 */
import { Duplex } from "node:stream";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Channel, ConnSink } from "./channel.js";
import type { StreamDecryptor, StreamEncryptor } from "./crypto.js";
import type { Message } from "./frame.js";
import { ConnType, ContentType, Flag, Header, dec, enc, type Headers } from "./headers.js";

const log = debug("conn");

/** Largest plaintext carried in one Data message (the C SDK consolidates up to 31 KiB). */
export const MAX_DATA_CHUNK = 32 * 1024;
const HEADER_BYTES = 24;

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

export class ZitiConnection extends Duplex implements ConnSink {
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
  readonly #channel: Channel;
  readonly #sm: StateMachine<ConnState>;
  #encryptor: StreamEncryptor | undefined;
  #decryptor: StreamDecryptor | undefined;
  #headerReceived = false;
  #held: Message[] = [];
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
    this.#sm = new StateMachine("conn", `${init.service}#${connId}`, ConnState.Connecting, TRANSITIONS, log);
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
    if (encryptor) this.#sendRaw(Buffer.from(encryptor.header), 0);
    const held = this.#held;
    this.#held = [];
    for (const m of held) this.handle(m);
  }

  handle(m: Message): void {
    if (this.#sm.is(ConnState.Closed)) return;
    if (this.#sm.is(ConnState.Connecting)) {
      // StateConnected's continuation runs after the rest of this socket read was dispatched: hold data until then.
      if (m.contentType === ContentType.Data || m.contentType === ContentType.StateClosed) this.#held.push(m);
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

  #onData(m: Message): void {
    const flags = dec.u32(m.headers, Header.Flags) ?? 0;
    if (m.body.length > 0 && !this.#readEnded) {
      let plain: Buffer | undefined = m.body;
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
            plain = this.#decryptor.decrypt(m.body);
          }
        }
      } catch (err) {
        this.destroy(
          err instanceof ZitiError ? err : new ZitiError(ErrorCodes.CRYPTO_FAILED, String(err), { cause: err }),
        );
        return;
      }
      if (plain && plain.length > 0) {
        if (flags & Flag.MULTIPART_MSG) {
          for (const part of splitMultipart(plain)) this.#push(part);
        } else this.#push(plain);
      }
    }
    if (flags & Flag.FIN && !this.#readEnded) {
      this.#readEnded = true;
      this.push(null);
    }
  }

  #push(b: Buffer): void {
    this.bytesRead += b.length;
    this.#touch();
    if (!this.push(b)) this.#channel.pauseFor(this);
  }

  override _read(): void {
    this.#channel.resumeFor(this);
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
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#channel.unregister(this.connId, this);
    cb(err);
  }
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
