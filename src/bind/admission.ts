/**
 * Who may use an overlay connection on the bind side: the caller as the SDK verified it (never the self-declared
 * CallerId) against a service's allow-list, and one of the service's connection slots (./slots.ts) for each new
 * connection, with evictions and refusals counted and logged (rarely: at most once per 10 s per service each).
 */
import type http from "node:http";
import type { Logger } from "../common/log.js";
import type { OverlayConnection } from "../overlay/types.js";
import { resolveCaller, type Caller } from "./caller.js";
import type { BindAllow } from "./config.js";
import type { Expiry } from "./guard.js";
import type { BindMetrics } from "./metrics.js";
import { SlotTable, callerGroup, type SlotCaller } from "./slots.js";

/**
 * Who is calling on an overlay connection, from what the SDK verified, and whether `allow` admits it. Sets the
 * connection's `verifiedCaller` to the admitted name.
 */
export function callerOf(socket: unknown, service: string, allow: BindAllow | undefined): Caller {
  const c = socket as Partial<OverlayConnection>;
  const who = resolveCaller(service, allow, {
    claimed: c.callerId,
    routerName: c.dialerIdentityName,
    key: c.callerKey,
    proofError: c.callerProofError,
  });
  if (who.name) (socket as OverlayConnection).verifiedCaller = who.name;
  return who;
}

/**
 * A service's slot table. A connection whose exchange is over on our side (we ended our writing side, or destroyed
 * it) gives its slot back at once, though the SDK may wait for its circuit's last acknowledgements before 'close'.
 */
export function slotTable(cap: number): SlotTable<OverlayConnection> {
  return new SlotTable<OverlayConnection>({ cap, isDone: (c) => c.destroyed || c.writableEnded });
}

/** Tells the slot table when a request head is complete (the server's 'request') and when its exchange ends. */
export function trackExchanges(server: http.Server, slots: SlotTable<OverlayConnection>): void {
  server.prependListener("request", (req: http.IncomingMessage, res: http.ServerResponse) => {
    const c = req.socket as unknown as OverlayConnection;
    slots.requestStarted(c);
    res.once("close", () => slots.requestEnded(c));
  });
}

export class Admission {
  readonly #metrics: BindMetrics;
  readonly #log: Logger;
  /** When each rare warning was last logged, by service and kind. */
  readonly #logged = new Map<string, number>();

  constructor(metrics: BindMetrics, log: Logger) {
    this.#metrics = metrics;
    this.#log = log;
  }

  /**
   * Gives a new connection one of the service's slots, destroying the connection it displaces if the service was
   * full. False: every slot is busy or fairly held; the connection was closed at once and counted.
   */
  admit(
    slots: SlotTable<OverlayConnection>,
    service: string,
    allow: BindAllow | undefined,
    c: OverlayConnection,
  ): boolean {
    const caller: SlotCaller = {
      group: callerGroup({ key: c.callerKey, routerName: c.dialerIdentityName }),
      admitted: !resolveCaller(service, allow, {
        claimed: c.callerId,
        routerName: c.dialerIdentityName,
        key: c.callerKey,
        proofError: c.callerProofError,
      }).refusal,
    };
    const a = slots.admit(c, caller);
    if (!a.ok) {
      c.destroy();
      this.#metrics.connectionsRefused.inc({ service });
      this.#rareLog(`refused ${service}`, "connection refused: every connection slot of this service is busy", {
        service,
      });
      return false;
    }
    if (a.evicted) {
      a.evicted.conn.destroy();
      this.#metrics.connectionsEvicted.inc({ service, reason: a.evicted.reason });
      this.#rareLog(`evicted ${service}`, "connection evicted to make room for a new one", {
        service,
        reason: a.evicted.reason,
        group: caller.group,
      });
    }
    return true;
  }

  /** A connection closed by its deadlines (./guard.ts). */
  expired(service: string, kind: Expiry): void {
    this.#metrics.connectionsExpired.inc({ service, reason: kind });
    if (kind !== "idle_timeout") this.#log.info("connection closed", { service, reason: kind });
  }

  #rareLog(key: string, msg: string, fields: Record<string, unknown>): void {
    const now = Date.now();
    if ((this.#logged.get(key) ?? 0) + 10_000 <= now) {
      this.#logged.set(key, now);
      this.#log.warn(msg, fields);
    }
  }
}
