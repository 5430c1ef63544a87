/**
 * Layer 3: a context's dials. A dial finds the service and its Dial session (./service-directory.ts), tries the
 * session's routers over the dial channels (./router-pool.ts) within one deadline, and on services that require
 * encryption announces our caller proof and sends it once the host showed it is scrapez (./caller-handshake.ts).
 * A refused dial, or a session that lists no online router, is retried once with a fresh session.
 */
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError, isZitiError } from "../errors.js";
import type { ZitiConnection } from "../protocol/conn.js";
import { dialOnChannel } from "../protocol/edge.js";
import { proveToHost } from "./caller-handshake.js";
import { CallerProver, proofMarker } from "./caller-proof.js";
import type { SessionInfo } from "./controller-wire.js";
import type { Identity } from "./identity.js";
import type { RouterPool } from "./router-pool.js";
import type { ServiceDirectory } from "./service-directory.js";

const log = debug("context");

export interface DialOptions {
  /** Dial the terminator bound with this identity (a replica bound by edge identity). */
  identity?: string;
  timeoutMs?: number;
  /**
   * Sent to the hosting side as AppData. A plain object is JSON-encoded; on services that require encryption it
   * also carries the marker of our caller proof under the "scrapez" key, and a scrapez host then gets the proof as
   * our first encrypted message (see caller-proof.ts). A Buffer or string is sent as is, without a proof.
   */
  appData?: unknown;
}

export interface DialerOptions {
  dialTimeoutMs: number;
  /** Our identity's name as the controller knows it (the dial's caller id). */
  identityName: () => string;
}

export class Dialer {
  readonly #identity: Identity;
  readonly #directory: ServiceDirectory;
  readonly #pool: RouterPool;
  readonly #opts: DialerOptions;
  #prover: CallerProver | null | undefined;
  /** Dials made (each call of dial(), retries not counted). */
  #dials = 0;

  constructor(identity: Identity, directory: ServiceDirectory, pool: RouterPool, opts: DialerOptions) {
    this.#identity = identity;
    this.#directory = directory;
    this.#pool = pool;
    this.#opts = opts;
  }

  get dials(): number {
    return this.#dials;
  }

  /** The identity's certificate or key changed: caller proofs carry them, so the prover is made again. */
  forgetProver(): void {
    this.#prover = undefined;
  }

  /** The session's router URLs, those we already have a dial channel to first. */
  routerUrls(s: SessionInfo): string[] {
    const urls = s.edgeRouters.map((r) => r.urls.tls).filter((u): u is string => typeof u === "string");
    const has = (u: string) => Number(this.#pool.has(u, "dial"));
    return urls.sort((a, b) => has(b) - has(a));
  }

  /** Dials a service; resolves to a Duplex once the circuit is up. `assertReady` throws if the context is not. */
  async dial(service: string, opts: DialOptions, assertReady: () => void): Promise<ZitiConnection> {
    const timeoutMs = opts.timeoutMs ?? this.#opts.dialTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    this.#dials++;
    /** The session the last attempt used: a retry drops only that one (see ServiceDirectory.dropSession). */
    let used: SessionInfo | undefined;
    const attempt = async (): Promise<ZitiConnection> => {
      assertReady();
      const svc = await this.#directory.service(service, "Dial");
      const s = await this.#directory.session(svc, "Dial");
      used = s;
      const urls = this.routerUrls(s);
      if (urls.length === 0) {
        // A session's router list is the controller's view when it was made: one made while routers were
        // restarting lists none online for ever. Forget it, so the next attempt asks again.
        this.#directory.dropSession(service, "Dial", s);
        throw new ZitiError(
          ErrorCodes.NO_EDGE_ROUTERS,
          `no online edge router can serve "${service}" for "${this.#opts.identityName()}"`,
        );
      }
      let lastErr: unknown;
      for (const url of urls) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        try {
          const ch = await withTimeout(this.#pool.channel(url, "dial"), left, service);
          // Services that require encryption: we announce a caller proof, sent once the host showed it is scrapez.
          const prover = svc.encryptionRequired ? this.#proverFor(opts.appData) : undefined;
          const conn = await dialOnChannel(ch, {
            service,
            sessionToken: s.token,
            encrypt: svc.encryptionRequired,
            callerId: this.#opts.identityName(),
            terminatorIdentity: opts.identity,
            appData: prover ? proofMarker(opts.appData as object | undefined) : encodeAppData(opts.appData),
            acceptHello: prover !== undefined,
            timeoutMs: Math.max(1, deadline - Date.now()),
          });
          // Our writes wait until the proof went out (or the host proved to be no scrapez host); a failure there
          // (no stream header within the dial timeout, an unknown greeting) destroys the connection with its error.
          if (prover) conn.holdWrites(proveToHost(conn, prover, service, Date.now() + timeoutMs));
          return conn;
        } catch (err) {
          lastErr = err;
          // A refusal from the router (no terminator, ...) is the service's answer, not this router's fault.
          if (isZitiError(err, ErrorCodes.DIAL_FAILED) || isZitiError(err, ErrorCodes.DIAL_TIMEOUT)) throw err;
        }
      }
      // No listed router could be reached: the list may be stale too (routers moved or came back elsewhere).
      this.#directory.dropSession(service, "Dial", s);
      if (Date.now() >= deadline) {
        throw new ZitiError(ErrorCodes.DIAL_TIMEOUT, `dial ${service}: not connected within ${timeoutMs} ms`, {
          cause: lastErr,
        });
      }
      throw lastErr;
    };
    try {
      return await attempt();
    } catch (err) {
      // One retry with a fresh session, as the Go SDK does, when the router refused the dial (the session is no
      // good, or the circuit went to a terminator that was just going away: a host re-binding after a new API
      // session or a restart) or the session listed no online router (a fresh one may: routers came back).
      const retriable = isZitiError(err, ErrorCodes.DIAL_FAILED) || isZitiError(err, ErrorCodes.NO_EDGE_ROUTERS);
      if (retriable && Date.now() < deadline) {
        // "no terminators" while a host switches its binds over (a renewal, a restart) lasts a moment: wait a
        // little (bounded by the deadline) so the one retry does not land in the same gap.
        if (/no terminators/i.test((err as Error).message)) {
          await new Promise((r) => setTimeout(r, Math.min(500, Math.max(0, deadline - Date.now() - 1))));
        }
        this.#directory.dropSession(service, "Dial", used);
        return attempt();
      }
      throw err;
    }
  }

  /**
   * Our prover when this dial can carry a caller proof: the AppData marker merges into a plain-object `appData`
   * under the "scrapez" key; a Buffer/string (or any non-object) `appData` is the caller's own bytes, sent as is.
   */
  #proverFor(appData: unknown): CallerProver | undefined {
    if (appData !== undefined && !isPlainObject(appData)) return undefined;
    if (this.#prover === undefined) {
      try {
        this.#prover = new CallerProver(this.#identity);
      } catch (err) {
        log("no caller proofs: cannot use the identity's certificate and key: %s", (err as Error).message);
        this.#prover = null;
      }
    }
    return this.#prover ?? undefined;
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v) && !ArrayBuffer.isView(v);
}

function encodeAppData(v: unknown): Buffer | undefined {
  if (v === undefined) return undefined;
  if (Buffer.isBuffer(v)) return v;
  if (typeof v === "string") return Buffer.from(v);
  return Buffer.from(JSON.stringify(v));
}

function withTimeout<T>(p: Promise<T>, ms: number, service: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(
      () => reject(new ZitiError(ErrorCodes.DIAL_TIMEOUT, `dial ${service}: no router channel within ${ms} ms`)),
      ms,
    );
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e as Error);
      },
    );
  });
}
