/** scrapez bind's self-metrics, in a private registry (served as an overlay service when `self` is configured). */
import http from "node:http";
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export class BindMetrics {
  readonly registry = new Registry();
  readonly scrapes = new Counter({
    name: "scrapez_bind_scrapes_total",
    help: "Scrapes answered, by service, caller identity and HTTP status.",
    labelNames: ["service", "caller", "status"] as const,
    registers: [this.registry],
  });
  readonly duration = new Histogram({
    name: "scrapez_bind_scrape_duration_seconds",
    help: "Time from request to the end of the response, by service.",
    labelNames: ["service"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly upstreamErrors = new Counter({
    name: "scrapez_bind_upstream_errors_total",
    help: "Failed upstream requests, by service and kind (refused, timeout, invalid, other).",
    labelNames: ["service", "kind"] as const,
    registers: [this.registry],
  });
  readonly bound = new Gauge({
    name: "scrapez_bind_bound",
    help: "1 while the service is bound on at least one edge router.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
  readonly rebinds = new Counter({
    name: "scrapez_bind_rebinds_total",
    help: "Times a service was bound again after losing every edge router.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
  readonly connections = new Gauge({
    name: "scrapez_bind_connections",
    help: "Overlay connections open, by service.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
  readonly connectionsRefused = new Counter({
    name: "scrapez_bind_connections_refused_total",
    help: "Overlay connections closed at once because every one of the service's maxConnections slots was busy or fairly held by other callers.",
    labelNames: ["service"] as const,
    registers: [this.registry],
  });
  readonly connectionsEvicted = new Counter({
    name: "scrapez_bind_connections_evicted_total",
    help: "Overlay connections closed to give their slot to a new one when the service was full, by service and reason (not_allowed, stalled, idle, fair_share).",
    labelNames: ["service", "reason"] as const,
    registers: [this.registry],
  });
  /** Where the certificate expiry comes from (set by BindServer). */
  certSource: { identityName: string; certExpiresAt?: Date } | undefined;
  readonly certExpiry: Gauge<"identity"> = new Gauge({
    name: "scrapez_identity_cert_expiry_timestamp_seconds",
    help: "When the identity's certificate expires (Unix seconds); it moves forward when scrapez renews it.",
    labelNames: ["identity"] as const,
    registers: [this.registry],
    collect: () => {
      this.certExpiry.reset();
      const s = this.certSource;
      if (s?.certExpiresAt) this.certExpiry.set({ identity: s.identityName }, s.certExpiresAt.getTime() / 1000);
    },
  });
  readonly connectionsExpired = new Counter({
    name: "scrapez_bind_connections_expired_total",
    help: "Overlay connections closed by a deadline, by service and reason (headers_timeout, request_timeout, idle_timeout, too_many_pipelined).",
    labelNames: ["service", "reason"] as const,
    registers: [this.registry],
  });
}

/** The `status` label: a known HTTP status code, else "other" (an exporter must not grow the label set). */
export function statusLabel(status: number): string {
  return http.STATUS_CODES[status] ? String(status) : "other";
}
