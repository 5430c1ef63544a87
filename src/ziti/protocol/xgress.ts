/**
 * SDK-side flow control ("xgress to SDK"): the SDK is one end of the circuit's xgress, the router only forwards.
 * Facts from sdk-golang@v1.1.2 `xgress/` and ziti@v1.6.3 `router/xgress_edge/` (no code copied):
 *
 * - Negotiation is per connection: the SDK sets UseXgressToSdk (1028) on Connect (dial) and on Bind; a router
 *   that supports it (v1.6.0+) answers the Connect, or sends each Dial, with UseXgressToSdk=true plus XgressCtrlId
 *   (1029) and XgressAddress (1030). A router that does not ignores the header and the connection is legacy. The
 *   hello announces nothing (ziti@v1.6.3 xgress_edge/factory.go puts only the version and SupportsBindSuccess in it).
 * - Payload (content type 1100): body = the edge-level bytes (our ciphertext), headers CircuitId 2256 (string),
 *   Sequence 2257 (u64 LE, per direction from 0), Flags 2258 (u32, optional), RTT 2260 (u16 = our clock in ms,
 *   echoed in the ack), and the payload's own headers at 2000+key; key 0x10 carries the edge Flags (FIN,
 *   MULTIPART_MSG, ...) end to end. The router adds ConnId (1000) towards the SDK; it routes ours by circuit id.
 * - Acknowledgement (1101): body = acknowledged sequences, u32 big-endian each; headers CircuitId, Flags
 *   (originator), RecvBufferSize 2259 (u32: bytes received but not yet consumed), RTT (echo).
 * - Close (1103): body = circuit id; the router drops its forwarder and reports the circuit as faulted.
 * - The initiator (dialer) opens with an empty CircuitStart payload (sequence 0); the terminator (hosting side)
 *   sends nothing before it got it. The end of a circuit is an empty CircuitEnd payload. Payload flags: CircuitEnd 1,
 *   Originator 2 (set by the terminator), CircuitStart 4, Chunk 8 (only with an MTU, which the edge never sets),
 *   Retransmit 16.
 * - Routers forward with TrySend (xgEdgeForwarder.SendPayload, forwarder with timeout 0): a full queue drops the
 *   payload. Both ends therefore retransmit what is not acknowledged in time, and acknowledge duplicates again.
 * - A sender stops taking new payloads while the receiver reports more than its max portal (4 MiB) buffered, or while
 *   its unacknowledged bytes exceed its window (4 MiB, shrunk on retransmissions, regrown on acks); when it has
 *   nothing in flight it lets one payload through, which probes a closed window. A receiver drops a new payload
 *   (no ack) while it holds more than its receive buffer (4 MiB): the sender retransmits it later.
 *
 * - Capabilities (sdk-golang v1.7 `xgress/`, the Go SDK of OpenZiti 2.0): the initiator's CircuitStart carries
 *   payload header 0x01 (u32 big-endian, bits 8-16); a terminator that gets it answers with an empty payload
 *   carrying its own. Bit 8 is EOF: a peer that knows the other end has it ends its own direction (CloseWrite) with
 *   an empty payload flagged EOF (32); towards one that does not, with a CircuitEnd, which a v1.x-style end reads
 *   as the end of the whole circuit: a Go dialer's half-close then cut off the answer. Our terminators answer a
 *   dialer's capabilities with EOF and read an EOF payload, or a CircuitEnd from a peer that announced
 *   capabilities, as the peer's FIN. Our dialers announce none, so between two scrapez ends (which close a circuit
 *   with CircuitEnd) nothing changes; a v1.6 router does not tell the far end when one end leaves.
 *
 * This file is pure: codecs, the receive reorder buffer and the send window. conn.ts drives them.
 */
import { ProtocolError } from "../errors.js";
import { bodyLength, type Body, type Message, type OutgoingMessage } from "./frame.js";
import { ContentType, Header, XgHeader, dec, enc, type Headers } from "./headers.js";

export const XgFlag = { CircuitEnd: 1, Originator: 2, CircuitStart: 4, Chunk: 8, Retransmit: 16, EOF: 32 } as const;

/** Capability bit 8: the EOF flag (a direction ends, the circuit stays). The only one we announce. */
export const XG_CAPABILITY_EOF = 1 << 8;
/** The bits of the capabilities header that carry capabilities (as the Go xgress masks them). */
const XG_CAPABILITIES_MASK = 0x1ff00;

export type Originator = "initiator" | "terminator";

export interface XgPayload {
  circuitId: string;
  sequence: number;
  flags: number;
  /** The edge Flags carried end to end (payload header 0x10), 0 when absent. */
  edgeFlags: number;
  /** The sender's capabilities (payload header 0x01), when it sent them. */
  capabilities?: number | undefined;
  rtt: number | undefined;
  data: Buffer;
}

export interface XgAck {
  circuitId: string;
  flags: number;
  /** Bytes the receiver holds unconsumed; 0xffffffff when the header is absent (as the Go code reads it). */
  recvBufferSize: number;
  rtt: number | undefined;
  sequences: number[];
}

/** Sender's clock for the RTT header: milliseconds, truncated to 16 bits (as the Go xgress does). */
export function rttClock(now = Date.now()): number {
  return now & 0xffff;
}

export function originatorFlag(o: Originator): number {
  return o === "terminator" ? XgFlag.Originator : 0;
}

export function encodePayload(
  connId: number,
  p: { circuitId: string; sequence: number; flags: number; edgeFlags: number; capabilities?: number; data: Body },
  now = Date.now(),
): OutgoingMessage {
  const headers: Headers = new Map([
    [Header.ConnId, enc.u32(connId)],
    [XgHeader.CircuitId, enc.str(p.circuitId)],
    [XgHeader.Sequence, enc.u64(BigInt(p.sequence))],
    [XgHeader.RTT, enc.u16(rttClock(now))],
  ]);
  if (p.flags) headers.set(XgHeader.Flags, enc.u32(p.flags));
  if (p.edgeFlags) headers.set(XgHeader.EdgeFlags, enc.u32(p.edgeFlags));
  if (p.capabilities !== undefined) {
    const caps = Buffer.alloc(4);
    caps.writeUInt32BE(p.capabilities >>> 0, 0);
    headers.set(XgHeader.Capabilities, caps);
  }
  return { contentType: ContentType.XgPayload, sequence: 0, headers, body: p.data };
}

/** Decodes a payload; throws ProtocolError when a required header is missing or malformed. */
export function decodePayload(m: Message): XgPayload {
  const circuitId = dec.str(m.headers, XgHeader.CircuitId);
  if (circuitId === undefined) throw new ProtocolError("xgress payload without a circuit id");
  const seqB = m.headers.get(XgHeader.Sequence);
  if (!seqB || seqB.length !== 8) throw new ProtocolError("xgress payload without a valid sequence");
  const seq = seqB.readBigUInt64LE(0);
  // The Go side keeps sequences as int32: anything past that is not a sequence a real peer sends.
  if (seq > 0x7fffffffn) throw new ProtocolError(`xgress payload sequence ${seq} out of range`);
  const edgeFlagsB = m.headers.get(XgHeader.EdgeFlags);
  const capsB = m.headers.get(XgHeader.Capabilities);
  return {
    circuitId,
    sequence: Number(seq),
    flags: dec.u32(m.headers, XgHeader.Flags) ?? 0,
    edgeFlags: edgeFlagsB && edgeFlagsB.length === 4 ? edgeFlagsB.readUInt32LE(0) : 0,
    capabilities: capsB && capsB.length >= 4 ? capsB.readUInt32BE(0) & XG_CAPABILITIES_MASK : undefined,
    rtt: dec.u16(m.headers, XgHeader.RTT),
    data: m.body,
  };
}

export function encodeAck(connId: number, a: Omit<XgAck, "rtt"> & { rtt?: number | undefined }): Message {
  const body = Buffer.allocUnsafe(a.sequences.length * 4);
  a.sequences.forEach((s, i) => body.writeUInt32BE(s >>> 0, i * 4));
  const headers: Headers = new Map([
    [Header.ConnId, enc.u32(connId)],
    [XgHeader.CircuitId, enc.str(a.circuitId)],
    [XgHeader.RTT, enc.u16(a.rtt ?? 0)],
    [XgHeader.RecvBufferSize, enc.u32(Math.min(a.recvBufferSize, 0xffffffff))],
  ]);
  if (a.flags) headers.set(XgHeader.Flags, enc.u32(a.flags));
  return { contentType: ContentType.XgAcknowledgement, sequence: 0, headers, body };
}

export function decodeAck(m: Message): XgAck {
  const circuitId = dec.str(m.headers, XgHeader.CircuitId);
  if (circuitId === undefined) throw new ProtocolError("xgress acknowledgement without a circuit id");
  if (m.body.length % 4 !== 0) throw new ProtocolError(`xgress acknowledgement body of ${m.body.length} bytes`);
  const sequences: number[] = [];
  for (let off = 0; off < m.body.length; off += 4) sequences.push(m.body.readInt32BE(off));
  return {
    circuitId,
    flags: dec.u32(m.headers, XgHeader.Flags) ?? 0,
    recvBufferSize: dec.u32(m.headers, XgHeader.RecvBufferSize) ?? 0xffffffff,
    rtt: dec.u16(m.headers, XgHeader.RTT),
    sequences,
  };
}

export function encodeClose(circuitId: string): Message {
  return { contentType: ContentType.XgClose, sequence: 0, headers: new Map(), body: Buffer.from(circuitId) };
}

/** Most out-of-order payloads held for one connection (a count bound next to the byte bound). */
export const MAX_OUT_OF_ORDER = 4096;

/**
 * The receive side: payloads in, in-order payloads out. `unread()` is what the reader has not consumed yet; with
 * the out-of-order bytes it is the size we report, and a payload that would take it past `maxBytes` is dropped
 * unacknowledged (the sender resends it), unless it is the one an idle reader waits for.
 */
export class XgReceiveBuffer {
  #next = 0;
  readonly #pending = new Map<number, XgPayload>();
  #pendingBytes = 0;
  duplicates = 0;
  dropped = 0;

  constructor(
    readonly maxBytes: () => number,
    readonly unread: () => number,
  ) {}

  /** Bytes received and not consumed: what the acknowledgements report. */
  get size(): number {
    return this.unread() + this.#pendingBytes;
  }

  get nextSequence(): number {
    return this.#next;
  }

  /**
   * Takes one payload. `ack` says whether to acknowledge it (duplicates are acknowledged again, dropped ones are
   * not); `ready` lists the payloads that are now in order, to be delivered.
   */
  receive(p: XgPayload): { ack: boolean; ready: XgPayload[] } {
    if (p.sequence < this.#next || this.#pending.has(p.sequence)) {
      this.duplicates++;
      return { ack: true, ready: [] };
    }
    // Strict bound: a payload is taken only if it fits under `maxBytes`, except the one the reader is waiting for
    // (next in order while nothing is unread), so a bound smaller than a payload, or out-of-order payloads filling
    // the bound, never deadlock the stream. So unread + out-of-order bytes stay <= maxBytes + one payload.
    const fits = this.size + p.data.length <= this.maxBytes();
    const awaited = p.sequence === this.#next && this.unread() === 0;
    if ((!fits && !awaited) || (this.#pending.size >= MAX_OUT_OF_ORDER && p.sequence !== this.#next)) {
      this.dropped++;
      return { ack: false, ready: [] };
    }
    const ready: XgPayload[] = [];
    if (p.sequence === this.#next) {
      ready.push(p);
      this.#next++;
      for (let q = this.#pending.get(this.#next); q; q = this.#pending.get(this.#next)) {
        this.#pending.delete(this.#next);
        this.#pendingBytes -= q.data.length;
        ready.push(q);
        this.#next++;
      }
    } else {
      this.#pending.set(p.sequence, p);
      this.#pendingBytes += p.data.length;
    }
    return { ack: true, ready };
  }
}

export interface XgSendOptions {
  /** Largest receive buffer the peer may report before we stop sending (Go: TxPortalMaxSize, 4 MiB). */
  txPortalMax: number;
  /** Largest our own window (unacknowledged bytes) grows to. */
  windowMax: number;
  txPortalMin: number;
  txPortalStart: number;
  /** Every this many acknowledged payloads the window grows by `increaseBytes`. */
  increaseThreshold: number;
  increaseBytes: number;
  /** Every this many retransmissions the window shrinks by this factor. */
  retxThreshold: number;
  retxScale: number;
  /** Retransmission timeout before the first RTT sample, and its floor (a loaded box delays acks). */
  retxStartMs: number;
  retxMinMs: number;
  /**
   * Timeout = smoothed RTT + this many times its mean deviation (as TCP's RTO: RFC 6298). A multiple of the mean
   * alone resent most payloads of a loaded box twice, its acks being late rather than lost, and those resends
   * were what the router's small queue then dropped.
   */
  rttVarScale: number;
  /**
   * A payload retransmitted n times waits timeout x 2^n before the next try, up to this (ours, not Go's: a peer
   * whose buffer is full drops what we send until its reader catches up; resending its whole window every 100 ms
   * would load the shared channel for the other connections).
   */
  retxMaxMs: number;
  /**
   * Each wait before a retransmission is stretched by a random factor in [1, 1 + retxJitter). Circuits dialed
   * together otherwise time out together: their payloads, dropped together by the router's 4-message queue towards
   * the far SDK, were resent in the same instant, dropped together again, and so on with the same back-off (a host's
   * stream header lost for 15 s in a burst of 100 dials).
   */
  retxJitter: number;
}

export const DEFAULT_XG_SEND_OPTIONS: XgSendOptions = {
  txPortalMax: 4 * 1024 * 1024,
  windowMax: 4 * 1024 * 1024,
  txPortalMin: 16 * 1024,
  // Go starts at its maximum and grows by what was acknowledged; we start low, grow by one payload per 28 acks and
  // halve on a gap: the router's send queue towards the receiving SDK holds 4 messages (channel DefaultOutQueueSize)
  // and drops the rest, so a big window is mostly retransmissions (measured: 0.8 MiB/s with Go's rule, 27 MiB/s so).
  txPortalStart: 128 * 1024,
  increaseThreshold: 28,
  increaseBytes: 32 * 1024,
  retxThreshold: 64,
  retxScale: 0.75,
  retxStartMs: 200,
  retxMinMs: 100,
  rttVarScale: 4,
  retxMaxMs: 2_000,
  retxJitter: 0.5,
};

interface InFlight {
  payload: {
    circuitId: string;
    sequence: number;
    flags: number;
    edgeFlags: number;
    capabilities?: number;
    /** What was sent, kept for retransmission (in pieces as it was sent: the frame joins them). */
    data: Body;
  };
  /** The payload's bytes. */
  bytes: number;
  sentAt: number;
  /** Times retransmitted since it was first sent (or since the peer's window last reopened). */
  retx: number;
  /** The random stretch of this send's wait (retxJitter), drawn at each send. */
  jitter: number;
  /** Retransmitted early because later payloads were acknowledged (at most once per send). */
  fast: boolean;
}

/** How many later payloads must be acknowledged before an unacknowledged one is resent without waiting. */
export const FAST_RETX_AFTER = 3;

/** The send side: sequence numbers, the window, unacknowledged payloads and when to retransmit them. */
export class XgSendBuffer {
  readonly opts: XgSendOptions;
  #nextSeq = 0;
  readonly #inFlight = new Map<number, InFlight>();
  #inFlightBytes = 0;
  #window: number;
  #remoteBuffered = 0;
  #acked = 0;
  #retxCount = 0;
  #rtt: number | undefined;
  #rttVar = 0;
  #highestAcked = -1;
  #recoverUntil = -1;
  retransmits = 0;
  duplicateAcks = 0;

  readonly #random: () => number;

  /** `random` draws the retransmission jitter (tests pass a fixed one). */
  constructor(opts: Partial<XgSendOptions> = {}, random: () => number = Math.random) {
    this.opts = { ...DEFAULT_XG_SEND_OPTIONS, ...opts };
    this.#window = this.opts.txPortalStart;
    this.#random = random;
  }

  #jitter(): number {
    return 1 + this.opts.retxJitter * this.#random();
  }

  get window(): number {
    return this.#window;
  }

  get inFlightBytes(): number {
    return this.#inFlightBytes;
  }

  get inFlightCount(): number {
    return this.#inFlight.size;
  }

  /** What the peer last reported holding unconsumed. */
  get remoteBuffered(): number {
    return this.#remoteBuffered;
  }

  get rttMs(): number | undefined {
    return this.#rtt;
  }

  get retxTimeoutMs(): number {
    if (this.#rtt === undefined) return this.opts.retxStartMs;
    return Math.max(this.opts.retxMinMs, Math.ceil(this.#rtt + this.opts.rttVarScale * this.#rttVar));
  }

  /** Why a new payload may not go out now, or undefined when it may. */
  blockedBy(): "remote" | "local" | undefined {
    if (this.#inFlightBytes === 0) return undefined; // nothing in flight: let one through (it probes the window)
    if (this.#remoteBuffered > this.opts.txPortalMax) return "remote";
    if (this.#inFlightBytes > this.#window) return "local";
    return undefined;
  }

  /** Assigns the next sequence and records the payload as in flight. */
  add(
    p: { circuitId: string; flags: number; edgeFlags: number; capabilities?: number; data: Body },
    now = Date.now(),
  ): InFlight["payload"] {
    const payload = { ...p, sequence: this.#nextSeq++ };
    const bytes = bodyLength(p.data);
    this.#inFlight.set(payload.sequence, { payload, bytes, sentAt: now, retx: 0, fast: false, jitter: this.#jitter() });
    this.#inFlightBytes += bytes;
    return payload;
  }

  /**
   * Applies an acknowledgement; returns how many payloads it newly acknowledged. When it reopens the peer's window
   * (it reported a full buffer before and not now), what is still in flight was likely dropped meanwhile: it is
   * made due at once.
   */
  ack(a: XgAck, now = Date.now()): number {
    const wasFull = this.#remoteBuffered > this.opts.txPortalMax;
    let n = 0;
    for (const seq of a.sequences) {
      const f = this.#inFlight.get(seq);
      if (!f) {
        this.duplicateAcks++;
        continue;
      }
      this.#inFlight.delete(seq);
      this.#highestAcked = Math.max(this.#highestAcked, seq);
      this.#inFlightBytes -= f.bytes;
      n++;
      if (++this.#acked >= this.opts.increaseThreshold) {
        this.#window = Math.min(this.opts.windowMax, this.#window + this.opts.increaseBytes);
        this.#acked = 0;
      }
    }
    this.#remoteBuffered = a.recvBufferSize;
    if (wasFull && this.#remoteBuffered <= this.opts.txPortalMax) {
      for (const f of this.#inFlight.values()) {
        f.sentAt = Number.NEGATIVE_INFINITY;
        f.retx = 0;
      }
    }
    if (a.rtt !== undefined && a.rtt > 0) {
      const sample = (rttClock(now) - a.rtt) & 0xffff;
      if (this.#rtt === undefined) {
        this.#rtt = sample;
        this.#rttVar = sample / 2;
      } else {
        this.#rttVar = 0.75 * this.#rttVar + 0.25 * Math.abs(this.#rtt - sample);
        this.#rtt = 0.875 * this.#rtt + 0.125 * sample;
      }
    }
    return n;
  }

  /**
   * The payloads due for retransmission at `now`, oldest sequence first, at most `limit` of them (the channel's
   * share for this turn: channel.ts, retransmitSlots); each returned is marked as sent again, the others stay due.
   * Due are those not acknowledged within the timeout (backed off and jittered), and at once (ours, not Go's: the
   * receiver cannot ask) those that `FAST_RETX_AFTER` later payloads overtook: routers drop rather than queue, and
   * waiting out a timeout for every gap stalls the whole stream behind it (the receiver delivers in order). A gap
   * halves the window once per window of data, so the sender slows down to what the router forwards without
   * dropping.
   */
  due(now = Date.now(), limit = Number.POSITIVE_INFINITY): InFlight["payload"][] {
    const timeout = this.retxTimeoutMs;
    const ready: { f: InFlight; fast: boolean }[] = [];
    for (const f of this.#inFlight.values()) {
      if (!f.fast && f.payload.sequence + FAST_RETX_AFTER <= this.#highestAcked) ready.push({ f, fast: true });
      else {
        const wait = Math.max(timeout, Math.min(this.opts.retxMaxMs, timeout * 2 ** Math.min(f.retx, 10)));
        if (now - f.sentAt >= wait * f.jitter) ready.push({ f, fast: false });
      }
    }
    if (ready.length === 0) return [];
    ready.sort((a, b) => a.f.payload.sequence - b.f.payload.sequence);
    const out: InFlight["payload"][] = [];
    for (const { f, fast } of ready.slice(0, Math.max(0, limit))) {
      f.sentAt = now;
      f.retx++;
      f.jitter = this.#jitter();
      out.push(f.payload);
      if (fast) {
        f.fast = true;
        if (f.payload.sequence > this.#recoverUntil) {
          this.#recoverUntil = this.#nextSeq - 1;
          this.#window = Math.max(this.opts.txPortalMin, Math.floor(this.#window / 2));
        }
      }
      this.retransmits++;
      if (++this.#retxCount >= this.opts.retxThreshold) {
        this.#retxCount = 0;
        this.#acked = 0;
        this.#window = Math.max(this.opts.txPortalMin, Math.floor(this.#window * this.opts.retxScale));
      }
    }
    return out;
  }

  clear(): void {
    this.#inFlight.clear();
    this.#inFlightBytes = 0;
  }
}
