/**
 * End-to-end encryption for virtual connections, interoperable with the Go and C SDKs:
 * crypto_kx key exchange (dialer = client, host = server) and crypto_secretstream_xchacha20poly1305,
 * via libsodium-wrappers (pure JS + WebAssembly: no native addon, nothing downloaded at install).
 */
import sodium, { type StateAddress } from "libsodium-wrappers";
import { ErrorCodes, ZitiError } from "../errors.js";

export interface KeyPair {
  publicKey: Uint8Array;
  privateKey: Uint8Array;
}

export interface SessionKeys {
  rx: Uint8Array;
  tx: Uint8Array;
}

let ready = false;
export async function initCrypto(): Promise<void> {
  if (ready) return;
  await sodium.ready;
  ready = true;
}

function assertReady(): void {
  if (!ready) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "crypto used before initCrypto() completed");
}

export function generateKeyPair(): KeyPair {
  assertReady();
  const kp = sodium.crypto_kx_keypair();
  return { publicKey: kp.publicKey, privateKey: kp.privateKey };
}

function kx(fn: () => { sharedRx: Uint8Array; sharedTx: Uint8Array }): SessionKeys {
  assertReady();
  try {
    const k = fn();
    return { rx: k.sharedRx, tx: k.sharedTx };
  } catch (err) {
    throw new ZitiError(ErrorCodes.CRYPTO_FAILED, `key exchange failed: ${(err as Error).message}`, { cause: err });
  }
}

/** Session keys for the dialing side. */
export function clientSessionKeys(own: KeyPair, serverPk: Uint8Array): SessionKeys {
  return kx(() => sodium.crypto_kx_client_session_keys(own.publicKey, own.privateKey, serverPk));
}

/** Session keys for the hosting side. */
export function serverSessionKeys(own: KeyPair, clientPk: Uint8Array): SessionKeys {
  return kx(() => sodium.crypto_kx_server_session_keys(own.publicKey, own.privateKey, clientPk));
}

export class StreamEncryptor {
  /** 24 bytes, sent unencrypted as the whole body of the first Data message. */
  readonly header: Buffer;
  readonly #state: StateAddress;

  constructor(txKey: Uint8Array) {
    assertReady();
    const r = sodium.crypto_secretstream_xchacha20poly1305_init_push(txKey);
    this.#state = r.state;
    this.header = Buffer.from(r.header.buffer, r.header.byteOffset, r.header.byteLength);
  }

  #ended = false;

  encrypt(plain: Uint8Array): Buffer {
    return this.#push(plain, sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
  }

  /**
   * The last message of the stream: no plaintext, tag FINAL. It tells the receiver the stream ended here rather
   * than being cut short. Nothing may be encrypted after it (libsodium re-keys; Go's decryptor would not).
   */
  final(): Buffer {
    const c = this.#push(new Uint8Array(0), sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL);
    this.#ended = true;
    return c;
  }

  #push(plain: Uint8Array, tag: number): Buffer {
    if (this.#ended) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "encrypting after the stream's FINAL message");
    const c = sodium.crypto_secretstream_xchacha20poly1305_push(this.#state, plain, null, tag);
    return Buffer.from(c.buffer, c.byteOffset, c.byteLength);
  }
}

export class StreamDecryptor {
  readonly #key: Uint8Array;
  #state: StateAddress | undefined;
  /** True once a TAG_FINAL message was seen. */
  final = false;

  constructor(rxKey: Uint8Array) {
    assertReady();
    this.#key = rxKey;
  }

  get initialized(): boolean {
    return this.#state !== undefined;
  }

  init(header: Uint8Array): void {
    if (header.length !== sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES) {
      throw new ZitiError(ErrorCodes.CRYPTO_FAILED, `crypto header must be 24 bytes, got ${header.length}`);
    }
    try {
      this.#state = sodium.crypto_secretstream_xchacha20poly1305_init_pull(header, this.#key);
    } catch (err) {
      throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "invalid crypto header", { cause: err });
    }
  }

  decrypt(cipher: Uint8Array): Buffer {
    if (!this.#state) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "data arrived before the peer's crypto header");
    let r: { message: Uint8Array; tag: number } | false;
    try {
      r = sodium.crypto_secretstream_xchacha20poly1305_pull(this.#state, cipher, null);
    } catch (err) {
      throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "decryption failed: message forged or corrupted", { cause: err });
    }
    if (!r) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "decryption failed: message forged or corrupted");
    if (r.tag === sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL) this.final = true;
    return Buffer.from(r.message.buffer, r.message.byteOffset, r.message.byteLength);
  }
}
