/**
 * The CLI's structured logger: one record per line on stderr, with a level filter, as JSON (the default) or logfmt
 * (`--log.format`, as Prometheus and its exporters offer). Secrets are never passed to it (callers log names and
 * outcomes, not tokens or keys).
 */
/** The levels, least severe first, and the formats: the config schemas and flags take them from here. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export const LOG_FORMATS = ["json", "logfmt"] as const;
export type Level = (typeof LOG_LEVELS)[number];
export type Format = (typeof LOG_FORMATS)[number];
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
  /** Whether a record at `level` would be written (a record built per request is not built for nothing). */
  enabled(level: Level): boolean;
  /** Changes the level of this logger and of every logger made from it (a config reload). */
  setLevel(level: Level): void;
  /** Changes the line format of this logger and of every logger made from it (a config reload). */
  setFormat(format: Format): void;
}

export function parseLevel(v: string | undefined, fallback: Level = "info"): Level {
  return v && v in ORDER ? (v as Level) : fallback;
}

export function createLogger(
  level: Level = "info",
  base: Record<string, unknown> = {},
  out: (line: string) => void = (l) => process.stderr.write(l),
  format: Format = "json",
): Logger {
  return make({ min: ORDER[level], format }, base, out);
}

/** A logfmt key: what logfmt parsers accept as an identifier (anything else becomes `_`). */
function logfmtKey(k: string): string {
  return k.replace(/[^A-Za-z0-9_.\-/]/g, "_") || "_";
}

/** A logfmt value: bare when it is a plain word, else a JSON string (quotes and control characters escaped). */
function logfmtValue(v: unknown): string {
  const s =
    typeof v === "string"
      ? v
      : v === undefined
        ? ""
        : v instanceof Error
          ? v.message
          : typeof v === "object" && v !== null
            ? JSON.stringify(v)
            : String(v);
  return /^[^\s"=\\\u0000-\u001f\u007f]+$/.test(s) ? s : JSON.stringify(s);
}

/** One record as a logfmt line: `time=... level=info msg="..." key=value ...` (later keys win, as in JSON). */
export function formatLogfmt(record: Record<string, unknown>): string {
  return (
    Object.entries(record)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${logfmtKey(k)}=${logfmtValue(v)}`)
      .join(" ") + "\n"
  );
}

/** `shared` is one object for a logger and all its children, so setLevel and setFormat reach them all. */
function make(
  shared: { min: number; format: Format },
  base: Record<string, unknown>,
  out: (line: string) => void,
): Logger {
  const emit = (lvl: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[lvl] < shared.min) return;
    const record = { time: new Date().toISOString(), level: lvl, msg, ...base, ...fields };
    out(shared.format === "logfmt" ? formatLogfmt(record) : JSON.stringify(record) + "\n");
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (f) => make(shared, { ...base, ...f }, out),
    enabled: (l) => ORDER[l] >= shared.min,
    setLevel: (l) => {
      shared.min = ORDER[l];
    },
    setFormat: (f) => {
      shared.format = f;
    },
  };
}
