/**
 * Layer 2: when an SDK-flow-control circuit (xgress-circuit.ts) acknowledges what it received. Acknowledgements of
 * data wait a little, as TCP delays its ACKs: for more payloads to cover (one ack carries all their sequences and
 * the newest RTT echo), or for a payload of our own to leave with (the circuit flushes before it sends; the channel
 * writes what is sent in one turn as one socket write, channel-writer.ts). A pooled scrape's answer arrives in two or
 * three payloads and the next request follows within a few ms, so its ack rides with that request instead of being
 * one more frame (a write, a TLS record, a router hop) per payload.
 */

/**
 * How long an acknowledgement of data may wait. Far below the retransmission timeout's floor (100 ms, xgress.ts) and
 * the sender's window (128 KiB at the start) is not held up by it: see XG_ACK_BYTES.
 */
export const XG_ACK_DELAY_MS = 10;
/** Bytes received unacknowledged past which the ack goes at the end of the turn, so a sender's window never runs dry. */
export const XG_ACK_BYTES = 64 * 1024;

/** The acknowledgements a circuit owes: sequences, the newest RTT echo, and when they go out. */
export class XgAckQueue {
  #sequences: number[] = [];
  #rtt: number | undefined;
  #bytes = 0;
  #timer: NodeJS.Timeout | undefined;
  #soon = false;
  readonly #send: (sequences: number[], rtt: number | undefined) => void;

  /** `send` writes one ack for `sequences` (never called with none). */
  constructor(send: (sequences: number[], rtt: number | undefined) => void) {
    this.#send = send;
  }

  get pending(): number {
    return this.#sequences.length;
  }

  /**
   * Owes an ack for `sequence`. `urgent` (a duplicate, a gap, a start or end, a draining circuit) or XG_ACK_BYTES
   * owed: at the end of the current turn (a microtask: the channel dispatches a whole socket read synchronously, so
   * the payloads of one read still get one ack). Otherwise within XG_ACK_DELAY_MS, or sooner with our next payload.
   */
  add(sequence: number, rtt: number | undefined, bytes: number, urgent: boolean): void {
    this.#sequences.push(sequence);
    if (rtt !== undefined) this.#rtt = rtt;
    this.#bytes += bytes;
    if (urgent || this.#bytes >= XG_ACK_BYTES) {
      if (this.#soon) return;
      this.#soon = true;
      queueMicrotask(() => this.flush());
    } else if (!this.#timer && !this.#soon) {
      this.#timer = setTimeout(() => this.flush(), XG_ACK_DELAY_MS);
      this.#timer.unref();
    }
  }

  /** Sends what is owed now, as one ack (nothing if nothing is owed). */
  flush(): void {
    this.#soon = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const sequences = this.#sequences;
    if (sequences.length === 0) return;
    const rtt = this.#rtt;
    this.#sequences = [];
    this.#rtt = undefined;
    this.#bytes = 0;
    this.#send(sequences, rtt);
  }
}
