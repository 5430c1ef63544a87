/**
 * Probes without ports: the running `scrapez bind` rewrites a small JSON status file (atomically), and
 * `scrapez probe` reads it, for Kubernetes exec probes.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { createHash } from "node:crypto";
import { join, resolve } from "node:path";

export interface StatusFile {
  pid: number;
  updatedAt: string;
  authenticated: boolean;
  /** Why it is not authenticated yet (the last failure: unreachable, or refused by the controller). */
  reason?: string;
  /** "oidc" or "legacy" once authenticated. */
  authMode?: string;
  /** When the identity's certificate expires (ISO 8601); moves forward when it is renewed. */
  certExpiresAt?: string;
  ready: boolean;
  services: Record<string, { state: string; lastError?: string }>;
}

/** How often the running process rewrites the file, and how old it may be before `--live` fails. */
export const STATUS_INTERVAL_MS = 10_000;
export const STATUS_STALE_MS = 3 * STATUS_INTERVAL_MS;
/** A service's state change reaches the file within this (changes in that time are written together). */
export const STATUS_COALESCE_MS = 250;

/** Per config file, so several scrapez bind processes on one host do not share a status file. */
export function defaultStatusFile(configFile: string): string {
  const key = createHash("sha256").update(resolve(configFile)).digest("hex").slice(0, 12);
  return join(tmpdir(), `scrapez-bind-${key}.status.json`);
}

export function writeStatus(file: string, s: StatusFile): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(s, null, 2) + "\n", { mode: 0o644 });
  renameSync(tmp, file);
}

export type ProbeResult = { ok: true; detail: string } | { ok: false; detail: string };

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** `live`: the process is running and refreshed the file recently. `ready`: live, authenticated, all services bound. */
export function probe(file: string, kind: "live" | "ready", now = Date.now()): ProbeResult {
  let s: StatusFile;
  try {
    s = JSON.parse(readFileSync(file, "utf8")) as StatusFile;
  } catch (err) {
    return {
      ok: false,
      detail: `no status at ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): scrapez bind has not started`,
    };
  }
  const age = now - Date.parse(s.updatedAt);
  if (!alive(s.pid)) return { ok: false, detail: `scrapez bind (pid ${s.pid}) is not running` };
  if (!(age <= STATUS_STALE_MS))
    return { ok: false, detail: `status is ${Math.round(age / 1000)}s old: scrapez bind is stuck` };
  if (kind === "live") return { ok: true, detail: `live (pid ${s.pid})` };
  if (!s.authenticated) {
    return {
      ok: false,
      detail: `not authenticated to the controller yet${typeof s.reason === "string" ? `: ${s.reason}` : ""}`,
    };
  }
  const notBound = Object.entries(s.services).filter(([, v]) => v.state !== "bound");
  if (notBound.length > 0 || !s.ready) {
    return {
      ok: false,
      detail: `not bound: ${notBound.map(([k, v]) => `${k} (${v.state}${v.lastError ? `: ${v.lastError}` : ""})`).join(", ")}`,
    };
  }
  return { ok: true, detail: `ready: ${Object.keys(s.services).length} service(s) bound` };
}
