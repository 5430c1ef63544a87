/**
 * Probes without ports: the running `scrapez bind` rewrites a small JSON status file (atomically), and
 * `scrapez probe` reads it, for Kubernetes exec probes.
 *
 * The file is the process's own: written 0600 through a temporary file of an unguessable name (created with
 * O_EXCL|O_NOFOLLOW, so nothing planted in the directory is written through) renamed over it (rename replaces a
 * symlink at the path, it never follows it), and read with O_NOFOLLOW. By default it lives in a directory of
 * this uid's own under the temp dir, `$TMPDIR/scrapez-<uid>/` (0700), which is refused when it is a symlink, not
 * ours, or open to others: in a shared /tmp another user could otherwise choose what the probe reads.
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { createHash, randomBytes } from "node:crypto";
import { basename, dirname, join, resolve } from "node:path";

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

/** O_NOFOLLOW where the platform has it (not on Windows). */
const NOFOLLOW = constants.O_NOFOLLOW ?? 0;

/** This process's uid (undefined on Windows). */
const uid = (): number | undefined => process.getuid?.();

/** The private directory of this uid's default status files: `$TMPDIR/scrapez-<uid>`. */
export function privateStatusDir(): string {
  const u = uid();
  return join(tmpdir(), u === undefined ? "scrapez" : `scrapez-${u}`);
}

/**
 * Per config file, so several scrapez bind processes on one host do not share a status file; in this uid's
 * private directory (see privateStatusDir), so `scrapez probe --config F` finds it with the same TMPDIR and user.
 */
export function defaultStatusFile(configFile: string): string {
  const key = createHash("sha256").update(resolve(configFile)).digest("hex").slice(0, 12);
  return join(privateStatusDir(), `scrapez-bind-${key}.status.json`);
}

/**
 * Why `dir` is not a private directory of this uid (a symlink, someone else's, open to others); undefined when it
 * is private, or not there at all (then there is nothing in it to distrust).
 */
export function notPrivate(dir: string): string | undefined {
  let st;
  try {
    st = lstatSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ENOENT" ? undefined : `cannot read ${dir}: ${code ?? (err as Error).message}`;
  }
  if (st.isSymbolicLink()) return `${dir} is a symlink, not a directory of this user's own`;
  if (!st.isDirectory()) return `${dir} is not a directory`;
  const u = uid();
  if (u !== undefined && st.uid !== u) return `${dir} belongs to uid ${st.uid}, not to this user (uid ${u})`;
  if (u !== undefined && st.mode & 0o077) {
    return `${dir} has mode 0${(st.mode & 0o777).toString(8)}, open to others: it must be 0700 (chmod 700 it)`;
  }
  return undefined;
}

/** Creates `dir` 0700 if it is missing; throws when it is there but not private (see notPrivate). */
export function ensurePrivateDir(dir: string): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const why = notPrivate(dir);
  if (why) throw new Error(`refusing to keep the status file there: ${why}`);
}

/**
 * Writes the status atomically, mode 0600, never through a symlink. `privateDir`: the file's directory must be
 * this uid's private one (created if missing): the default location, in a shared temp dir.
 */
export function writeStatus(file: string, s: StatusFile, opts: { privateDir?: boolean } = {}): void {
  const dir = dirname(file);
  if (opts.privateDir) ensurePrivateDir(dir);
  const tmp = join(dir, `.${basename(file)}.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | NOFOLLOW, 0o600);
  try {
    try {
      writeSync(fd, JSON.stringify(s, null, 2) + "\n");
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      /* already renamed or gone */
    }
    throw err;
  }
}

/** Reads a status file that is a regular file (a symlink at the path is not followed). */
function readStatus(file: string): string {
  const fd = openSync(file, constants.O_RDONLY | NOFOLLOW);
  try {
    if (!fstatSync(fd).isFile()) throw new Error("not a regular file");
    return readFileSync(fd, "utf8");
  } finally {
    closeSync(fd);
  }
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

/**
 * `live`: the process is running and refreshed the file recently. `ready`: live, authenticated, all services bound.
 * `privateDir`: the file is at its default place, whose directory must be private (see writeStatus).
 */
export function probe(
  file: string,
  kind: "live" | "ready",
  now = Date.now(),
  opts: { privateDir?: boolean } = {},
): ProbeResult {
  const why = opts.privateDir ? notPrivate(dirname(file)) : undefined;
  if (why) return { ok: false, detail: `status at ${file} not trusted: ${why}` };
  let s: StatusFile;
  try {
    s = JSON.parse(readStatus(file)) as StatusFile;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ELOOP") return { ok: false, detail: `${file} is a symlink: not followed (scrapez never writes one)` };
    return {
      ok: false,
      detail: `no status at ${file} (${code ?? (err as Error).message}): scrapez bind has not started`,
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
