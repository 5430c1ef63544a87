/**
 * Layer 2: what a router channel (channel.ts) is opened with and what it carries: its states, the sinks registered
 * under a connId (connections, binds), the connections whose readers lag, and the default bounds on their unread data.
 */
import type { Duplex } from "node:stream";
import type { ZitiError } from "../errors.js";
import type { TlsCredentials } from "../transport/tls.js";
import type { Message } from "./frame.js";

/** A channel's states and the moves between them. */
export enum ChannelState {
  Connecting = "connecting",
  Hello = "hello",
  Open = "open",
  Closed = "closed",
}

export const CHANNEL_TRANSITIONS: Record<ChannelState, readonly ChannelState[]> = {
  [ChannelState.Connecting]: [ChannelState.Hello, ChannelState.Closed],
  [ChannelState.Hello]: [ChannelState.Open, ChannelState.Closed],
  [ChannelState.Open]: [ChannelState.Closed],
  [ChannelState.Closed]: [],
};

/** Something registered under a connId on this channel: a virtual connection or a listener's bind. */
export interface ConnSink {
  readonly connType: number;
  /** Handles a message addressed to this connId. */
  handle(msg: Message): void;
  /** The channel is gone; the sink must end itself. */
  channelClosed(err: ZitiError): void;
  /** Text for ConnInspectResponse. */
  inspect(): string;
}

export interface ChannelOptions {
  /** Our identity's name, used in the hello and as CallerId. */
  identityName: string;
  /** The API-session token presented in the hello. */
  sessionToken: string;
  credentials: TlsCredentials;
  connectTimeoutMs?: number;
  helloTimeoutMs?: number;
  requestTimeoutMs?: number;
  latencyIntervalMs?: number;
  latencyTimeoutMs?: number;
  maxFrameBytes?: number;
  /** Opens the byte stream to the router instead of the default TLS connection (a test's fake router). */
  connect?: (() => Promise<Duplex>) | undefined;
  /** Default bound on one connection's unread data before it is closed with READER_TOO_SLOW (4 MiB). */
  maxConnBufferedBytes?: number;
  /** Cap on the unread data of all lagging connections of this channel together (64 MiB). */
  maxChannelBufferedBytes?: number;
  /**
   * Ask the router for SDK flow control (a window per connection, see xgress.ts) on every Connect and Bind
   * (default true). Routers before v1.6.0 ignore the request and the connections use legacy flow control.
   */
  sdkFlowControl?: boolean;
  /**
   * Frames written in one event-loop turn leave as one socket write (one TLS record per 16 KiB): channel-writer.ts.
   * Off unless SCRAPEZ_ZITI_WRITE_BATCH=1: not shown to help in the benches (docs/performance.md, End to end).
   */
  writeBatch?: boolean;
}

/** A connection whose reader lags: its unread bytes count toward the channel's cap. */
export interface LaggingReader {
  readonly bufferedBytes: number;
  /** The channel's total of unread data passed its cap and this reader holds the most: close it. */
  shedForChannel(channelTotal: number, channelCap: number): void;
}

/**
 * Legacy flow control (older routers, or `sdkFlowControl: false`): why a lagging reader is bounded, not paused.
 * The router gives the SDK no per-circuit window. Its edge xgress hands each payload to the channel (`edgeXgressConn.WritePayload` -> channel send queue of 4 messages,
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
 */
export const DEFAULT_MAX_CONN_BUFFERED_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MAX_CHANNEL_BUFFERED_BYTES = 64 * 1024 * 1024;
