/**
 * The process-wide policy for what escapes (docs/reliability.md, "What happens when something escapes").
 *
 * Nothing a peer sends may reach these handlers: every path that handles a peer's input (configs, identity files,
 * HTTP clients, dialers, bound services, exporters, routers' frames) catches its own errors and answers or closes
 * that one peer. So an exception or rejection that does arrive here is a bug in scrapez, and the process state is
 * no longer known to be sound. We write one structured line (what, where, the error's code, message and stack)
 * and exit with 70 (EX_SOFTWARE) at once, without a graceful shutdown, so the supervisor (Kubernetes, systemd)
 * restarts a clean process. Not 1: that is what a bad config or an invalid identity file exits with.
 */
import { writeSync } from "node:fs";

/** EX_SOFTWARE from sysexits.h: an internal software error. */
export const FATAL_EXIT_CODE = 70;

export type FatalOrigin = "uncaughtException" | "unhandledRejection";

/** The one JSON log line (same shape as src/common/log.ts's lines, level "fatal"). */
export function fatalLine(origin: FatalOrigin, err: unknown, component: string, now = new Date()): string {
  const e = err instanceof Error ? (err as Error & { code?: unknown }) : undefined;
  const fields: Record<string, unknown> = {
    time: now.toISOString(),
    level: "fatal",
    msg:
      origin === "unhandledRejection"
        ? "unhandled promise rejection: a bug in scrapez; exiting so the supervisor restarts it"
        : "uncaught exception: a bug in scrapez; exiting so the supervisor restarts it",
    component,
    origin,
    pid: process.pid,
    exitCode: FATAL_EXIT_CODE,
  };
  if (e) {
    fields.error = e.name;
    if (e.code !== undefined) fields.code = String(e.code);
    fields.reason = e.message;
    if (e.cause !== undefined) fields.cause = e.cause instanceof Error ? e.cause.message : safeString(e.cause);
    fields.stack = e.stack;
  } else {
    fields.error = typeof err;
    fields.reason = safeString(err);
  }
  return `${JSON.stringify(fields)}\n`;
}

function safeString(v: unknown): string {
  try {
    return typeof v === "string" ? v : (JSON.stringify(v) ?? String(v));
  } catch {
    return Object.prototype.toString.call(v);
  }
}

export interface FatalHandlerOptions {
  /** Which part of scrapez was running (the subcommand), read when something escapes. */
  component: () => string;
  /** Default: a synchronous write to stderr (the line is out before the process ends). */
  write?: (line: string) => void;
  /** Default: process.exit. */
  exit?: (code: number) => void;
}

/** The handler both events call. Writes once and exits; a second escape while doing so just exits. */
export function makeFatalHandler(opts: FatalHandlerOptions): (err: unknown, origin: FatalOrigin) => void {
  const write = opts.write ?? ((line: string) => void writeSync(2, line));
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  let handling = false;
  return (err, origin) => {
    if (handling) return exit(FATAL_EXIT_CODE);
    handling = true;
    try {
      let component = "scrapez";
      try {
        component = opts.component();
      } catch {
        /* keep the default */
      }
      write(fatalLine(origin, err, component));
    } catch {
      /* nothing more we can do: exit anyway */
    } finally {
      exit(FATAL_EXIT_CODE);
    }
  };
}

/** Installs the policy on this process (once, from the CLI's entry point; never from the library). */
export function installFatalHandlers(component: () => string): void {
  const handle = makeFatalHandler({ component });
  process.on("uncaughtException", (err) => handle(err, "uncaughtException"));
  process.on("unhandledRejection", (reason) => handle(reason, "unhandledRejection"));
}
