/**
 * Layer 2: the edge handshakes on one channel: dialing a service (Connect) and binding one (Bind, then the
 * router's Dial for every incoming circuit).
 *
 * A connection is registered on the channel before its handshake completes (the peer's first Data can arrive in
 * the same socket read as the reply), so it can be closed before anyone holds it: the channel drops, the router
 * floods it while it connects, its crypto header cannot be sent. Such a connection is never handed out: the dial
 * rejects with the connection's typed error, and an accepted connection that died in the handshake is not
 * emitted. (Connections never throw an unhandled 'error' either; see conn.ts.)
 */
import { EventEmitter } from "node:events";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Channel } from "./channel.js";
import type { ConnSink } from "./channel-types.js";
import { ZitiConnection } from "./conn.js";
import type { XgInit } from "./xgress-circuit-types.js";
import {
  StreamDecryptor,
  StreamEncryptor,
  clientSessionKeys,
  generateKeyPair,
  initCrypto,
  serverSessionKeys,
  type KeyPair,
} from "./crypto.js";
import type { Message } from "./frame.js";
import { ConnType, ContentType, Header, Precedence, dec, enc, type Headers } from "./headers.js";

const log = debug("listener");

export interface DialParams {
  service: string;
  sessionToken: string;
  encrypt: boolean;
  callerId: string;
  terminatorIdentity?: string | undefined;
  /**
   * AppData for the hosting side; a function gets our key-exchange public key (undefined when not encrypting) and
   * may answer later (a signature computed off the event loop).
   */
  appData?:
    Buffer | ((ownPublicKey: Uint8Array | undefined) => Buffer | undefined | Promise<Buffer | undefined>) | undefined;
  timeoutMs: number;
  /** We announced a caller proof: the host's header Data may carry its hello (see E2eStream.peerHello). */
  acceptHello?: boolean | undefined;
}

/** Dials a service over an open channel; resolves once the circuit is up (and keys are exchanged). */
export async function dialOnChannel(channel: Channel, p: DialParams): Promise<ZitiConnection> {
  let keys: KeyPair | undefined;
  if (p.encrypt) {
    await initCrypto();
    keys = generateKeyPair();
  }
  // Before the connection is registered: nothing can arrive for it while this waits.
  const appData = typeof p.appData === "function" ? await p.appData(keys?.publicKey) : p.appData;
  const connId = channel.allocConnId();
  const conn = new ZitiConnection(channel, connId, { service: p.service, role: "dial" });
  // Register before sending: the host's first Data can arrive in the same read as StateConnected.
  conn.register();
  const headers: Headers = new Map([
    [Header.ConnId, enc.u32(connId)],
    [Header.CallerId, enc.str(p.callerId)],
  ]);
  if (keys) {
    headers.set(Header.PublicKey, Buffer.from(keys.publicKey));
    headers.set(Header.CryptoMethod, enc.u8(0));
  }
  if (p.terminatorIdentity) headers.set(Header.TerminatorIdentity, enc.str(p.terminatorIdentity));
  if (channel.sdkFlowControl) headers.set(Header.UseXgressToSdk, enc.bool(true));
  if (appData) headers.set(Header.AppData, appData);
  let reply: Message;
  try {
    reply = await channel.request(ContentType.Connect, headers, Buffer.from(p.sessionToken), p.timeoutMs);
    // Closed while we waited for the reply (e.g. the router sent too much before StateConnected).
    if (conn.destroyed) throw closedDuringDial(conn, p.service);
  } catch (err) {
    conn.destroy();
    const e = err as ZitiError;
    if (e.code === ErrorCodes.TIMEOUT) {
      throw new ZitiError(
        ErrorCodes.DIAL_TIMEOUT,
        `dial ${p.service}: no answer from the router within ${p.timeoutMs} ms`,
        {
          cause: err,
        },
      );
    }
    throw e;
  }
  if (reply.contentType !== ContentType.StateConnected) {
    conn.destroy();
    const reason = reply.body.toString() || `router answered ${reply.contentType}`;
    throw new ZitiError(ErrorCodes.DIAL_FAILED, `dial ${p.service} failed: ${reason}`);
  }
  conn.circuitId = dec.str(reply.headers, Header.CircuitId);
  // The router gives this connection SDK flow control when it answers with UseXgressToSdk (v1.6.0+ routers).
  if (dec.bool(reply.headers, Header.UseXgressToSdk) === true) {
    const xg = xgressInit(reply.headers, "initiator", conn.circuitId);
    if (typeof xg === "string") {
      conn.destroy();
      throw new ZitiError(ErrorCodes.FLOW_CONTROL, `dial ${p.service}: the router enabled SDK flow control but ${xg}`);
    }
    conn.useXgress(xg);
  }
  if (!keys) {
    conn.start();
    if (conn.destroyed) throw closedDuringDial(conn, p.service);
    return conn;
  }
  const peerKey = reply.headers.get(Header.PublicKey);
  if (!peerKey || peerKey.length !== 32) {
    conn.destroy();
    throw new ZitiError(
      ErrorCodes.CRYPTO_FAILED,
      `dial ${p.service}: the service requires end-to-end encryption but the hosting side sent no public key`,
    );
  }
  const k = clientSessionKeys(keys, peerKey);
  if (p.acceptHello) conn.setFirstMessages({ acceptHello: true });
  conn.start(new StreamEncryptor(k.tx), new StreamDecryptor(k.rx), { local: keys.publicKey, peer: peerKey });
  if (conn.destroyed) throw closedDuringDial(conn, p.service);
  return conn;
}

/** The xgress endpoint data of a StateConnected or Dial that announced SDK flow control, or what is missing. */
function xgressInit(h: Headers, originator: XgInit["originator"], circuitId: string | undefined): XgInit | string {
  const ctrlId = dec.str(h, Header.XgressCtrlId);
  const address = dec.str(h, Header.XgressAddress);
  if (!circuitId) return "sent no circuit id";
  if (ctrlId === undefined || address === undefined) return "sent no xgress controller id or address";
  return { originator, ctrlId, address };
}

function closedDuringDial(conn: ZitiConnection, service: string): ZitiError {
  const err = conn.errored;
  if (err instanceof ZitiError) return err;
  return new ZitiError(ErrorCodes.CONNECTION_CLOSED, `dial ${service}: the connection closed during the handshake`, {
    cause: err ?? undefined,
  });
}

export enum BindState {
  Binding = "binding",
  Bound = "bound",
  Closed = "closed",
}

const BIND_TRANSITIONS: Record<BindState, readonly BindState[]> = {
  [BindState.Binding]: [BindState.Bound, BindState.Closed],
  [BindState.Bound]: [BindState.Closed],
  [BindState.Closed]: [],
};

export interface BindParams {
  service: string;
  sessionToken: string;
  /** The listener's key pair when the service requires encryption. */
  keys?: KeyPair | undefined;
  terminatorIdentity?: string | undefined;
  cost?: number | undefined;
  precedence?: keyof typeof Precedence | undefined;
  listenerId: string;
  timeoutMs: number;
}

/**
 * One Bind on one router channel. Emits "accepting" (ZitiConnection, not started yet: its first messages can still
 * be set) and then "connection" (the same, started) for each incoming circuit,
 * "bound" when the router confirms the terminator, and "closed" (reason) when the bind ends.
 */
export class BindHandle extends EventEmitter implements ConnSink {
  readonly connType = ConnType.Bind;
  readonly channel: Channel;
  readonly connId: number;
  readonly #p: BindParams;
  readonly #sm: StateMachine<BindState>;

  constructor(channel: Channel, p: BindParams) {
    super();
    this.channel = channel;
    this.#p = p;
    this.connId = channel.allocConnId();
    this.#sm = new StateMachine(
      "listener",
      `${p.service}@${channel.url}#${this.connId}`,
      BindState.Binding,
      BIND_TRANSITIONS,
      log,
    );
  }

  get state(): BindState {
    return this.#sm.state;
  }

  async bind(): Promise<void> {
    this.channel.register(this.connId, this);
    const h: Headers = new Map([
      [Header.ConnId, enc.u32(this.connId)],
      [Header.SupportsInspect, enc.bool(true)],
      [Header.SupportsBindSuccess, enc.bool(true)],
      [Header.RouterProvidedConnId, enc.bool(true)],
      [Header.ListenerId, enc.str(this.#p.listenerId)],
    ]);
    if (this.channel.sdkFlowControl) h.set(Header.UseXgressToSdk, enc.bool(true));
    if (this.#p.keys) {
      h.set(Header.PublicKey, Buffer.from(this.#p.keys.publicKey));
      h.set(Header.CryptoMethod, enc.u8(0));
    }
    if (this.#p.terminatorIdentity) h.set(Header.TerminatorIdentity, enc.str(this.#p.terminatorIdentity));
    if (this.#p.cost) h.set(Header.Cost, enc.u16(this.#p.cost));
    if (this.#p.precedence && this.#p.precedence !== "default")
      h.set(Header.Precedence, enc.u8(Precedence[this.#p.precedence]));
    let reply: Message;
    try {
      reply = await this.channel.request(ContentType.Bind, h, Buffer.from(this.#p.sessionToken), this.#p.timeoutMs);
    } catch (err) {
      this.#end(`bind request failed: ${(err as Error).message}`, false);
      throw new ZitiError(ErrorCodes.BIND_FAILED, `bind ${this.#p.service}: ${(err as Error).message}`, { cause: err });
    }
    if (reply.contentType !== ContentType.StateConnected) {
      const reason = reply.body.toString() || `router answered ${reply.contentType}`;
      this.#end(reason, false);
      throw new ZitiError(
        ErrorCodes.BIND_FAILED,
        `bind ${this.#p.service} refused by router ${this.channel.routerId}: ${reason}`,
      );
    }
    // Terminator creation is asynchronous; BindSuccess confirms it, and until then dials find no terminator.
    // Routers that do not announce SupportsBindSuccess never send it: the bind counts as established now.
    if (!this.channel.supportsBindSuccess) {
      if (this.#sm.to(BindState.Bound, "router does not confirm terminators")) this.emit("bound");
      return;
    }
    if (this.#sm.is(BindState.Bound)) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new ZitiError(
            ErrorCodes.BIND_FAILED,
            `bind ${this.#p.service}: the router did not confirm the terminator within ${this.#p.timeoutMs} ms`,
          ),
        );
      }, this.#p.timeoutMs);
      const onBound = () => {
        cleanup();
        resolve();
      };
      const onClosed = (reason: string) => {
        cleanup();
        reject(
          new ZitiError(
            ErrorCodes.BIND_FAILED,
            `bind ${this.#p.service} ended before the terminator existed: ${reason}`,
          ),
        );
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off("bound", onBound);
        this.off("closed", onClosed);
      };
      this.on("bound", onBound);
      this.on("closed", onClosed);
    });
  }

  handle(m: Message): void {
    switch (m.contentType) {
      case ContentType.BindSuccess:
        if (this.#sm.is(BindState.Binding) && this.#sm.to(BindState.Bound, `terminator on ${this.channel.routerId}`))
          this.emit("bound");
        return;
      case ContentType.Dial:
        this.#onDial(m);
        return;
      case ContentType.StateClosed:
        this.#end(m.body.toString() || "closed by router", false);
        return;
      default:
        log("bind %d: ignoring %d", this.connId, m.contentType);
    }
  }

  #onDial(m: Message): void {
    const failed = (reason: string) => {
      this.channel.reply(
        m,
        ContentType.DialFailed,
        new Map([[Header.ConnId, enc.u32(this.connId)]]),
        Buffer.from(reason),
      );
    };
    if (m.body.toString() !== this.#p.sessionToken) return failed("invalid token");
    const newId = dec.u32(m.headers, Header.RouterProvidedConnId);
    if (newId === undefined) return failed("router provided no connection id");
    // A router-chosen id that is taken must never replace the live connection (or bind) registered under it.
    if (this.channel.hasConn(newId)) {
      log("bind %d: refusing a dial for connection id %d: in use", this.connId, newId);
      return failed("connection id in use");
    }
    let encryptor: StreamEncryptor | undefined;
    let decryptor: StreamDecryptor | undefined;
    if (this.#p.keys) {
      const peerKey = m.headers.get(Header.PublicKey);
      if (!peerKey || peerKey.length !== 32) return failed("end-to-end encryption required but the dialer sent no key");
      const k = serverSessionKeys(this.#p.keys, peerKey);
      encryptor = new StreamEncryptor(k.tx);
      decryptor = new StreamDecryptor(k.rx);
    }
    let xg: XgInit | undefined;
    if (dec.bool(m.headers, Header.UseXgressToSdk) === true) {
      const r = xgressInit(m.headers, "terminator", dec.str(m.headers, Header.CircuitId));
      if (typeof r === "string") {
        log("bind %d: refusing a dial with SDK flow control: the router %s", this.connId, r);
        return failed(`SDK flow control requested but the router ${r}`);
      }
      xg = r;
    }
    const callerId = dec.str(m.headers, Header.DialerIdentityName) || dec.str(m.headers, Header.CallerId) || undefined;
    const conn = new ZitiConnection(this.channel, newId, {
      service: this.#p.service,
      callerId,
      circuitId: dec.str(m.headers, Header.CircuitId),
      role: "accepted",
      peerPublicKey: m.headers.get(Header.PublicKey),
      appData: m.headers.get(Header.AppData),
      dialerIdentityName: dec.str(m.headers, Header.DialerIdentityName) || undefined,
    });
    if (xg) conn.useXgress(xg);
    try {
      conn.register();
      const body = Buffer.allocUnsafe(4);
      body.writeUInt32LE(newId);
      this.channel.reply(m, ContentType.DialSuccess, new Map([[Header.ConnId, enc.u32(this.connId)]]), body);
    } catch (err) {
      // The channel went away under us: the connection was never anyone's; close it quietly.
      conn.destroy();
      log("bind %d: accepting connection %d failed: %s", this.connId, newId, (err as Error).message);
      return;
    }
    // Before start(): the API layer may arm the first-message exchange of a caller proof (setFirstMessages).
    this.emit("accepting", conn);
    const peerKey = m.headers.get(Header.PublicKey);
    conn.start(
      encryptor,
      decryptor,
      this.#p.keys && peerKey ? { local: this.#p.keys.publicKey, peer: peerKey } : undefined,
    );
    if (conn.destroyed) return;
    this.emit("connection", conn);
  }

  inspect(): string {
    return `bind ${this.connId} service=${this.#p.service} state=${this.#sm.state}`;
  }

  channelClosed(err: ZitiError): void {
    this.#end(err.message, false);
  }

  /** Unbinds (Unbind + StateClosed); accepted connections stay open. */
  close(): void {
    this.#end("closed locally", true);
  }

  #end(reason: string, tellRouter: boolean): void {
    if (!this.#sm.to(BindState.Closed, reason)) return;
    if (tellRouter && this.channel.isOpen) {
      try {
        const h = () => new Map([[Header.ConnId, enc.u32(this.connId)]]);
        this.channel.send(ContentType.Unbind, h(), Buffer.from(this.#p.sessionToken));
        this.channel.send(ContentType.StateClosed, h());
      } catch {
        /* channel closing: nothing to tell */
      }
    }
    this.channel.unregister(this.connId, this);
    this.emit("closed", reason);
  }
}
