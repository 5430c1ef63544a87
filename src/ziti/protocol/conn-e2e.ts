/**
 * Layer 2: a connection's end-to-end stream (crypto.ts: secretstream over crypto_kx keys) and the first-message
 * exchange of a scrapez caller proof (api/caller-handshake.ts). Our 24-byte stream header is the first Data we
 * send (a host may add an encrypted hello to it); the peer's header is the first Data we receive (a dialer that
 * announced a proof accepts a hello after it); a host may keep the peer's first decrypted message (the proof) from
 * the reader. The connection (conn.ts) hands each inbound Data body to `open` and each outbound slice to `seal`.
 */
import { ErrorCodes, ZitiError } from "../errors.js";
import type { StreamDecryptor, StreamEncryptor } from "./crypto.js";
import type { Body } from "./frame.js";

const HEADER_BYTES = 24;

/** The first messages of a scrapez caller-proof exchange (api/caller-handshake.ts); all need encryption. */
export interface FirstMessages {
  /** Host: sent encrypted in the same Data as our stream header. */
  hello?: Buffer | undefined;
  /** Dialer: the peer's header Data may carry an encrypted hello after the 24 header bytes (see peerHello). */
  acceptHello?: boolean | undefined;
  /** Host: the peer's first decrypted message is kept from the reader, for firstMessage(). */
  capture?: boolean | undefined;
}

export class E2eStream {
  readonly #service: string;
  readonly #connId: number;
  #first: FirstMessages = {};
  #encryptor: StreamEncryptor | undefined;
  #decryptor: StreamDecryptor | undefined;
  #headerReceived = false;
  #peerHeader: Buffer | undefined;
  #peerHello: Buffer | undefined;
  #headerWaiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  #captured: { done: boolean; value: Buffer | undefined; waiters: ((b: Buffer | undefined) => void)[] } | undefined;
  /** The key-exchange public keys, ours and the peer's (what a caller proof binds). */
  keys: { local: Buffer; peer: Buffer } | undefined;

  /** The connection's service and id name it in error messages. */
  constructor(service: string, connId: number) {
    this.#service = service;
    this.#connId = connId;
  }

  /** Set before start(), while connecting. */
  setFirstMessages(first: FirstMessages): void {
    this.#first = { ...first };
  }

  /**
   * The handshake is done: the stream's ciphers (none on a plaintext connection). Returns what goes out first: our
   * stream header, with a host's hello encrypted after it.
   */
  start(
    encryptor?: StreamEncryptor,
    decryptor?: StreamDecryptor,
    keys?: { local: Uint8Array; peer: Uint8Array },
  ): Buffer | undefined {
    this.#encryptor = encryptor;
    this.#decryptor = decryptor;
    if (encryptor && decryptor && keys) this.keys = { local: Buffer.from(keys.local), peer: Buffer.from(keys.peer) };
    // The first-message exchange needs end-to-end encryption: without it there is nothing to bind or hide.
    if (!encryptor || !decryptor) this.#first = {};
    if (this.#first.capture) this.#captured = { done: false, value: undefined, waiters: [] };
    // A scrapez host answers a dialer that announced a caller proof with a hello in its header's Data (one
    // message, so the dialer tells a scrapez host from a Go or C host by the host's first message alone).
    if (!encryptor) return undefined;
    return this.#first.hello
      ? Buffer.concat([encryptor.header, encryptor.encrypt(this.#first.hello)])
      : Buffer.from(encryptor.header);
  }

  get encrypted(): boolean {
    return this.#encryptor !== undefined;
  }

  get localHeader(): Buffer | undefined {
    return this.#encryptor?.header;
  }

  get peerHeader(): Buffer | undefined {
    return this.#peerHeader;
  }

  get peerHello(): Buffer | undefined {
    return this.#peerHello;
  }

  /** The peer's FINAL message arrived. */
  get finalReceived(): boolean {
    return this.#decryptor?.final === true;
  }

  /** Encrypted, and the peer's FINAL has not arrived: a FIN now would cut its stream short. */
  get finalMissing(): boolean {
    return this.#decryptor !== undefined && !this.#decryptor.final;
  }

  /**
   * One outbound message, given as consecutive pieces of what was written: encrypted into consecutive pieces (the
   * cipher's own output, which nothing else holds; the frame joins them), or on a plaintext connection copied into
   * a Buffer of its own. A payload is kept for retransmission until acknowledged, past the write's callback, after
   * which a writer may reuse its buffer.
   */
  seal(pieces: readonly Buffer[]): Body {
    return this.#encryptor ? this.#encryptor.encryptParts(pieces) : Buffer.concat(pieces);
  }

  /** Our FINAL message (encrypted streams), which proves to the peer that our stream ended here. */
  final(): Buffer | undefined {
    return this.#encryptor ? this.#encryptor.final() : undefined;
  }

  /**
   * One inbound Data body: the plaintext for the reader, or undefined (the peer's header, or the captured first
   * message). Throws a ZitiError (CRYPTO_FAILED) on a bad header, a FINAL-tagged hello or data after FINAL.
   */
  open(body: Buffer): Buffer | undefined {
    const d = this.#decryptor;
    if (!d) return body;
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
          `conn ${this.#connId} (${this.#service}): expected a ${HEADER_BYTES}-byte crypto header, got ${body.length} bytes`,
        );
      }
      d.init(body);
      this.#headerReceived = true;
      this.#peerHeader = Buffer.from(body);
      if (hello) {
        this.#peerHello = d.decrypt(hello);
        if (d.final) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "a FINAL-tagged hello");
      }
      for (const w of this.#headerWaiters.splice(0)) w.resolve();
      return undefined;
    }
    if (d.final) {
      throw new ZitiError(
        ErrorCodes.CRYPTO_FAILED,
        `conn ${this.#connId} (${this.#service}): data after the peer's FINAL message (its stream had ended)`,
      );
    }
    const plain = d.decrypt(body);
    // The first message of a dialer that announced a caller proof is the proof: not the reader's.
    if (this.#captured && !this.#captured.done) {
      this.#capture(plain);
      return undefined;
    }
    return plain;
  }

  /** Resolves once the peer's stream header arrived; rejects if the connection ends first (`ended`: it has). */
  whenPeerHeader(ended: boolean): Promise<void> {
    if (this.#peerHeader) return Promise.resolve();
    if (ended) return Promise.reject(this.#noHeaderError());
    return new Promise((resolve, reject) => this.#headerWaiters.push({ resolve, reject }));
  }

  /** With `capture`: the peer's first decrypted message (undefined if none came). Without: undefined at once. */
  firstMessage(): Promise<Buffer | undefined> {
    const c = this.#captured;
    if (!c || c.done) return Promise.resolve(c?.value);
    return new Promise((resolve) => c.waiters.push(resolve));
  }

  /** Ends the first-message waits: the stream ended or the connection closed (with `err`, if it failed). */
  settle(err?: Error | null): void {
    const waiters = this.#headerWaiters.splice(0);
    const why = err instanceof ZitiError ? err : this.#noHeaderError();
    if (waiters.length > 0 && !this.#peerHeader) for (const w of waiters) w.reject(why);
    this.#capture(undefined);
  }

  #noHeaderError(): ZitiError {
    return new ZitiError(
      ErrorCodes.CONNECTION_CLOSED,
      `${this.#service} connection ${this.#connId}: closed before the peer's end-to-end stream header arrived`,
    );
  }

  #capture(value: Buffer | undefined): void {
    const c = this.#captured;
    if (!c || c.done) return;
    c.done = true;
    c.value = value;
    for (const w of c.waiters.splice(0)) w(value);
  }
}
