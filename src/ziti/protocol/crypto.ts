/**
 * End-to-end encryption for virtual connections, interoperable with the Go and C SDKs:
 * crypto_kx key exchange (dialer = client, host = server) via libsodium-wrappers (pure JS + WebAssembly: no native
 * addon, nothing downloaded at install), once per connection; and crypto_secretstream_xchacha20poly1305 per
 * message on Node's native ChaCha20-Poly1305 (secretstream.ts: byte-identical to libsodium's, without its
 * WebAssembly and the copies in and out of its memory).
 */
import { randomBytes } from "node:crypto";
import sodium from "libsodium-wrappers";
import { ErrorCodes, ZitiError } from "../errors.js";
import { HEADERBYTES, KEYBYTES, SecretStream, TAG_FINAL, TAG_MESSAGE } from "./secretstream.js";

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

function checkKey(key: Uint8Array): void {
  if (key.length !== KEYBYTES) {
    throw new ZitiError(ErrorCodes.CRYPTO_FAILED, `stream key must be ${KEYBYTES} bytes, got ${key.length}`);
  }
}

export class StreamEncryptor {
  /** 24 bytes, sent unencrypted as the whole body of the first Data message. */
  readonly header: Buffer;
  readonly #state: SecretStream;

  constructor(txKey: Uint8Array) {
    assertReady();
    checkKey(txKey);
    this.header = randomBytes(HEADERBYTES);
    this.#state = SecretStream.fromHeader(txKey, this.header);
  }

  #ended = false;

  /** One message (tag MESSAGE): a new Buffer, 17 bytes longer than `plain`, that nothing else holds. */
  encrypt(plain: Uint8Array): Buffer {
    return this.#push(plain, TAG_MESSAGE);
  }

  /**
   * One message (tag MESSAGE) given in consecutive pieces, encrypted into consecutive pieces (17 bytes more in all)
   * that nothing else holds: the same bytes as `encrypt` of the whole, never joined here (SecretStream.pushParts).
   */
  encryptParts(plain: readonly Uint8Array[]): Buffer[] {
    if (this.#ended) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "encrypting after the stream's FINAL message");
    return this.#state.pushParts(plain, TAG_MESSAGE);
  }

  /**
   * The last message of the stream: no plaintext, tag FINAL. It tells the receiver the stream ended here rather
   * than being cut short. Nothing may be encrypted after it (libsodium re-keys; Go's decryptor would not).
   */
  final(): Buffer {
    const c = this.#push(new Uint8Array(0), TAG_FINAL);
    this.#ended = true;
    return c;
  }

  #push(plain: Uint8Array, tag: number): Buffer {
    if (this.#ended) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "encrypting after the stream's FINAL message");
    return this.#state.push(plain, tag);
  }
}

export class StreamDecryptor {
  readonly #key: Uint8Array;
  #state: SecretStream | undefined;
  /** True once a TAG_FINAL message was seen. */
  final = false;

  constructor(rxKey: Uint8Array) {
    assertReady();
    checkKey(rxKey);
    this.#key = rxKey;
  }

  get initialized(): boolean {
    return this.#state !== undefined;
  }

  init(header: Uint8Array): void {
    if (header.length !== HEADERBYTES) {
      throw new ZitiError(ErrorCodes.CRYPTO_FAILED, `crypto header must be 24 bytes, got ${header.length}`);
    }
    try {
      this.#state = SecretStream.fromHeader(this.#key, header);
    } catch (err) {
      throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "invalid crypto header", { cause: err });
    }
  }

  /** The next message's plaintext (a new Buffer); throws ZITI_CRYPTO_FAILED if it does not authenticate. */
  decrypt(cipher: Uint8Array): Buffer {
    if (!this.#state) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "data arrived before the peer's crypto header");
    let r: ReturnType<SecretStream["pull"]>;
    try {
      r = this.#state.pull(cipher);
    } catch (err) {
      // Not expected (a message that does not authenticate is `undefined`), but a peer's bytes must never make the
      // SDK throw anything but its own error.
      throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "decryption failed: message forged or corrupted", { cause: err });
    }
    if (!r) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, "decryption failed: message forged or corrupted");
    if (r.tag === TAG_FINAL) this.final = true;
    return r.message;
  }
}
