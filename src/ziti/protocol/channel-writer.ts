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
 * With `writeBatch`, the frames written in one run of our code (a socket read's dispatch or a timer, with the
 * microtasks they queue: the acks of that read) go to the socket as one write: corked at the first, uncorked in a
 * microtask, so nothing waits for the event loop, and the router gets one TLS record per 16 KiB instead of one per
 * frame. The default comes from SCRAPEZ_ZITI_WRITE_BATCH=1 (for comparing the two in the benches).
 */
export const WRITE_BATCH_DEFAULT = process.env.SCRAPEZ_ZITI_WRITE_BATCH === "1";

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

/** Writes encoded frames to a channel's socket, one write each or (batch) corked together; counts them. */
export class FrameWriter {
  readonly #batch: boolean;
  /** Bytes written to the corked socket since it was corked (batch); 0 when it is not corked. */
  #batchBytes = 0;

  constructor(batch: boolean) {
    this.#batch = batch;
  }

  /** Returns the socket's write() result (false: wait for 'drain'). */
  write(s: Duplex, frame: Buffer): boolean {
    wireStats.framesSent++;
    wireStats.bytesSent += frame.length;
    if (!this.#batch) {
      wireStats.socketWrites++;
      wireStats.tlsRecords += Math.ceil(frame.length / TLS_RECORD_MAX);
      return s.write(frame);
    }
    if (this.#batchBytes === 0) {
      s.cork();
      queueMicrotask(() => this.#flush(s));
    }
    this.#batchBytes += frame.length;
    return s.write(frame);
  }

  /** Ends the batch: the corked frames leave as one write (one SSL_write, records of up to 16 KiB). */
  #flush(s: Duplex): void {
    wireStats.socketWrites++;
    wireStats.tlsRecords += Math.ceil(this.#batchBytes / TLS_RECORD_MAX);
    this.#batchBytes = 0;
    if (!s.destroyed) s.uncork();
  }
}
