/**
 * Layer 2: how a channel (channel.ts) paces what it writes: its frames to the socket, batched or not, counted in
 * wireStats (FrameWriter), and the SDK flow control retransmissions its circuits may send at once (ResendLimiter).
 */
import type { Duplex } from "node:stream";
import { TLS_RECORD_MAX, wireStats } from "./wire-stats.js";

/**
 * SDK flow control retransmissions the circuits of one channel may send at once, and the milliseconds that earn
 * one more. The router forwards what an SDK sends into the far SDK's channel queue, which holds 4 messages, and
 * drops the rest (ziti@v1.6.3 xgEdgeForwarder: TrySend): a burst of resends, e.g. every circuit of a burst of dials
 * timing out in the same event-loop turn, mostly repeats the drops that caused it. 8 at once, then 500/s.
 */
export const RETX_BURST = 8;
const RETX_REFILL_MS = 2;
/**
 * With `writeBatch`, the frames written in one event-loop turn (every socket read and timer of that turn, with the
 * microtasks they queue: the acks of those reads) are gathered and leave as one socket write at the end of the turn
 * (setImmediate: after the turn's I/O callbacks, before the loop waits again), so the router gets one TLS record per
 * 16 KiB instead of one per frame, and the process makes one write system call instead of one per frame. What is
 * gathered is written at once when it reaches BATCH_FLUSH_BYTES, so the socket's own buffer and its 'drain' stay
 * the back-pressure signal. Off unless SCRAPEZ_ZITI_WRITE_BATCH=1: not shown to help (docs/performance.md).
 */
export const WRITE_BATCH_DEFAULT = process.env.SCRAPEZ_ZITI_WRITE_BATCH === "1";
/** Gathered bytes that are written at once rather than at the end of the turn (one TLS record's worth). */
export const BATCH_FLUSH_BYTES = 16 * 1024;

/** The retransmission allowance of one channel: RETX_BURST at once, one more every RETX_REFILL_MS. */
export class ResendLimiter {
  #tokens = RETX_BURST;
  #at = 0;

  /** How many retransmissions may be sent now; spend them with spent(). */
  allowance(now: number): number {
    this.#tokens = Math.min(RETX_BURST, this.#tokens + Math.max(0, now - this.#at) / RETX_REFILL_MS);
    this.#at = now;
    return Math.floor(this.#tokens);
  }

  spent(n: number): void {
    this.#tokens = Math.max(0, this.#tokens - n);
  }
}

/** Writes encoded frames to a channel's socket, one write each or (batch) gathered per turn; counts them. */
export class FrameWriter {
  readonly #batch: boolean;
  /** Frames gathered this turn (batch), not yet handed to the socket. */
  #frames: Buffer[] = [];
  #bytes = 0;
  #socket: Duplex | undefined;
  #scheduled = false;

  constructor(batch: boolean) {
    this.#batch = batch;
  }

  /**
   * Returns false when the socket's buffer is full (wait for its 'drain'). In batch mode a frame is gathered and the
   * answer is the socket's state; once BATCH_FLUSH_BYTES are gathered they are written at once and the answer is
   * that write's, as without batching.
   */
  write(s: Duplex, frame: Buffer): boolean {
    wireStats.framesSent++;
    wireStats.bytesSent += frame.length;
    if (!this.#batch) return this.#writeOut(s, frame);
    if (this.#socket !== s) {
      this.flush();
      this.#socket = s;
    }
    this.#frames.push(frame);
    this.#bytes += frame.length;
    if (this.#bytes >= BATCH_FLUSH_BYTES) return this.flush();
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => {
        this.#scheduled = false;
        this.flush();
      });
    }
    return !s.writableNeedDrain;
  }

  /** Hands what was gathered to the socket now, as one write; returns that write's result (true if none). */
  flush(): boolean {
    const s = this.#socket;
    const frames = this.#frames;
    if (!s || frames.length === 0) return true;
    this.#frames = [];
    this.#bytes = 0;
    if (s.destroyed) return false;
    return this.#writeOut(s, frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  }

  #writeOut(s: Duplex, data: Buffer): boolean {
    wireStats.socketWrites++;
    wireStats.tlsRecords += Math.ceil(data.length / TLS_RECORD_MAX);
    return s.write(data);
  }
}
