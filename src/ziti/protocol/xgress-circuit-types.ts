/**
 * Layer 2: what an SDK-flow-control circuit (xgress-circuit.ts) is made with and reports: its states, its time
 * limits, the connection it reads and the hooks it acts through, its figures.
 */
import { ZitiError } from "../errors.js";
import type { Channel } from "./channel.js";
import type { Originator } from "./xgress.js";

/** The SDK-flow-control circuit of a connection (xgress.ts), next to the stream's own state. */
export enum XgState {
  /** Terminator: waiting for the initiator's CircuitStart before sending anything. */
  Starting = "starting",
  Open = "open",
  /** The stream was closed; our last payloads and the CircuitEnd are delivered (acknowledged) before XgClose. */
  Draining = "draining",
  Closed = "closed",
}

/** How long a closed connection may take to get its last payloads acknowledged (Go: MaxCloseWait 30 s). */
export const XG_MAX_CLOSE_WAIT_MS = 30_000;
/** How long a terminator waits for the initiator's CircuitStart (Go: CircuitStartTimeout 3 min). */
export const XG_CIRCUIT_START_TIMEOUT_MS = 180_000;

export interface XgInit {
  originator: Originator;
  /** XgressCtrlId / XgressAddress as the router sent them (kept for inspection; routing is by circuit id). */
  ctrlId: string;
  address: string;
}

/** SDK flow control figures of one connection. */
export interface XgStats {
  state: XgState;
  window: number;
  inFlightBytes: number;
  remoteBuffered: number;
  retransmits: number;
  duplicates: number;
  dropped: number;
  rttMs: number | undefined;
}

/** What the circuit reads of its connection (the connection itself). */
export interface CircuitConnection {
  readonly service: string;
  readonly connId: number;
  readonly circuitId: string | undefined;
  /** The stream is destroyed (the circuit may still be draining). */
  readonly destroyed: boolean;
  /** Bound and fill of the reader's buffer (what the receive window reports). */
  readonly maxBufferedBytes: number;
  readonly readableLength: number;
  destroy(err: Error): void;
}

/** What the circuit does to its connection: the connection's private side, handed over at construction. */
export interface CircuitHooks {
  readonly channel: Channel;
  /** The connection's stream state is Closed. */
  streamClosed(): boolean;
  /** One edge Data body with its edge Flags, in order. */
  deliver(body: Buffer, edgeFlags: number): void;
  /** The peer (or the router) ended the connection. */
  remoteClose(reason: string): void;
  /** Leaves the channel's table. */
  unregister(): void;
}

export function asZitiError(err: unknown, code: ZitiError["code"]): ZitiError {
  return err instanceof ZitiError ? err : new ZitiError(code, String((err as Error)?.message ?? err), { cause: err });
}
