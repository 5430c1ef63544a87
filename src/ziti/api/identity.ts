/**
 * Identity files as `ziti edge enroll` and the Go/C SDKs write them:
 *   { "ztAPI": "https://host:port/edge/client/v1", "ztAPIs": [...] | null, "configTypes": null,
 *     "id": { "cert": ..., "key": ..., "ca": ... }, "enableHa": false }
 * Each of cert/key/ca is `pem:<PEM>`, `file://<abs path>`, `file:<path>` or a bare path (relative to the file).
 */
import { X509Certificate, createPrivateKey, createPublicKey, randomBytes, type KeyObject } from "node:crypto";
import { open, readFile, rename, stat, unlink } from "node:fs/promises";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";

const log = debug("context");

/** The client API path every ztAPI ends with (older identity files carry only the origin). */
export const CLIENT_API_PATH = "/edge/client/v1";

export interface Identity {
  /** The controller's client API, e.g. `https://127.0.0.1:1280/edge/client/v1`. */
  ztAPI: string;
  /** HA controllers' client APIs, when the file lists them (they supersede ztAPI in the Go SDK). */
  ztAPIs?: string[] | undefined;
  /** Leaf certificate followed by any chain, in PEM, as written in the file. */
  certPem: string;
  keyPem: string;
  /** The CA bundle that verifies the controller and the edge routers. */
  caPem: string;
  /** The leaf certificate's CN (the controller puts the identity's id there). */
  name: string;
  /** The file's JSON as parsed (the values are not resolved). */
  raw: Record<string, unknown>;
  /** Where it was loaded from, if from a file. */
  path?: string | undefined;
  /**
   * What loading found wrong but not fatal (a private key readable by group or others), one sentence each with the
   * fix. The SDK only debug-logs them; an application shows them (scrapez logs them at warn: src/overlay/open.ts).
   */
  warnings?: string[] | undefined;
}

const str = (what: string) =>
  z.string({ error: (iss) => (iss.input === undefined ? "missing" : `must be a string (${what})`) });

const apiUrl = z
  .string({ error: "must be a string (the controller's https:// client API URL)" })
  .refine((v) => URL.canParse(v) && new URL(v).protocol === "https:", {
    error: "is not an https:// URL",
  });

const IdentityFile = z.object(
  {
    ztAPI: apiUrl.nullish(),
    ztAPIs: z.array(apiUrl, { error: "must be a list of https:// URLs" }).nullish(),
    configTypes: z.array(z.string(), { error: "must be a list of config type names" }).nullish(),
    enableHa: z.boolean({ error: "must be true or false" }).nullish(),
    id: z.object(
      {
        cert: str("pem:<PEM>, file:<path> or a path").min(1, { error: "is empty" }),
        key: str("pem:<PEM>, file:<path> or a path").min(1, { error: "is empty" }),
        ca: str("pem:<PEM>, file:<path> or a path").min(1, { error: "is empty" }),
      },
      { error: (iss) => (iss.input === undefined ? "missing" : "must be an object with cert, key and ca") },
    ),
  },
  { error: "must be a JSON object" },
);

const ENROLL_HINT = "Is this an enrolled identity file (not the .jwt token)? Enroll with `scrapez enroll`.";

function invalid(where: string, msg: string, cause?: unknown): ZitiError {
  return new ZitiError(ErrorCodes.IDENTITY_INVALID, `identity ${where}: ${msg}`, cause ? { cause } : undefined);
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Resolves a cert/key/ca value to its PEM text. */
async function resolveValue(v: string, baseDir: string, where: string, field: string): Promise<string> {
  if (v.startsWith("pem:")) return v.slice(4);
  let path: string;
  if (v.startsWith("file://")) {
    const rest = v.slice(7);
    // file:///abs/path is a proper URL (may be percent-encoded); file://rel/path is read as a path, like Go does.
    path = rest.startsWith("/") ? safeFileUrlToPath(v) : rest;
  } else if (v.startsWith("file:")) {
    path = v.slice(5);
  } else if (/^[a-z][a-z0-9+.-]+:/i.test(v)) {
    // A drive letter (C:\...) has a one-letter "scheme" and does not match; anything else is a key engine.
    const scheme = v.slice(0, v.indexOf(":") + 1);
    throw invalid(
      where,
      `${field}: unsupported storage "${scheme}" (key engines such as pkcs11 are not supported): ` +
        `use pem:<PEM>, file:<path> or a plain file path`,
    );
  } else {
    path = v;
  }
  if (!path) throw invalid(where, `${field}: "${v}" names no file: use pem:<PEM>, file:<path> or a plain file path`);
  const full = isAbsolute(path) ? path : resolve(baseDir, path);
  try {
    return await readFile(full, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : errText(err);
    const rel = isAbsolute(path) ? "" : ` (relative paths are resolved against ${baseDir})`;
    throw invalid(where, `${field}: cannot read ${full}: ${why}. Fix the path${rel} or inline it as pem:<PEM>`, err);
  }
}

function safeFileUrlToPath(v: string): string {
  try {
    return fileURLToPath(v);
  } catch {
    return v.slice(7);
  }
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

/** Every CERTIFICATE block in `pem`, parsed. Throws naming the field and the block that is bad. */
function parseCerts(pem: string, where: string, field: string, what: string): X509Certificate[] {
  const blocks = [...pem.matchAll(PEM_BLOCK)].filter((m) => m[1] === "CERTIFICATE").map((m) => m[0]);
  if (blocks.length === 0) {
    throw invalid(
      where,
      `${field}: not a PEM certificate (no "-----BEGIN CERTIFICATE-----" block); it should hold ${what}. ` +
        `Re-enroll the identity or point ${field} at the right file`,
    );
  }
  return blocks.map((b, i) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      const which = blocks.length > 1 ? `certificate ${i + 1} of ${blocks.length}` : "the certificate";
      throw invalid(
        where,
        `${field}: ${which} is not a valid X.509 certificate (${errText(err)}). Re-enroll the identity`,
        err,
      );
    }
  });
}

function parseKey(pem: string, where: string): KeyObject {
  if (!/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/.test(pem)) {
    throw invalid(
      where,
      'id.key: not a PEM private key (no "-----BEGIN ... PRIVATE KEY-----" block). ' +
        "Point id.key at the key written at enrollment, or re-enroll",
    );
  }
  try {
    return createPrivateKey(pem);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ERR_MISSING_PASSPHRASE") {
      throw invalid(where, "id.key: the private key is encrypted; scrapez needs an unencrypted PEM key", err);
    }
    throw invalid(where, `id.key: not a PEM private key (${errText(err)}). Re-enroll the identity`, err);
  }
}

function commonName(cert: X509Certificate): string | undefined {
  return /^CN=(.+)$/m.exec(cert.subject)?.[1]?.trim();
}

/** `https://h:p` (older files) becomes `https://h:p/edge/client/v1`; anything with a path is kept. */
function normalizeApi(url: string): string {
  const u = new URL(url);
  if (u.pathname === "/" || u.pathname === "") return `${u.origin}${CLIENT_API_PATH}`;
  return url.replace(/\/+$/, "");
}

/**
 * Parses an identity from its JSON (already parsed, any shape). Values that name files are resolved against
 * `baseDir`. `source` names the identity in error messages (the file path when loading from a file).
 */
export async function parseIdentity(json: unknown, baseDir: string, source = "(inline JSON)"): Promise<Identity> {
  const where = source;
  const r = IdentityFile.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path.join(".");
    throw invalid(where, `${field ? `${field}: ` : ""}${issue.message}. ${ENROLL_HINT}`);
  }
  const f = r.data;
  const ztAPIs = f.ztAPIs?.length ? f.ztAPIs.map(normalizeApi) : undefined;
  const ztAPI = f.ztAPI ? normalizeApi(f.ztAPI) : ztAPIs?.[0];
  if (!ztAPI) throw invalid(where, `ztAPI: missing (the controller's https:// client API URL). ${ENROLL_HINT}`);

  const certPem = await resolveValue(f.id.cert, baseDir, where, "id.cert");
  const keyPem = await resolveValue(f.id.key, baseDir, where, "id.key");
  const caPem = await resolveValue(f.id.ca, baseDir, where, "id.ca");

  const leaf = parseCerts(certPem, where, "id.cert", "this identity's certificate")[0]!;
  const key = parseKey(keyPem, where);
  const pub = createPublicKey(key).export({ type: "spki", format: "der" });
  if (!pub.equals(leaf.publicKey.export({ type: "spki", format: "der" }))) {
    throw invalid(
      where,
      "id.key: does not match the public key of id.cert (they come from different enrollments). " +
        "Point id.key and id.cert at the pair written by one enrollment, or re-enroll",
    );
  }
  parseCerts(caPem, where, "id.ca", "the CA bundle that verifies the controller");

  const name = commonName(leaf);
  if (!name) throw invalid(where, "id.cert: the certificate has no common name (CN); it was not issued by Ziti");
  if (Date.parse(leaf.validTo) < Date.now()) {
    log("WARNING: identity %s: id.cert expired at %s; the controller will refuse it", where, leaf.validTo);
  }
  return { ztAPI, ztAPIs, certPem, keyPem, caPem, name, raw: json as Record<string, unknown> };
}

/**
 * Why an identity file's permissions expose its private key, or undefined. Any access for others is reported, and
 * group access unless it is how this process reads the file: not its owner, in the file's group (a Kubernetes
 * Secret mounted with fsGroup: owned by root, group fsGroup, 0440).
 */
export function identityModeWarning(
  path: string,
  st: { mode: number; uid: number; gid: number },
  proc: { uid: number; gids: readonly number[] },
): string | undefined {
  const mode = st.mode & 0o777;
  const groupIsHowWeRead = st.uid !== proc.uid && proc.gids.includes(st.gid);
  if (!(mode & 0o007) && (!(mode & 0o070) || groupIsHowWeRead)) return undefined;
  return (
    `identity file ${path} is readable by group/others (mode 0${mode.toString(8).padStart(3, "0")}) and holds a ` +
    `private key: chmod 600 ${path}`
  );
}

/** Reads and checks an identity file. Every failure is a ZitiError IDENTITY_INVALID naming the file and field. */
export async function loadIdentity(path: string): Promise<Identity> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === "ENOENT" ? "no such file" : errText(err);
    throw invalid(path, `cannot read the file: ${why}`, err);
  }
  const warnings: string[] = [];
  if (process.platform !== "win32") {
    try {
      const w = identityModeWarning(path, await stat(path), {
        uid: process.getuid!(),
        gids: [process.getgid!(), ...process.getgroups!()],
      });
      if (w) {
        log("WARNING: %s", w);
        warnings.push(w);
      }
    } catch {
      /* stat raced with a delete: the read above already worked */
    }
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    const hint = /^\s*eyJ[\w-]*\.[\w-]*\.[\w-]*\s*$/.test(text)
      ? "this is an enrollment token (JWT), not an identity: enroll it first with `scrapez enroll`"
      : "expected the JSON written by `ziti edge enroll` or `scrapez enroll`";
    throw invalid(path, `not JSON (${errText(err)}): ${hint}`, err);
  }
  return {
    ...(await parseIdentity(json, dirname(resolve(path)), path)),
    path,
    ...(warnings.length > 0 ? { warnings } : {}),
  };
}

/**
 * Writes an identity file in the same JSON format, with inline `pem:` values, mode 0600. Atomic: a temporary file
 * (created 0600, chmod-ed in case the umask or an existing file interfered) is renamed over `path`.
 */
export async function saveIdentity(path: string, identity: Identity): Promise<void> {
  const raw: Record<string, unknown> =
    identity.raw && typeof identity.raw === "object" && !Array.isArray(identity.raw) ? identity.raw : {};
  const json = {
    ztAPI: identity.ztAPI,
    ztAPIs: identity.ztAPIs?.length ? identity.ztAPIs : null,
    configTypes: Array.isArray(raw.configTypes) ? raw.configTypes : null,
    id: { key: `pem:${identity.keyPem}`, cert: `pem:${identity.certPem}`, ca: `pem:${identity.caPem}` },
    enableHa: raw.enableHa === true,
  };
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  let created = false;
  try {
    const fh = await open(tmp, "wx", 0o600);
    created = true;
    try {
      await fh.chmod(0o600);
      await fh.writeFile(JSON.stringify(json, null, 2) + "\n", "utf8");
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    created = false;
  } catch (err) {
    if (created) await unlink(tmp).catch(() => undefined);
    throw invalid(path, `cannot write the identity file: ${errText(err)}`, err);
  }
}

/** The node:tls options that present this identity and trust only its CA bundle. */
export function tlsOptions(identity: Identity): { cert: string; key: string; ca: string } {
  return { cert: identity.certPem, key: identity.keyPem, ca: identity.caPem };
}
