/**
 * Layer 2: what this process's router channels put on the wire and took off it, counted for the benches (issue
 * 23: the waits of one scrape). Plain counters, bumped by channel.ts and xgress-circuit.ts: an increment each, no
 * allocation, no timer. Nothing in the SDK reads them.
 *
 * Readers outside the SDK subscribe to the diagnostics channel `scrapez:ziti:wire-stats` before the SDK loads (a
 * preload, e.g. bench/wire-probe.mjs through `node --import`): the module publishes its one counters object there
 * when it is first imported, and the subscriber keeps the reference and reads it whenever it likes.
 */
import diagnostics_channel from "node:diagnostics_channel";

export interface WireStats {
  /** Channel messages written, and their encoded bytes. */
  framesSent: number;
  bytesSent: number;
  /** Writes handed to the router sockets (TLS: one SSL_write each, so about one record per 16 KiB of each). */
  socketWrites: number;
  /** TLS records those writes made: each write is cut into records of at most 16 KiB. */
  tlsRecords: number;
  framesReceived: number;
  bytesReceived: number;
  /** Socket reads (chunks) the channels decoded. */
  socketReads: number;
  /** SDK flow control: payloads sent (new and retransmitted), retransmissions among them, payloads received. */
  payloadsSent: number;
  retransmits: number;
  payloadsReceived: number;
  /** Acknowledgement messages sent and received, and the sequences they carried. */
  acksSent: number;
  ackSequencesSent: number;
  acksReceived: number;
}

export const wireStats: WireStats = {
  framesSent: 0,
  bytesSent: 0,
  socketWrites: 0,
  tlsRecords: 0,
  framesReceived: 0,
  bytesReceived: 0,
  socketReads: 0,
  payloadsSent: 0,
  retransmits: 0,
  payloadsReceived: 0,
  acksSent: 0,
  ackSequencesSent: 0,
  acksReceived: 0,
};

/** The largest TLS record's plaintext (TLS 1.2 and 1.3). */
export const TLS_RECORD_MAX = 16 * 1024;

diagnostics_channel.channel("scrapez:ziti:wire-stats").publish(wireStats);
