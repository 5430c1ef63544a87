/**
 * Text formatting shared by the proxy's status page and `scrapez status` (a client of its /status.json): durations,
 * sizes and ages as people read them, and peer-controlled text made safe to keep and show.
 */

/** The longest error text kept (characters). */
export const ERROR_TEXT_MAX = 300;

/**
 * Makes peer-controlled text safe to keep and show: control characters (terminal escapes too) become spaces,
 * runs of white space one space, and the result is capped at `max` characters.
 */
export function cleanText(s: string, max = ERROR_TEXT_MAX): string {
  const t = s
    .replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, " ")
    .replace(/\s+/g, " ")
    .trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

export function formatMs(ms: number | null): string {
  if (ms === null) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 2)} s`;
  return `${ms >= 10 ? Math.round(ms) : ms.toFixed(1)} ms`;
}

export function formatBytes(n: number | null): string {
  if (n === null) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function formatAge(seconds: number | null): string {
  if (seconds === null) return "never";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  return `${Math.floor(seconds / 3600)} h ago`;
}
