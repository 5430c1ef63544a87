/**
 * Identity files as `ziti edge enroll` and the Go/C SDKs write them:
 *   { "ztAPI": "https://host:port/edge/client/v1", "ztAPIs": [...]?, "id": { "cert": ..., "key": ..., "ca": ... } }
 * Each of cert/key/ca is `pem:<PEM>`, `file://<abs path>`, `file:<path>` or a bare path (relative to the file).
 */
import { X509Certificate, createPrivateKey, createPublicKey } from "node:crypto";
import { chmod, readFile, rename, writeFile } from "node:fs/promises";
import { statSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { z } from "zod";
import { debug } from "../debug.js";
import { ErrorCodes, ZitiError } from "../errors.js";

const log = debug("context");

export interface Identity {
  ztAPI: string;
  ztAPIs?: string[] | undefined;
  /** Leaf certificate (and any chain) in PEM. */
  certPem: string;
  keyPem: string;
  caPem: string;
  /** The leaf certificate's CN: the identity's id as the controller minted it. */
  name: string;
  /** Where it was loaded from, if from a file. */
  path?: string | undefined;
}

const IdentityFile = z.object({
  ztAPI: z.string().url(),
  ztAPIs: z.array(z.string().url()).nullish(),
  configTypes: z.array(z.string()).nullish(),
  enableHa: z.boolean().nullish(),
  id: z.object({
    cert: z.string().min(1),
    key: z.string().min(1),
    ca: z.string().min(1),
  }),
});

function invalid(where: string, msg: string, cause?: unknown): ZitiError {
  return new ZitiError(ErrorCodes.IDENTITY_INVALID, `identity ${where}: ${msg}`, cause ? { cause } : undefined);
}

async function resolveValue(v: string, baseDir: string, where: string, field: string): Promise<string> {
  if (v.startsWith("pem:")) return v.slice(4);
  let path: string;
  if (v.startsWith("file://")) path = v.slice(7);
  else if (v.startsWith("file:")) path = v.slice(5);
  else if (/^[a-z0-9]+:/i.test(v) && !/^[a-z]:[\\/]/i.test(v)) {
    throw invalid(where, `${field}: unsupported storage "${v.split(":")[0]}:" (use pem:, file: or a path)`);
  } else path = v;
  const full = isAbsolute(path) ? path : resolve(baseDir, path);
  try {
    return await readFile(full, "utf8");
  } catch (err) {
    throw invalid(where, `${field}: cannot read ${full}: ${(err as Error).message}`, err);
  }
}

/** Parses an identity from its JSON (already parsed). `where` names it in errors. */
export async function parseIdentity(json: unknown, baseDir: string, where = "(inline)"): Promise<Identity> {
  const r = IdentityFile.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw invalid(where, `${issue.path.join(".") || "(root)"}: ${issue.message}. Is this an enrolled identity file?`);
  }
  const f = r.data;
  const certPem = await resolveValue(f.id.cert, baseDir, where, "id.cert");
  const keyPem = await resolveValue(f.id.key, baseDir, where, "id.key");
  const caPem = await resolveValue(f.id.ca, baseDir, where, "id.ca");
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (err) {
    throw invalid(where, "id.cert: not a PEM certificate", err);
  }
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw invalid(where, "id.key: not a PEM private key", err);
  }
  const pub = createPublicKey(key).export({ type: "spki", format: "der" });
  if (!pub.equals(cert.publicKey.export({ type: "spki", format: "der" }))) {
    throw invalid(where, "id.key does not match id.cert (they come from different enrollments)");
  }
  try {
    new X509Certificate(caPem);
  } catch (err) {
    throw invalid(where, "id.ca: not a PEM certificate bundle", err);
  }
  const cn = /(?:^|\n)CN=([^\n]+)/.exec(cert.subject)?.[1];
  if (!cn) throw invalid(where, "id.cert has no common name");
  return { ztAPI: f.ztAPI, ztAPIs: f.ztAPIs ?? undefined, certPem, keyPem, caPem, name: cn };
}

export async function loadIdentity(path: string): Promise<Identity> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw invalid(path, `cannot read the file: ${(err as Error).message}`, err);
  }
  try {
    const mode = statSync(path).mode & 0o077;
    if (mode)
      log(
        "identity %s is readable by group/others (mode %s); it holds a private key",
        path,
        (mode & 0o777).toString(8),
      );
  } catch {
    /* stat raced with a delete: the read above already worked */
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw invalid(path, `not JSON: ${(err as Error).message}`, err);
  }
  return { ...(await parseIdentity(json, dirname(resolve(path)), path)), path };
}

/** Writes an identity file (inline pem: values) with mode 0600, atomically. */
export async function saveIdentity(path: string, id: Identity): Promise<void> {
  const json = {
    ztAPI: id.ztAPI,
    ztAPIs: id.ztAPIs ?? null,
    configTypes: null,
    id: { key: `pem:${id.keyPem}`, cert: `pem:${id.certPem}`, ca: `pem:${id.caPem}` },
    enableHa: false,
  };
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, JSON.stringify(json, null, 2) + "\n", { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, path);
}
