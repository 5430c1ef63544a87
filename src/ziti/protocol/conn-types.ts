/**
 * Layer 2: what a virtual connection (conn.ts) is made with (ConnInit), its states, and the bounds of its data path.
 */
import { ErrorCodes, ZitiError } from "../errors.js";

/** Largest plaintext carried in one Data message (the C SDK consolidates up to 31 KiB). */
export const MAX_DATA_CHUNK = 32 * 1024;
/** Messages held for a connection that is still connecting (legitimately: the rest of one socket read). */
export const MAX_HELD_MESSAGES = 1024;
/** A Data message of two pieces within this many bytes is joined before it is sealed (see dataMessages). */
const JOIN_BELOW = 4096;

/**
 * What was written, in order, as the bodies of Data messages of up to MAX_DATA_CHUNK bytes each: consecutive views
 * into the writes (a message may span several, such as an HTTP head and the start of its body), so that the frame
 * is where its bytes are first copied. Each piece is one more native cipher call when sealed (about a microsecond),
 * which costs more than copying a few KiB: a message of more than two pieces (a chunked body's framing around its
 * data), or of two within JOIN_BELOW bytes, comes joined into one.
 */
export function* dataMessages(chunks: readonly Buffer[]): Generator<{ pieces: Buffer[]; size: number }> {
  let pieces: Buffer[] = [];
  let size = 0;
  const take = () => {
    const joined = pieces.length > 2 || (pieces.length === 2 && size <= JOIN_BELOW);
    const out = { pieces: joined ? [Buffer.concat(pieces, size)] : pieces, size };
    pieces = [];
    size = 0;
    return out;
  };
  for (const chunk of chunks) {
    for (let off = 0; off < chunk.length;) {
      const n = Math.min(MAX_DATA_CHUNK - size, chunk.length - off);
      pieces.push(off === 0 && n === chunk.length ? chunk : chunk.subarray(off, off + n));
      size += n;
      off += n;
      if (size === MAX_DATA_CHUNK) yield take();
    }
  }
  if (size > 0) yield take();
}

export enum ConnState {
  /** Registered; waiting for the handshake (StateConnected / crypto keys). Inbound data is held. */
  Connecting = "connecting",
  Connected = "connected",
  Closed = "closed",
}

export const TRANSITIONS: Record<ConnState, readonly ConnState[]> = {
  [ConnState.Connecting]: [ConnState.Connected, ConnState.Closed],
  [ConnState.Connected]: [ConnState.Closed],
  [ConnState.Closed]: [],
};

export interface ConnInit {
  service: string;
  callerId?: string | undefined;
  circuitId?: string | undefined;
  /** "dial" for connections we dialed, "accepted" for those a listener accepted. */
  role: "dial" | "accepted";
  /** Accepted connections: the dialer's end-to-end key-exchange public key (32 bytes), as the router relayed it. */
  peerPublicKey?: Buffer | undefined;
  /** Accepted connections: the dialer's AppData, as the router relayed it (untrusted bytes). */
  appData?: Buffer | undefined;
  /** Accepted connections: DialerIdentityName (1035), asserted by v2.0+ routers only. */
  dialerIdentityName?: string | undefined;
}

/**
 * MULTIPART_MSG (edge Flags 16) says "this body is repeated u16 length + bytes": it decides how the plaintext is
 * split, yet the Flags travel outside the end-to-end encryption, so a router can set or clear it at will, and
 * splitting by lengths the sender never wrote silently drops bytes (each 2-byte length read is data lost). The C
 * SDK, the only one that sends it, does so only to a peer that set MULTIPART on a message of its own (a
 * capability, CONN_CAP_MASK in ziti-sdk-c library/connect.c); without it the C SDK sends one Data per write, as
 * Go always does. We never advertise MULTIPART, so no honest peer sends this flag to us: when it arrives a router
 * forged it (or a peer broke the protocol), and the connection fails loudly rather than guess how to split.
 */
export function multipartRefused(service: string, connId: number, bodyBytes: number): ZitiError {
  return new ZitiError(
    ErrorCodes.PROTOCOL_ERROR,
    `${service} connection ${connId}: a Data message (${bodyBytes} bytes) arrived flagged MULTIPART_MSG, ` +
      "which this SDK never asks for; the flag is outside the end-to-end encryption, so it was forged on the way " +
      "or the peer broke the protocol. The connection was closed rather than re-split the data",
  );
}
