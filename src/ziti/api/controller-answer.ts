/**
 * The controller client's answer mapping: a client-API answer to its envelope or to a ControllerError (the
 * controller's code, message and request id, our code and a hint), the schema check of an answer's data, and the
 * error texts of the OIDC and network paths. No I/O; tokens never reach these texts.
 */
import type { z } from "zod";
import { ControllerError, ErrorCodes, type ErrorCode } from "../errors.js";
import type { ApiError, Envelope } from "./controller-wire.js";
import type { ExchangeAnswer } from "./https.js";

/** `data` checked against `schema`; otherwise a CONTROLLER_ERROR naming the field (`what` names the request). */
export function shape<T extends z.ZodType>(schema: T, data: unknown, what: string): z.infer<T> {
  const r = schema.safeParse(data);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  throw new ControllerError(
    ErrorCodes.CONTROLLER_ERROR,
    `controller: ${what}: unexpected answer (data.${issue.path.join(".")}: ${issue.message}); ` +
      "is ztAPI the client API of a Ziti controller?",
    200,
  );
}

/**
 * A client-API answer as its envelope (2xx), or the ControllerError it means: the controller's code, message and
 * request id, mapped to our codes (AUTH_FAILED, NO_EDGE_ROUTERS, NOT_AUTHORIZED, SERVICE_NOT_FOUND) with a hint.
 */
export function answerEnvelope(
  what: string,
  path: string,
  status: number,
  bytes: Buffer,
  isAuthenticate: boolean,
): Envelope {
  const text = bytes.toString("utf8");
  let env: Envelope | undefined;
  try {
    env = text ? (JSON.parse(text) as Envelope) : {};
    if (typeof env !== "object" || env === null) env = undefined;
  } catch {
    env = undefined;
  }
  if (status >= 200 && status < 300) {
    if (env) return env;
    throw new ControllerError(
      ErrorCodes.CONTROLLER_ERROR,
      `controller: ${what}: ${status} answer is not JSON (${snippet(text)}); is ztAPI the client API of a Ziti controller?`,
      status,
    );
  }
  const e = env?.error;
  const apiCode = typeof e?.code === "string" ? e.code : undefined;
  let code: ErrorCode = ErrorCodes.CONTROLLER_ERROR;
  let hint = "";
  if ((status === 401 || status === 403) && isAuthenticate) {
    code = ErrorCodes.AUTH_FAILED;
    hint =
      "; the controller does not accept this identity's certificate (identity deleted, re-enrolled, " +
      "or enrolled with another controller): re-enroll it";
  } else if (apiCode === "NO_EDGE_ROUTERS_AVAILABLE") {
    code = ErrorCodes.NO_EDGE_ROUTERS;
    hint = "; check the edge routers are online and an edge-router policy and a service-edge-router policy apply";
  } else if (apiCode === "COULD_NOT_VALIDATE" && e?.cause?.field === "ServiceId") {
    // The identity sees the service but holds no policy of the requested type (Dial or Bind).
    code = ErrorCodes.NOT_AUTHORIZED;
    hint = "; no service policy grants this identity that permission";
  } else if ((status === 404 || apiCode === "NOT_FOUND") && /^(services|sessions)\b/.test(path)) {
    code = ErrorCodes.SERVICE_NOT_FOUND;
  }
  const parts = [e?.message, causeText(e)].filter((s): s is string => !!s);
  const msg = parts.length ? parts.join(": ") : snippet(text) || "(no body)";
  const rid = e?.requestId ? ` (requestId ${e.requestId})` : "";
  throw new ControllerError(
    code,
    `controller: ${what}: ${status}${apiCode ? ` ${apiCode}` : ""}: ${msg}${hint}${rid}`,
    status,
    apiCode,
  );
}

function causeText(e: ApiError | undefined): string | undefined {
  const c = e?.cause;
  if (c?.message) return c.message;
  if (c?.field) return `${c.field}: ${c.reason ?? "invalid"}${c.value !== undefined ? ` (${String(c.value)})` : ""}`;
  return e?.causeMessage || undefined;
}

export function snippet(text: string): string {
  return text.replace(/\s+/g, " ").trim().slice(0, 200);
}

export function describeNetError(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code ?? "";
  if (/CERT|SELF_SIGNED|UNABLE_TO|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH|HOSTNAME_MISMATCH/.test(code)) {
    return `the controller's certificate does not verify with the identity's id.ca (${code}: ${err.message})`;
  }
  return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
}

export function oidcError(what: string, r: ExchangeAnswer, expected: string): ControllerError {
  return new ControllerError(
    ErrorCodes.CONTROLLER_ERROR,
    `controller: ${what}: ${r.status} (${expected}): ${snippet(r.body.toString("utf8")) || "(no body)"}; ` +
      "does this controller serve OIDC (edge-oidc binding)? Set auth to legacy otherwise",
    r.status,
  );
}

/** An OAuth error answer as `error: description`, without echoing anything else. */
export function oauthError(body: Buffer): string {
  try {
    const j = JSON.parse(body.toString("utf8")) as { error?: unknown; error_description?: unknown };
    if (typeof j.error === "string") {
      return `${j.error}${typeof j.error_description === "string" ? `: ${j.error_description.slice(0, 200)}` : ""}`;
    }
  } catch {
    /* not JSON */
  }
  return snippet(body.toString("utf8")) || "(no body)";
}

export function needsMore(what: string): ControllerError {
  return new ControllerError(
    ErrorCodes.AUTH_FAILED,
    `controller: authentication needs more than a certificate (${what}: MFA or posture), ` +
      "which scrapez does not support; use an identity whose auth policy requires the certificate only",
    200,
  );
}
