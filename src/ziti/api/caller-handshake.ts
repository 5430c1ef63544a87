/**
 * The caller-proof exchange on a connection (the format and its reasoning: caller-proof.ts), both sides:
 *
 * - dialer: `proveToHost` once the dial is connected, while the caller's writes are held (holdWrites). It waits
 *   for the host's stream header (sent right after the host accepted, so it follows StateConnected closely; with
 *   SDK flow control one round trip later, since a host sends nothing before the dialer's CircuitStart). A header
 *   with HOST_HELLO in its Data is a scrapez host: the proof goes out as our first encrypted message, and the host's
 *   stream must end with a FINAL (expectFinal). A bare header is a Go or C host: nothing is sent. Then the held
 *   writes go out. The dial itself does not wait for any of this; a request could not go out sooner anyway.
 * - host: `armProofExchange` before the accepted connection starts (our hello rides with our header), then
 *   `acceptProof` reads the dialer's first message as its proof, before the application sees the connection.
 */
import { ErrorCodes, ZitiError } from "../errors.js";
import type { ZitiConnection } from "../protocol/conn.js";
import { HOST_HELLO, readProofMarker, type CallerProofVerifier, type CallerProver } from "./caller-proof.js";

/**
 * How long a host waits for the proof of a dialer that announced one before handing the connection on unverified.
 * An honest dialer's request is queued behind its proof, so waiting costs it nothing, while handing it on too early
 * costs it its verification (a 403 where its key is pinned). With SDK flow control a burst of new circuits makes the
 * router drop payloads (its queue towards an SDK holds a few messages) and retransmission recovers them after up to
 * ~3 s (0.2 + 0.4 + 0.8 + 1.6 s); 100 concurrent dials on the real overlay saw 3-6 proofs arrive after 5 s. How many
 * connections may wait at once is bounded by the listener (MAX_PENDING_PROOFS).
 */
export const PROOF_WAIT_MS = 15_000;

/** Dialer: proves our key to a scrapez host on `conn` (a no-op toward other hosts). Rejects with a ZitiError. */
export async function proveToHost(
  conn: ZitiConnection,
  prover: CallerProver,
  service: string,
  deadline: number,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      conn.whenPeerHeader(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new ZitiError(
                ErrorCodes.DIAL_TIMEOUT,
                `dial ${service}: the host sent no end-to-end stream header in time`,
              ),
            ),
          Math.max(1, deadline - Date.now()),
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
  const hello = conn.e2e.peerHello;
  if (!hello) return; // a Go or C host (or one that does not read the marker): no proof, as before
  if (!hello.equals(HOST_HELLO)) {
    throw new ZitiError(
      ErrorCodes.PROTOCOL_ERROR,
      `dial ${service}: the host sent an unknown greeting with its stream header (${hello.length} bytes)`,
    );
  }
  // A scrapez host ends its stream with a secretstream FINAL before FIN: without it, its answer was cut short.
  conn.expectFinal = true;
  const keys = conn.e2e.keys;
  const hostHeader = conn.e2e.peerHeader;
  const dialerHeader = conn.e2e.localHeader;
  if (!keys || !hostHeader || !dialerHeader) throw new ZitiError(ErrorCodes.CRYPTO_FAILED, `dial ${service}: no keys`);
  const proof = await prover.makeAsync({ service, dialerKx: keys.local, hostKx: keys.peer, hostHeader, dialerHeader });
  // The caller's writes wait for this (ZitiConnection.holdWrites): the proof is our first message.
  await conn.sendFirst(proof);
}

/** Host, before the accepted connection starts: a dialer that announced a proof gets our hello; its first message is kept. */
export function armProofExchange(conn: ZitiConnection): void {
  if (readProofMarker(conn.appData).ok) conn.setFirstMessages({ hello: HOST_HELLO, capture: true });
}

/**
 * Who is calling on an accepted connection: the router-asserted DialerIdentityName (v2.0+ routers only) and/or
 * the pin of a key whose caller proof (the dialer's first encrypted message, bound to this connection's keys and
 * stream headers: caller-proof.ts) verified against our CA bundle. Resolves once known, before the connection
 * is handed on; never rejects: failures (a CA bundle `verifier` cannot use included) leave the caller unverified
 * with `callerProofError` saying why.
 */
export async function verifyCaller(conn: ZitiConnection, verifier: () => CallerProofVerifier): Promise<void> {
  if (conn.dialerIdentityName) {
    conn.verifiedCaller = conn.dialerIdentityName;
    conn.callerVerifiedBy = "router";
  }
  try {
    await acceptProof(conn, verifier());
  } catch (err) {
    conn.callerProofError = `the caller proof could not be checked: ${(err as Error).message}`;
  }
}

/**
 * Host, after start and before the application sees the connection: sets callerKey / callerVerifiedBy (and
 * expectFinal) from the dialer's proof, or callerProofError. Resolves at once when no proof is to come. Never rejects.
 */
export async function acceptProof(
  conn: ZitiConnection,
  verifier: CallerProofVerifier,
  waitMs = PROOF_WAIT_MS,
): Promise<void> {
  const marker = readProofMarker(conn.appData);
  if (!marker.ok) {
    conn.callerProofError = marker.reason;
    return;
  }
  if (!conn.encrypted) {
    conn.callerProofError = "the connection is not end-to-end encrypted, so a caller proof cannot be bound to it";
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  const proof = await Promise.race([
    conn.e2e.firstMessage(),
    new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), waitMs);
    }),
  ]);
  clearTimeout(timer);
  if (proof === "late") {
    conn.callerProofError = `no caller proof within ${waitMs / 1000} s of the connection`;
    return;
  }
  const keys = conn.e2e.keys;
  const r = verifier.verify(proof, {
    service: conn.service,
    dialerKx: keys?.peer,
    hostKx: keys?.local,
    hostHeader: conn.e2e.localHeader,
    dialerHeader: conn.e2e.peerHeader,
  });
  if (!r.ok) {
    conn.callerProofError = r.reason;
    return;
  }
  conn.callerKey = r.spkiSha256;
  conn.callerVerifiedBy = "proof"; // the stronger check: end to end, whatever a router asserted
  // A verified scrapez dialer ends every stream with a secretstream FINAL before FIN: from it a FIN without
  // FINAL is a truncated stream (ZITI_STREAM_TRUNCATED), not a clean end.
  conn.expectFinal = true;
}
