/**
 * The scrape deadline, one rule for both hops. Prometheus sends its own scrape timeout in a header; each scrapez hop
 * that forwards the scrape stops a little before it, so its 504 (with the reason) reaches the scraper before the
 * scraper gives up and records a bare "context deadline exceeded". Each hop reserves `min(0.5 s, share x timeout)`:
 *
 * - the proxy, next to Prometheus, reserves 10 % (at most 0.5 s);
 * - the bind, one hop further, reserves 50 % (at most 0.5 s): on a short timeout its 504 must still cross the
 *   overlay and the proxy in time.
 *
 * Without the header (or with a value that is not a positive number) the hop's configured fallback applies. The
 * header is capped at `maxSeconds`: the dialer chooses it, and must not hold an exporter longer than allowed.
 */
export const SCRAPE_TIMEOUT_HEADER = "x-prometheus-scrape-timeout-seconds";

/** The share of the scraper's timeout each hop keeps for its own answer (capped at 0.5 s). */
export const RESERVE_SHARE = { proxy: 0.1, bind: 0.5 } as const;

export function scrapeDeadlineMs(
  header: string | string[] | undefined,
  fallbackSeconds: number,
  reserveShare: number,
  maxSeconds = 600,
): number {
  const v = Number(Array.isArray(header) ? header[0] : header);
  if (!Number.isFinite(v) || v <= 0) return Math.min(fallbackSeconds, maxSeconds) * 1000;
  const ms = Math.min(v, maxSeconds) * 1000;
  return Math.max(1, Math.round(ms - Math.min(500, ms * reserveShare)));
}
