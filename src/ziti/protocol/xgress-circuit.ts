/**
 * Layer 2: a connection's circuit in SDK flow control ("xgress to SDK", routers v1.6.0+): the SDK is one end of the
 * circuit's xgress and the router only forwards (xgress.ts has the wire facts, xgress-circuit-types.ts its states,
 * limits and hooks). It drives the circuit for its connection (conn.ts), which in this mode sends and receives only
 * through it:
 *
 * - Inbound: payloads are delivered to the connection in sequence order and acknowledged at the end of the turn
 *   (one ack for the payloads of one socket read) with the bytes we hold unread, so the far sender stops once our reader lags (past 4 MiB reported) and starts again when an empty
 *   acknowledgement (a window update) says the reader caught up; a payload arriving past the connection's
 *   `maxBufferedBytes` is dropped unacknowledged and resent later. A slow reader is stopped, never closed.
 * - Outbound: `send` resolves once the payload fits the circuit's window (unacknowledged bytes, and the peer's
 *   reported buffer), so a peer that stops reading stops only our writer on that connection; unacknowledged
 *   payloads are resent (routers drop when a queue is full), jittered, and no more at once than the channel's
 *   retransmission allowance (channel.ts) lets its circuits resend together.
 * - Start and end: the initiator sends CircuitStart, the terminator sends nothing before it arrives. A closed
 *   stream drains: its last payloads and a CircuitEnd are acknowledged (or 30 s pass) before XgClose releases the
 *   circuit. The router knows no Data or StateClosed for such a connection, so none are sent.
 */
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";
import { StateMachine } from "../state.js";
import type { Body, Message } from "./frame.js";
import { ContentType, Flag } from "./headers.js";
import { wireStats } from "./wire-stats.js";
import {
  XG_CIRCUIT_START_TIMEOUT_MS,
  XG_MAX_CLOSE_WAIT_MS,
  XgState,
  asZitiError,
  type CircuitConnection,
  type CircuitHooks,
  type XgInit,
  type XgStats,
} from "./xgress-circuit-types.js";
import {
  XgFlag,
  XG_CAPABILITY_EOF,
  XgReceiveBuffer,
  XgSendBuffer,
  decodeAck,
  decodePayload,
  encodeAck,
  encodeClose,
  encodePayload,
  originatorFlag,
  type Originator,
  type XgPayload,
} from "./xgress.js";

const log = debug("conn");

/** How often in-flight payloads are checked for retransmission (the Go xgress ticks at 100 ms too). */
const XG_TICK_MS = 100;
/** A window update (empty ack) goes out once the reader consumed half of what we last reported, if that was more. */
const XG_WINDOW_UPDATE_MIN = 10_000;

const XG_TRANSITIONS: Record<XgState, readonly XgState[]> = {
  [XgState.Starting]: [XgState.Open, XgState.Draining, XgState.Closed],
  [XgState.Open]: [XgState.Draining, XgState.Closed],
  [XgState.Draining]: [XgState.Closed],
  [XgState.Closed]: [],
};

interface XgQueued {
  data: Body;
  edgeFlags: number;
  flags: number;
  capabilities?: number | undefined;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class XgressCircuit {
  readonly #conn: CircuitConnection;
  readonly #hooks: CircuitHooks;
  readonly #originator: Originator;
  readonly #sm: StateMachine<XgState>;
  readonly #rx: XgReceiveBuffer;
  readonly #tx = new XgSendBuffer();
  readonly #queue: XgQueued[] = [];
  #waitingDrain = false;
  #tick: NodeJS.Timeout | undefined;
  #timer: NodeJS.Timeout | undefined;
  #lastSizeSent = 0;
  #pendingAcks: number[] = [];
  #pendingRtt: number | undefined;
  #endSent = false;
  #endReceived = false;
  /** The circuit was started: always for the initiator; for the terminator once the initiator's CircuitStart came. */
  #startSeen = false;
  /** The capabilities the peer announced (a Go xgress of sdk-golang v1.7+, OpenZiti 2.0); undefined if none. */
  #peerCapabilities: number | undefined;

  constructor(conn: CircuitConnection, hooks: CircuitHooks, init: XgInit) {
    this.#conn = conn;
    this.#hooks = hooks;
    this.#originator = init.originator;
    const id = `${conn.service}#${conn.connId}/${conn.circuitId ?? "?"}`;
    this.#sm = new StateMachine("xgress", id, XgState.Starting, XG_TRANSITIONS, log);
    this.#rx = new XgReceiveBuffer(
      () => conn.maxBufferedBytes,
      () => (conn.destroyed ? 0 : conn.readableLength),
    );
  }

  get closed(): boolean {
    return this.#sm.is(XgState.Closed);
  }

  get stats(): XgStats {
    return {
      state: this.#sm.state,
      window: this.#tx.window,
      inFlightBytes: this.#tx.inFlightBytes,
      remoteBuffered: this.#tx.remoteBuffered,
      retransmits: this.#tx.retransmits,
      duplicates: this.#rx.duplicates,
      dropped: this.#rx.dropped,
      rttMs: this.#tx.rttMs,
    };
  }

  /** The connection is established: the initiator opens the circuit, the terminator waits for it; `first` goes out. */
  start(first: Buffer | undefined): void {
    const c = this.#conn;
    if (this.#originator === "initiator") {
      // The initiator opens the circuit; the terminator sends nothing before this arrives.
      this.#sm.to(XgState.Open, "initiator");
      this.#startSeen = true;
      // Without capabilities: a terminator that announces none back (ours) keeps the v1.x meaning of CircuitEnd.
      void this.send(Buffer.alloc(0), 0, XgFlag.CircuitStart).catch(() => undefined);
    } else {
      this.#timer = setTimeout(() => {
        if (this.#sm.is(XgState.Starting))
          c.destroy(
            new ZitiError(
              ErrorCodes.FLOW_CONTROL,
              `${c.service} connection ${c.connId}: the dialer's side never started circuit ${c.circuitId} ` +
                `(no CircuitStart within ${XG_CIRCUIT_START_TIMEOUT_MS / 1000} s)`,
            ),
          );
      }, XG_CIRCUIT_START_TIMEOUT_MS);
      this.#timer.unref();
    }
    if (first) void this.send(first, 0).catch(() => undefined);
  }

  handle(m: Message): void {
    const c = this.#conn;
    switch (m.contentType) {
      case ContentType.XgPayload:
        this.#onPayload(m);
        return;
      case ContentType.XgAcknowledgement: {
        wireStats.acksReceived++;
        let ack;
        try {
          ack = decodeAck(m);
        } catch (err) {
          this.#broken(`a malformed acknowledgement: ${(err as Error).message}`);
          return;
        }
        if (ack.circuitId !== c.circuitId) {
          log("conn %d: ack for circuit %s, not ours (%s): ignored", c.connId, ack.circuitId, c.circuitId);
          return;
        }
        this.#tx.ack(ack);
        this.#pump();
        this.#retransmit();
        if (this.#sm.is(XgState.Draining) && this.#tx.inFlightCount === 0 && this.#queue.length === 0)
          this.finish(false, "all payloads acknowledged");
        return;
      }
      case ContentType.StateClosed:
        // The router unrouted the circuit (or no longer knows it): nothing more can be delivered either way.
        this.finish(false, m.body.toString() || "closed by router");
        if (!c.destroyed) this.#hooks.remoteClose(m.body.toString() || "closed by router");
        return;
      case ContentType.Data:
        log("conn %d: legacy Data on an SDK-flow-control connection: ignored", c.connId);
        return;
      default:
        log("conn %d: ignoring %d", c.connId, m.contentType);
    }
  }

  #onPayload(m: Message): void {
    const c = this.#conn;
    let p: XgPayload;
    try {
      p = decodePayload(m);
    } catch (err) {
      this.#broken(`a malformed payload: ${(err as Error).message}`);
      return;
    }
    if (p.circuitId !== c.circuitId) {
      log("conn %d: payload for circuit %s, not ours (%s): ignored", c.connId, p.circuitId, c.circuitId);
      return;
    }
    if ((p.flags & XgFlag.Originator) === originatorFlag(this.#originator)) {
      log("conn %d: payload %d came from our own side of the circuit: dropped", c.connId, p.sequence);
      return;
    }
    if (p.flags & XgFlag.Chunk) {
      this.#broken(`a chunked payload (${p.sequence}), which the edge never sends`);
      return;
    }
    wireStats.payloadsReceived++;
    const { ack, ready } = this.#rx.receive(p);
    let ended = false;
    for (const q of ready) {
      // Draining (the stream is closed): what arrives is acknowledged and discarded, but the peer's end counts,
      // and so does its CircuitStart (a terminator closed before it came sends its CircuitEnd only then).
      if (this.#hooks.streamClosed()) {
        ended ||= (q.flags & XgFlag.CircuitEnd) !== 0;
        if (q.flags & XgFlag.CircuitStart) this.#deliver(q);
      } else this.#deliver(q);
    }
    if (ack && this.#hooks.channel.isOpen && !this.#sm.is(XgState.Closed)) this.#queueAck(p.sequence, p.rtt);
    if (ended) {
      this.#endReceived = true;
      this.finish(false, "the peer ended the circuit");
    }
  }

  #deliver(p: XgPayload): void {
    if (p.capabilities !== undefined) this.#peerCapabilities = p.capabilities;
    if (p.flags & XgFlag.CircuitStart) {
      if (this.#originator === "terminator" && !this.#startSeen) {
        this.#startSeen = true;
        if (this.#sm.to(XgState.Open, "circuit started")) {
          clearTimeout(this.#timer);
          this.#timer = undefined;
        }
        // A dialer that announced capabilities gets ours back (as a Go terminator answers), so it knows we take EOF.
        if (p.capabilities !== undefined && !this.#hooks.streamClosed()) {
          void this.send(Buffer.alloc(0), 0, 0, XG_CAPABILITY_EOF).catch(() => undefined);
        }
        // Also when we closed before it came (Draining): the queued CircuitEnd goes out now and tells the dialer.
        this.#pump();
      }
      return;
    }
    if (p.flags & XgFlag.CircuitEnd) {
      if (this.#peerCapabilities !== undefined) {
        // A peer that announced capabilities is a v1.7+ Go xgress (our own dialers announce none), where a
        // CircuitEnd ends the sender's direction only (it reads one so, and its CloseWrite sends one to a peer it
        // does not yet know takes EOF): the peer's FIN. Its full close reaches us as the router's unroute.
        this.#hooks.deliver(p.data, p.edgeFlags | Flag.FIN);
        return;
      }
      this.#endReceived = true;
      this.#hooks.remoteClose("the peer ended the circuit");
      return;
    }
    // EOF: the peer's direction ended and ours goes on (a Go peer's CloseWrite sends it after its FIN).
    this.#hooks.deliver(p.data, p.flags & XgFlag.EOF ? p.edgeFlags | Flag.FIN : p.edgeFlags);
  }

  /**
   * Acknowledgements wait for the end of the current turn (a microtask: the channel dispatches a whole socket read
   * synchronously), so the payloads of one read get one ack carrying all their sequences and the newest RTT echo,
   * not one ack each: fewer messages through the router's small queue, and the size reported is the latest.
   */
  #queueAck(sequence: number, rtt: number | undefined): void {
    this.#pendingAcks.push(sequence);
    if (rtt !== undefined) this.#pendingRtt = rtt;
    if (this.#pendingAcks.length > 1) return;
    queueMicrotask(() => {
      const sequences = this.#pendingAcks;
      const echo = this.#pendingRtt;
      this.#pendingAcks = [];
      this.#pendingRtt = undefined;
      // Also once the circuit closed meanwhile (the peer's CircuitEnd): its sender waits for this ack.
      if (sequences.length > 0 && this.#hooks.channel.isOpen) this.#ack(sequences, echo);
    });
  }

  #ack(sequences: number[], rtt: number | undefined): void {
    const c = this.#conn;
    const size = this.#rx.size;
    this.#lastSizeSent = size;
    const m = encodeAck(c.connId, {
      circuitId: c.circuitId ?? "",
      flags: originatorFlag(this.#originator),
      recvBufferSize: size,
      rtt,
      sequences,
    });
    try {
      this.#hooks.channel.send(m.contentType, m.headers, m.body);
      wireStats.acksSent++;
      wireStats.ackSequencesSent += sequences.length;
    } catch {
      /* the channel went away: channelClosed follows */
    }
  }

  /** The reader consumed data: tell the sender once what we reported has halved (as the Go xgress does). */
  windowUpdate(): void {
    if (this.#sm.is(XgState.Closed) || !this.#hooks.channel.isOpen) return;
    if (this.#lastSizeSent > XG_WINDOW_UPDATE_MIN && this.#lastSizeSent / 2 > this.#rx.size) this.#ack([], undefined);
  }

  /** Queues one payload; resolves once it went out within the window (rejects if the connection closes first). */
  send(data: Body, edgeFlags: number, flags = 0, capabilities?: number): Promise<void> {
    if (this.#sm.is(XgState.Closed) || (this.#hooks.streamClosed() && !(flags & XgFlag.CircuitEnd))) {
      return Promise.reject(
        new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${this.#conn.service} is closed`),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ data, edgeFlags, flags, capabilities, resolve, reject });
      this.#pump();
    });
  }

  /** Sends queued payloads while the circuit is started, the window allows and the channel's socket takes them. */
  #pump(): void {
    const c = this.#conn;
    if (this.#waitingDrain) return;
    while (this.#queue.length > 0) {
      // The terminator sends nothing before the initiator's CircuitStart, also when it is already draining.
      if (this.#sm.is(XgState.Closed) || !this.#startSeen) return;
      // While draining the window is not waited for (as the Go xgress): only the last payloads are left.
      const blocked = this.#sm.is(XgState.Draining) ? undefined : this.#tx.blockedBy();
      if (blocked) return;
      const item = this.#queue.shift()!;
      const p = this.#tx.add({
        circuitId: c.circuitId ?? "",
        flags: item.flags | originatorFlag(this.#originator),
        edgeFlags: item.edgeFlags,
        ...(item.capabilities !== undefined ? { capabilities: item.capabilities } : {}),
        data: item.data,
      });
      if (item.flags & XgFlag.CircuitEnd) this.#endSent = true;
      let writable: boolean;
      try {
        const m = encodePayload(c.connId, p);
        writable = this.#hooks.channel.send(m.contentType, m.headers, m.body);
        wireStats.payloadsSent++;
      } catch (err) {
        item.reject(asZitiError(err, ErrorCodes.CONNECTION_CLOSED));
        return;
      }
      item.resolve();
      this.#armTick();
      if (!writable) {
        this.#waitingDrain = true;
        void this.#hooks.channel.whenWritable().then(() => {
          this.#waitingDrain = false;
          if (!this.#sm.is(XgState.Closed)) this.#pump();
        });
        return;
      }
    }
  }

  #armTick(): void {
    if (this.#tick || this.#tx.inFlightCount === 0) return;
    this.#tick = setInterval(() => this.#retransmit(), XG_TICK_MS);
    this.#tick.unref();
  }

  /** Resends what was not acknowledged in time (routers drop payloads when a queue is full). */
  #retransmit(): void {
    const c = this.#conn;
    if (this.#tx.inFlightCount === 0 || this.#sm.is(XgState.Closed) || !this.#hooks.channel.isOpen) {
      if (this.#tick) clearInterval(this.#tick);
      this.#tick = undefined;
      return;
    }
    // The channel's allowance bounds the burst its circuits resend together; what is left stays due for later.
    const ch = this.#hooks.channel;
    const now = Date.now();
    const due = this.#tx.due(now, ch.retransmitAllowance(now));
    ch.retransmitted(due.length);
    for (const p of due) {
      const m = encodePayload(c.connId, { ...p, flags: p.flags | XgFlag.Retransmit });
      try {
        this.#hooks.channel.send(m.contentType, m.headers, m.body);
        wireStats.payloadsSent++;
        wireStats.retransmits++;
      } catch {
        return;
      }
    }
  }

  /** The stream was destroyed: drain the circuit (no error) or end it at once. `remoteClosed`: the peer closed. */
  close(err: Error | null, remoteClosed: boolean): void {
    const c = this.#conn;
    const closed = new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${c.service} was closed`);
    for (const q of this.#queue.splice(0)) q.reject(closed);
    if (this.#sm.is(XgState.Closed)) {
      this.#hooks.unregister();
      return;
    }
    // A terminator closed before the dialer started the circuit (e.g. over a connection cap) drains too: its
    // CircuitEnd waits for the CircuitStart, or the dialer would never learn the connection is gone.
    const canDrain =
      !err &&
      this.#sm.is(XgState.Open, XgState.Starting) &&
      !this.#endReceived &&
      !remoteClosed &&
      this.#hooks.channel.isOpen;
    if (!canDrain) {
      this.finish(true, err ? err.message : "closed");
      return;
    }
    this.#sm.to(XgState.Draining, "closed; delivering the last payloads");
    clearTimeout(this.#timer);
    this.#timer = setTimeout(
      () => this.finish(true, `not all payloads acknowledged within ${XG_MAX_CLOSE_WAIT_MS / 1000} s`),
      XG_MAX_CLOSE_WAIT_MS,
    );
    this.#timer.unref();
    void this.send(Buffer.alloc(0), 0, XgFlag.CircuitEnd).catch(() => undefined);
    if (this.#tx.inFlightCount === 0 && this.#queue.length === 0) this.finish(false, "nothing in flight");
  }

  /** Ends the circuit: an unacknowledged CircuitEnd (if none went out yet), then XgClose; leaves the channel. */
  finish(sendEnd: boolean, reason: string): void {
    const c = this.#conn;
    if (this.#sm.is(XgState.Closed)) return;
    const wasStarted = this.#startSeen;
    this.#sm.to(XgState.Closed, reason);
    if (this.#tick) clearInterval(this.#tick);
    if (this.#timer) clearTimeout(this.#timer);
    this.#tick = this.#timer = undefined;
    if (this.#hooks.channel.isOpen && c.circuitId) {
      try {
        if (sendEnd && wasStarted && !this.#endSent && !this.#endReceived) {
          const p = this.#tx.add({
            circuitId: c.circuitId,
            flags: XgFlag.CircuitEnd | originatorFlag(this.#originator),
            edgeFlags: 0,
            data: Buffer.alloc(0),
          });
          this.#endSent = true;
          const m = encodePayload(c.connId, p);
          this.#hooks.channel.send(m.contentType, m.headers, m.body);
        }
        const e = encodeClose(c.circuitId);
        this.#hooks.channel.send(e.contentType, e.headers, e.body);
      } catch {
        /* the channel went away meanwhile */
      }
    }
    this.#tx.clear();
    const closed = new ZitiError(ErrorCodes.CONNECTION_CLOSED, `connection to ${c.service} was closed`);
    for (const q of this.#queue.splice(0)) q.reject(closed);
    if (c.destroyed) this.#hooks.unregister();
  }

  /** The router or peer broke the xgress protocol on this connection: it alone is closed. */
  #broken(what: string): void {
    const c = this.#conn;
    c.destroy(
      new ZitiError(
        ErrorCodes.FLOW_CONTROL,
        `${c.service} connection ${c.connId}: the router sent ${what}; the connection was closed`,
      ),
    );
  }
}
