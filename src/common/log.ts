/**
 * The CLI's structured logger: one JSON object per line on stderr, with a level filter. Secrets are never passed
 * to it (callers log names and outcomes, not tokens or keys).
 */
export type Level = "debug" | "info" | "warn" | "error";
const ORDER: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
  /** Changes the level of this logger and of every logger made from it (a config reload). */
  setLevel(level: Level): void;
}

export function parseLevel(v: string | undefined, fallback: Level = "info"): Level {
  return v && v in ORDER ? (v as Level) : fallback;
}

export function createLogger(
  level: Level = "info",
  base: Record<string, unknown> = {},
  out: (line: string) => void = (l) => process.stderr.write(l),
): Logger {
  return make({ min: ORDER[level] }, base, out);
}

/** `shared` is one object for a logger and all its children, so setLevel reaches them all. */
function make(shared: { min: number }, base: Record<string, unknown>, out: (line: string) => void): Logger {
  const emit = (lvl: Level, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[lvl] < shared.min) return;
    out(JSON.stringify({ time: new Date().toISOString(), level: lvl, msg, ...base, ...fields }) + "\n");
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (f) => make(shared, { ...base, ...f }, out),
    setLevel: (l) => {
      shared.min = ORDER[l];
    },
  };
}
