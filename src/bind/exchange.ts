/**
 * A passthrough target's overlay connection: a raw byte pipe to the exporter (the scraper's TLS runs end to end),
 * counted, timed and logged as a scrape with its caller; and the in-flight tracking HTTP exchanges (./relay.ts)
 * share with it.
 */
import net from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "../common/log.js";
import type { OverlayConnection } from "../overlay/types.js";
import { callerOf } from "./admission.js";
import type { BindMetrics } from "./metrics.js";
import { audit } from "./respond.js";
import type { ServiceRuntime } from "./runtime.js";

export interface ExchangeDeps {
  metrics: BindMetrics;
  log: Logger;
  /** A graceful stop has begun: new requests are refused. */
  draining: () => boolean;
  /** Counts `key` (a response, a relay exchange, or a passthrough connection) as in flight on `conn` until it closes. */
  track: (key: InFlight, conn: Duplex) => void;
}

/** What is counted as in flight: anything that says when it is over. */
export interface InFlight {
  once(event: "close", listener: () => void): unknown;
}

export class Exchanges {
  readonly #deps: ExchangeDeps;

  constructor(deps: ExchangeDeps) {
    this.#deps = deps;
  }

  /** Counts a relay exchange (./relay.ts) as in flight on `conn` until it closes. */
  track(key: InFlight, conn: Duplex): void {
    this.#deps.track(key, conn);
  }

  /** Raw byte pipe to the upstream (the scraper's TLS runs end to end); the caller allow-list still applies. */
  passthrough(rt: ServiceRuntime, c: OverlayConnection): void {
    const t = rt.target;
    const who = callerOf(c, t.service, t.allow);
    const caller = who.caller;
    const started = Date.now();
    if (who.refusal) {
      this.#deps.log.info("connection refused", { ...audit(who), service: t.service, reason: who.refusal });
      this.#deps.metrics.scrapes.inc({ service: t.service, caller: who.label, status: "403" });
      c.destroy();
      return;
    }
    this.#deps.track(c, c);
    const up = net.connect({ host: rt.upstream.hostname, port: rt.upstream.port });
    up.setTimeout(t.timeoutSeconds * 1000, () => up.destroy(new Error("idle timeout")));
    up.on("error", (err: NodeJS.ErrnoException) => {
      this.#deps.metrics.upstreamErrors.inc({
        service: t.service,
        kind: err.code === "ECONNREFUSED" ? "refused" : "other",
      });
      this.#deps.log.warn("passthrough upstream error", { caller, service: t.service, reason: err.message });
      c.destroy();
    });
    c.pipe(up);
    up.pipe(c);
    c.once("close", () => up.destroy());
    up.once("close", () => {
      c.destroy();
      this.#deps.metrics.scrapes.inc({ service: t.service, caller: who.label, status: "tunnel" });
      this.#deps.log.info("scrape", {
        ...audit(who),
        service: t.service,
        mode: "passthrough",
        bytes: c.bytesWritten,
        duration_ms: Date.now() - started,
      });
    });
  }
}
