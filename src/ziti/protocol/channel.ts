/**
 * Layer 2: one channel to an edge router. Owns the byte stream (TLS socket), the frame codec, the sequence
 * counter, reply correlation, latency probes and the table of virtual connections multiplexed over it.
 *
 * Flow control, inbound: the socket is never paused for one connection. It keeps being read for every
 * connection and for the latency probes; a connection whose reader lags buffers what arrives, up to its own
 * bound (`maxConnBufferedBytes`), and over it that connection alone is closed with ZITI_READER_TOO_SLOW
 * (see conn.ts for why, and what the bound means). Connections whose unread data passed their stream's
 * high-water mark report themselves as lagging (`noteLagging`/`caughtUp`); their total is capped per channel
 * (`maxChannelBufferedBytes`), and over the cap the largest laggard is closed first.
 * Outbound: `send` returns the socket's write() result and `whenWritable()` resolves on 'drain'.
 *
 * The byte stream is a TLS socket to the router by default; `connect` replaces it (tests use a scripted fake
 * router over loopback TCP: test/harness/fake-router.ts).
 *
 * What it is opened with and what it carries (ConnSink, LaggingReader, the default bounds) are channel-types.ts; how
 * it writes (batching, counters) and paces its circuits' resends (RETX_BURST) is channel-writer.ts.
 */
import { EventEmitter } from "node:events";
import type { Duplex } from "node:stream";
import { debug } from "../debug.js";
import { ErrorCodes, ProtocolError, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import { connectTls, parseRouterUrl } from "../transport/tls.js";
import {
  CHANNEL_TRANSITIONS,
  ChannelState,
  DEFAULT_MAX_CHANNEL_BUFFERED_BYTES,
  DEFAULT_MAX_CONN_BUFFERED_BYTES,
  type ChannelOptions,
  type ConnSink,
  type LaggingReader,
} from "./channel-types.js";
import { FrameDecoder, encodeMessage, type Body, type Message, type OutgoingMessage } from "./frame.js";
import { ConnType, ContentType, Header, contentTypeName, dec, enc, type Headers } from "./headers.js";
import { FrameWriter, ResendLimiter, WRITE_BATCH_DEFAULT } from "./channel-writer.js";
import { wireStats } from "./wire-stats.js";

const log = debug("channel");

interface Waiter {
  resolve(m: Message): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

let channelCounter = 0;
const MAX_SDK_CONN_ID = 0x7ffffffe;

export class Channel extends EventEmitter {
  readonly url: string;
  readonly id: string;
  routerId = "";
  routerVersion = "";
  /** The router confirms terminators with BindSuccess (it announced SupportsBindSuccess in its hello). */
  supportsBindSuccess = false;
  readonly #sm: StateMachine<ChannelState>;
  readonly #opts: Required<Omit<ChannelOptions, "credentials" | "sessionToken" | "identityName" | "connect">> &
    ChannelOptions;
  #socket: Duplex | undefined;
  readonly #decoder: FrameDecoder;
  #seq = 0;
  #nextConnId = 1;
  readonly #waiters = new Map<number, Waiter>();
  readonly #sinks = new Map<number, ConnSink>();
  readonly #lagging = new Set<LaggingReader>();
  #latencyTimer: NodeJS.Timeout | undefined;
  #drained: Promise<void> | undefined;
  #lastRead = Date.now();
  #closeError: ZitiError | undefined;
  #openedAt = 0;
  readonly #resends = new ResendLimiter();
  readonly #writer: FrameWriter;
  #lastLatencyMs: number | undefined;
  /** Messages received after the hello; a close with none suggests the router rejected our API session. */
  messagesAfterHello = 0;

  private constructor(url: string, opts: ChannelOptions) {
    super();
    this.url = url;
    this.id = `ch${++channelCounter}(${url})`;
    this.#opts = {
      connectTimeoutMs: 15_000,
      helloTimeoutMs: 5_000,
      requestTimeoutMs: 15_000,
      latencyIntervalMs: 30_000,
      latencyTimeoutMs: 10_000,
      maxFrameBytes: 4 * 1024 * 1024,
      maxConnBufferedBytes: DEFAULT_MAX_CONN_BUFFERED_BYTES,
      maxChannelBufferedBytes: DEFAULT_MAX_CHANNEL_BUFFERED_BYTES,
      sdkFlowControl: true,
      writeBatch: WRITE_BATCH_DEFAULT,
      ...opts,
    };
    this.#writer = new FrameWriter(this.#opts.writeBatch);
    this.#decoder = new FrameDecoder({ maxFrameBytes: this.#opts.maxFrameBytes });
    this.#sm = new StateMachine("channel", this.id, ChannelState.Connecting, CHANNEL_TRANSITIONS, log);
  }

  /** Opens a channel to `url` (TLS unless `opts.connect` is given) and completes the hello. */
  static async open(url: string, opts: ChannelOptions): Promise<Channel> {
    const ch = new Channel(url, opts);
    await ch.#start();
    return ch;
  }

  get state(): ChannelState {
    return this.#sm.state;
  }

  get isOpen(): boolean {
    return this.#sm.is(ChannelState.Open);
  }

  /** How many retransmissions this channel's circuits may send now (RETX_BURST); spend them with retransmitted(). */
  retransmitAllowance(now = Date.now()): number {
    return this.#resends.allowance(now);
  }

  retransmitted(n: number): void {
    this.#resends.spent(n);
  }

  get openedAt(): number {
    return this.#openedAt;
  }

  /**
   * The round trip of the last answered latency probe in ms (the hello's round trip until the first probe is
   * answered); undefined before the hello completes. Read-only, for status displays.
   */
  get lastLatencyMs(): number | undefined {
    return this.#lastLatencyMs;
  }

  get connectionCount(): number {
    return this.#sinks.size;
  }

  /** Default bound on one connection's unread data (each connection may set its own). */
  get maxConnBufferedBytes(): number {
    return this.#opts.maxConnBufferedBytes;
  }

  /** Connects and binds on this channel ask for SDK flow control. */
  get sdkFlowControl(): boolean {
    return this.#opts.sdkFlowControl;
  }

  get maxChannelBufferedBytes(): number {
    return this.#opts.maxChannelBufferedBytes;
  }

  /** Unread bytes held by the connections that lag behind right now. */
  get laggingBytes(): number {
    let total = 0;
    for (const r of this.#lagging) total += r.bufferedBytes;
    return total;
  }

  /** True when a connection or bind is registered under `connId`. */
  hasConn(connId: number): boolean {
    return this.#sinks.has(connId);
  }

  async #start(): Promise<void> {
    const socket = this.#opts.connect
      ? await this.#opts.connect()
      : await connectTls(parseRouterUrl(this.url), this.#opts.credentials, this.#opts.connectTimeoutMs);
    this.#socket = socket;
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("error", (err) =>
      this.#fail(new ZitiError(ErrorCodes.CHANNEL_CLOSED, `${this.id}: ${err.message}`, { cause: err })),
    );
    socket.on("close", () =>
      this.#fail(new ZitiError(ErrorCodes.CHANNEL_CLOSED, `${this.id}: connection closed by the router`)),
    );
    this.#sm.to(ChannelState.Hello);
    const hello: Message = {
      contentType: ContentType.Hello,
      sequence: -1,
      headers: new Map([[1002, enc.str(this.#opts.sessionToken)]]),
      body: enc.str(this.#opts.identityName),
    };
    const helloAt = performance.now();
    const reply = await this.#awaitReply(-1, this.#opts.helloTimeoutMs, () => this.#write(hello));
    this.#lastLatencyMs = performance.now() - helloAt;
    if (dec.bool(reply.headers, Header.ResultSuccess) !== true) {
      const err = new ZitiError(
        ErrorCodes.CHANNEL_CLOSED,
        `${this.id}: hello rejected: ${reply.body.toString() || "no reason given"}`,
      );
      this.#fail(err);
      throw err;
    }
    this.routerId = dec.str(reply.headers, Header.Id) ?? "";
    this.routerVersion = dec.str(reply.headers, Header.HelloVersion) ?? "";
    this.supportsBindSuccess = dec.bool(reply.headers, Header.SupportsBindSuccess) === true;
    this.#openedAt = Date.now();
    this.#sm.to(ChannelState.Open, `router ${this.routerId} ${this.routerVersion.split("|")[0] ?? ""}`);
    this.#scheduleLatency();
  }

  nextSequence(): number {
    this.#seq = this.#seq >= 0x7fffffff ? 1 : this.#seq + 1;
    return this.#seq;
  }

  /** Allocates a free SDK-side connection id. */
  allocConnId(): number {
    for (let i = 0; i < 1000; i++) {
      const id = this.#nextConnId;
      this.#nextConnId = id >= MAX_SDK_CONN_ID ? 1 : id + 1;
      if (!this.#sinks.has(id)) return id;
    }
    throw new ZitiError(ErrorCodes.PROTOCOL_ERROR, `${this.id}: no free connection ids`);
  }

  /** Registers `sink` under `connId`. An id already in use is refused: a live connection is never replaced. */
  register(connId: number, sink: ConnSink): void {
    if (!this.isOpen) throw this.#closedError();
    const current = this.#sinks.get(connId);
    if (current && current !== sink) {
      throw new ZitiError(ErrorCodes.PROTOCOL_ERROR, `${this.id}: connection id ${connId} is already in use`);
    }
    this.#sinks.set(connId, sink);
  }

  unregister(connId: number, sink: ConnSink): void {
    if (this.#sinks.get(connId) === sink) this.#sinks.delete(connId);
  }

  /** Sends a message; returns false when the socket's buffer is full (wait for whenWritable()). */
  send(contentType: number, headers: Headers, body: Body = Buffer.alloc(0), sequence = this.nextSequence()): boolean {
    if (!this.isOpen) throw this.#closedError();
    return this.#write({ contentType, sequence, headers, body });
  }

  /** Sends a reply to `to` (ReplyFor header, reflected headers copied). */
  reply(to: Message, contentType: number, headers: Headers, body: Buffer = Buffer.alloc(0)): boolean {
    headers.set(Header.ReplyFor, enc.i32(to.sequence));
    for (const [k, v] of to.headers) if (k >= 128 && k <= 255 && !headers.has(k)) headers.set(k, v);
    return this.send(contentType, headers, body);
  }

  /** Sends a request and waits for the message that carries ReplyFor = its sequence. */
  request(
    contentType: number,
    headers: Headers,
    body: Buffer,
    timeoutMs = this.#opts.requestTimeoutMs,
  ): Promise<Message> {
    if (!this.isOpen) return Promise.reject(this.#closedError());
    const sequence = this.nextSequence();
    return this.#awaitReply(sequence, timeoutMs, () => this.#write({ contentType, sequence, headers, body }));
  }

  /** Resolves once the socket drains (or the channel closes). All waiting writers share one promise. */
  whenWritable(): Promise<void> {
    const s = this.#socket;
    if (!s || !s.writableNeedDrain || !this.isOpen) return Promise.resolve();
    this.#drained ??= new Promise<void>((resolve) => {
      const done = () => {
        s.off("drain", done);
        this.off("closed", done);
        this.#drained = undefined;
        resolve();
      };
      s.on("drain", done);
      this.on("closed", done);
    });
    return this.#drained;
  }

  /**
   * A connection's unread data passed its stream's high-water mark. The socket keeps reading; if the lagging
   * connections of this channel now hold more than the channel's cap together, the largest is closed first.
   */
  noteLagging(r: LaggingReader): void {
    this.#lagging.add(r);
    const cap = this.#opts.maxChannelBufferedBytes;
    let total = this.laggingBytes;
    while (total > cap && this.#lagging.size > 0) {
      let largest: LaggingReader | undefined;
      for (const x of this.#lagging) if (!largest || x.bufferedBytes > largest.bufferedBytes) largest = x;
      const held = largest!.bufferedBytes;
      this.#lagging.delete(largest!);
      log(
        "%s: lagging connections hold %d bytes, over the cap of %d: closing the largest (%d)",
        this.id,
        total,
        cap,
        held,
      );
      largest!.shedForChannel(total, cap);
      total -= held;
    }
  }

  /** The connection's reader caught up (or the connection ended): it no longer counts toward the cap. */
  caughtUp(r: LaggingReader): void {
    this.#lagging.delete(r);
  }

  /**
   * OIDC: hands the router a fresh access token for this channel's API session (UpdateToken, 60803; the router
   * answers UpdateTokenSuccess 60801 or UpdateTokenFailure 60802 with the reason as body, see
   * router/xgress_edge/listener.go@v1.6.3 processTokenUpdate). The router checks the token's signature and
   * keeps it as the channel's API session; new circuits are created with it. Rejects with ZITI_AUTH_FAILED on a
   * failure answer (the caller should close the channel), ZITI_TIMEOUT or ZITI_CHANNEL_CLOSED otherwise.
   * The token is never logged.
   */
  async updateToken(token: string, timeoutMs = this.#opts.requestTimeoutMs): Promise<void> {
    const reply = await this.request(ContentType.UpdateToken, new Map(), Buffer.from(token, "utf8"), timeoutMs);
    if (reply.contentType === ContentType.UpdateTokenSuccess) return;
    const why = reply.contentType === ContentType.UpdateTokenFailure ? reply.body.toString("utf8").slice(0, 300) : "";
    throw new ZitiError(
      ErrorCodes.AUTH_FAILED,
      `${this.id}: the router refused the new access token (${why || contentTypeName(reply.contentType)})`,
    );
  }

  /** Closes the channel and every connection on it. Idempotent. */
  close(reason = "closed locally"): void {
    this.#fail(new ZitiError(ErrorCodes.CHANNEL_CLOSED, `${this.id}: ${reason}`));
  }

  #closedError(): ZitiError {
    return this.#closeError ?? new ZitiError(ErrorCodes.CHANNEL_CLOSED, `${this.id} is not open`);
  }

  #write(m: OutgoingMessage): boolean {
    const s = this.#socket;
    if (!s || s.destroyed) throw this.#closedError();
    return this.#writer.write(s, encodeMessage(m));
  }

  #awaitReply(sequence: number, timeoutMs: number, send: () => void): Promise<Message> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(sequence);
        reject(new ZitiError(ErrorCodes.TIMEOUT, `${this.id}: no reply to message ${sequence} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.set(sequence, { resolve, reject, timer });
      try {
        send();
      } catch (err) {
        clearTimeout(timer);
        this.#waiters.delete(sequence);
        reject(err as Error);
      }
    });
  }

  #onData(chunk: Buffer): void {
    this.#lastRead = Date.now();
    wireStats.socketReads++;
    wireStats.bytesReceived += chunk.length;
    let messages: Message[];
    try {
      messages = this.#decoder.push(chunk);
    } catch (err) {
      const pe = err instanceof ZitiError ? err : new ProtocolError(String(err));
      log("%s: protocol error: %s", this.id, pe.message);
      this.#fail(pe);
      return;
    }
    wireStats.framesReceived += messages.length;
    for (const m of messages) {
      if (this.#sm.is(ChannelState.Closed)) return;
      try {
        this.#dispatch(m);
      } catch (err) {
        log("%s: error handling %s: %s", this.id, contentTypeName(m.contentType), (err as Error).message);
      }
    }
  }

  #dispatch(m: Message): void {
    if (this.#sm.is(ChannelState.Open)) this.messagesAfterHello++;
    const replyFor = m.headers.get(Header.ReplyFor);
    if (replyFor && replyFor.length === 4) {
      const seq = replyFor.readInt32LE(0);
      const w = this.#waiters.get(seq);
      if (w) {
        this.#waiters.delete(seq);
        clearTimeout(w.timer);
        w.resolve(m);
        return;
      }
      if (m.contentType === ContentType.Result) return; // a late latency answer or the like
    }
    switch (m.contentType) {
      case ContentType.Latency:
        this.reply(m, ContentType.Result, new Map([[Header.ResultSuccess, enc.bool(true)]]));
        return;
      case ContentType.InspectRequest:
        this.reply(
          m,
          ContentType.InspectResponse,
          new Map(),
          Buffer.from(JSON.stringify({ success: true, errors: [], values: { sdk: this.#inspect() } })),
        );
        return;
      case ContentType.Result:
      case ContentType.Heartbeat:
        return;
    }
    const connId = dec.u32(m.headers, Header.ConnId);
    const sink = connId === undefined ? undefined : this.#sinks.get(connId);
    if (m.contentType === ContentType.ConnInspectRequest) {
      const headers: Headers = new Map([
        [Header.ConnId, enc.u32(connId ?? 0)],
        [Header.ConnType, enc.u8(sink ? sink.connType : ConnType.Invalid)],
      ]);
      this.reply(m, ContentType.ConnInspectResponse, headers, Buffer.from(sink ? sink.inspect() : "invalid conn"));
      return;
    }
    if (sink) {
      sink.handle(m);
      return;
    }
    if (m.contentType === ContentType.Dial) {
      // A dial for a bind we no longer have: answer at once so the dialer does not wait out its timeout.
      this.reply(
        m,
        ContentType.DialFailed,
        new Map([[Header.ConnId, enc.u32(connId ?? 0)]]),
        Buffer.from("invalid conn id"),
      );
      return;
    }
    log("%s: dropping %s for unknown conn %s", this.id, contentTypeName(m.contentType), connId);
  }

  #inspect(): string {
    return `channel ${this.id} router=${this.routerId} conns=${this.#sinks.size}`;
  }

  #scheduleLatency(): void {
    this.#latencyTimer = setTimeout(() => {
      if (!this.isOpen) return;
      const sentAt = Date.now();
      const probeAt = performance.now();
      this.request(
        ContentType.Latency,
        new Map([[Header.Reflected, enc.u64(BigInt(sentAt) * 1_000_000n)]]),
        Buffer.alloc(0),
        this.#opts.latencyTimeoutMs,
      ).then(
        () => {
          this.#lastLatencyMs = performance.now() - probeAt;
          this.#scheduleLatency();
        },
        (err: ZitiError) => {
          if (!this.isOpen) return;
          if (err.code === ErrorCodes.TIMEOUT && this.#lastRead < sentAt) {
            this.#fail(new ZitiError(ErrorCodes.TIMEOUT, `${this.id}: router stopped answering latency probes`));
          } else this.#scheduleLatency();
        },
      );
    }, this.#opts.latencyIntervalMs);
    this.#latencyTimer.unref();
  }

  #fail(err: ZitiError): void {
    if (this.#sm.is(ChannelState.Closed)) return;
    this.#closeError = err;
    this.#sm.to(ChannelState.Closed, err.message);
    clearTimeout(this.#latencyTimer);
    this.#writer.flush(); // what was sent before the close (an XgClose, an Unbind) still leaves
    this.#socket?.destroy();
    for (const w of this.#waiters.values()) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.#waiters.clear();
    const sinks = [...this.#sinks.values()];
    this.#sinks.clear();
    this.#lagging.clear();
    for (const s of sinks) {
      try {
        s.channelClosed(err);
      } catch (e) {
        log("%s: sink close error: %s", this.id, (e as Error).message);
      }
    }
    this.emit("closed", err);
  }
}
