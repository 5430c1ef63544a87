/**
 * The controller client's OIDC flow (the Go SDK's): authorization code + PKCE at /oidc/authorize, the client
 * certificate presented to /oidc/login/cert, the code exchanged at /oidc/oauth/token; and the RFC 8693 exchange of
 * the refresh token. Redirects are followed on the member's origin only (our certificate goes nowhere else).
 * Session state (which tokens are current, when to refresh) stays with the client (controller.ts).
 */
import { createHash, randomBytes } from "node:crypto";
import { z } from "zod";
import { ControllerError, ErrorCodes } from "../errors.js";
import { needsMore, oauthError, oidcError, snippet } from "./controller-answer.js";
import type { ControllerMembers } from "./controller-members.js";
import type { ExchangeAnswer } from "./https.js";

/**
 * The OIDC redirect URI we ask for. It is never contacted: the flow stops at the controller's redirect to it and
 * reads the code from that Location. The controller's default allow-list has `http://127.0.0.1:*\/auth/callback`
 * (controller/webapis/oidc-api.go@v1.6.3).
 */
const OIDC_REDIRECT_URI = "http://127.0.0.1:8080/auth/callback";
const OIDC_CLIENT_ID = "native";
const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token";

export interface OidcTokens {
  access: string;
  refresh: string | undefined;
  /** Local clock: when the access token expires (issued-at + lifetime, measured here). */
  expiresAtMs: number;
  lifetimeMs: number;
  claims: AccessClaims;
}

/** The access-token claims we read (the controller's TLS certificate vouches for the token; it is not verified). */
const AccessClaims = z
  .object({
    sub: z.string().nullish(),
    exp: z.number().nullish(),
    iat: z.number().nullish(),
    z_asid: z.string().nullish(),
    z_authid: z.string().nullish(),
    z_ice: z.boolean().nullish(),
    z_cer: z.boolean().nullish(),
    z_ckrr: z.boolean().nullish(),
  })
  .loose();
type AccessClaims = z.infer<typeof AccessClaims>;

const TokenAnswer = z
  .object({
    access_token: z.string().min(1),
    refresh_token: z.string().nullish(),
    expires_in: z.number().nullish(),
    id_token: z.string().nullish(),
  })
  .loose();

/** One OIDC login at the member `base`: the authorization-code flow with PKCE, authenticating with the certificate. */
export async function oidcLogin(
  members: ControllerMembers,
  base: URL,
  authBody: Record<string, unknown>,
): Promise<OidcTokens> {
  const origin = base.origin;
  const verifier = b64url(randomBytes(32));
  const state = b64url(randomBytes(16));
  const query = new URLSearchParams({
    client_id: OIDC_CLIENT_ID,
    response_type: "code",
    scope: "openid offline_access",
    state,
    nonce: b64url(randomBytes(16)),
    code_challenge: b64url(createHash("sha256").update(verifier).digest()),
    code_challenge_method: "S256",
    redirect_uri: OIDC_REDIRECT_URI,
    method: "cert",
  });
  // 1. authorize: redirects to the login page of the auth request; its id is in the Location (and a header).
  const authorize = await members.http("GET", new URL(`/oidc/authorize?${query}`, origin), { accept: "text/html" });
  let authRequestId = header(authorize, "auth-request-id");
  if (!authRequestId && isRedirect(authorize.status)) {
    const next = sameOrigin(authorize, origin, "GET /oidc/authorize");
    authRequestId = next.searchParams.get("authRequestID") ?? undefined;
    if (!authRequestId)
      authRequestId = header(await members.http("GET", next, { accept: "text/html" }), "auth-request-id");
  }
  if (!authRequestId) throw oidcError("GET /oidc/authorize", authorize, "no auth request id");
  // 2. login with the certificate on this TLS connection.
  const login = await members.http(
    "POST",
    new URL("/oidc/login/cert", origin),
    { "content-type": "application/json", accept: "application/json" },
    Buffer.from(JSON.stringify({ id: authRequestId, ...authBody })),
  );
  if (login.status === 200) {
    let queries = "";
    try {
      const j = JSON.parse(login.body.toString("utf8")) as { authQueries?: { typeId?: string }[] };
      queries = (j.authQueries ?? []).map((q) => q.typeId ?? "?").join(", ");
    } catch {
      /* an HTML page */
    }
    throw needsMore(header(login, "totp-required") ? "TOTP" : queries || "a second factor");
  }
  if (login.status === 400 || login.status === 401 || login.status === 403) {
    throw new ControllerError(
      ErrorCodes.AUTH_FAILED,
      `controller: POST /oidc/login/cert: ${login.status}: ${snippet(login.body.toString("utf8"))}; the controller ` +
        "does not accept this identity's certificate (identity deleted, re-enrolled, or enrolled with another " +
        "controller): re-enroll it",
      login.status,
    );
  }
  if (!isRedirect(login.status)) throw oidcError("POST /oidc/login/cert", login, "expected a redirect");
  // 3. follow the controller's redirects (same origin only) until it sends us to the redirect URI with a code.
  let loc = sameOrigin(login, origin, "POST /oidc/login/cert");
  for (let hop = 0; !loc.href.startsWith(OIDC_REDIRECT_URI); hop++) {
    const r = await members.http("GET", loc, { accept: "text/html" });
    if (!isRedirect(r.status) || hop >= 5) throw oidcError(`GET ${loc.pathname}`, r, "expected a redirect");
    const target = new URL(header(r, "location") ?? "", loc);
    loc = target.href.startsWith(OIDC_REDIRECT_URI) ? target : sameOrigin(r, origin, `GET ${loc.pathname}`);
  }
  const code = loc.searchParams.get("code");
  if (!code || loc.searchParams.get("state") !== state) {
    throw new ControllerError(
      ErrorCodes.CONTROLLER_ERROR,
      `controller: OIDC login at ${origin}: the final redirect carries no code or a wrong state`,
      0,
    );
  }
  // 4. the code (with the PKCE verifier) for tokens.
  const answer = await members.http(
    "POST",
    new URL("/oidc/oauth/token", origin),
    { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
    Buffer.from(
      new URLSearchParams({
        grant_type: "authorization_code",
        client_id: OIDC_CLIENT_ID,
        code_verifier: verifier,
        code,
        redirect_uri: OIDC_REDIRECT_URI,
      }).toString(),
    ),
  );
  return parseTokens(answer, "POST /oidc/oauth/token", undefined);
}

/** RFC 8693 token exchange of the refresh token, at the first member that answers. */
export async function oidcExchange(members: ControllerMembers, refresh: string): Promise<OidcTokens> {
  return members.eachMember("token refresh", async (base) => {
    const answer = await members.http(
      "POST",
      new URL("/oidc/oauth/token", base.origin),
      {
        "content-type": "application/x-www-form-urlencoded",
        accept: "application/json",
        authorization: `Basic ${Buffer.from(`${OIDC_CLIENT_ID}:`).toString("base64")}`,
      },
      Buffer.from(
        new URLSearchParams({
          grant_type: TOKEN_EXCHANGE,
          subject_token: refresh,
          subject_token_type: REFRESH_TOKEN_TYPE,
          requested_token_type: REFRESH_TOKEN_TYPE,
        }).toString(),
      ),
    );
    return parseTokens(answer, "token exchange", refresh);
  });
}

function parseTokens(answer: ExchangeAnswer, what: string, previousRefresh: string | undefined): OidcTokens {
  if (answer.status < 200 || answer.status >= 300) {
    // 400 invalid_grant / invalid_request: the refresh token or code is no good (expired, revoked). A refresh for
    // an identity deleted meanwhile is that too, but v2.0.3 answers it with 500 server_error "identity with id X
    // not found" (v1.6.3: 400): both are a refusal (AUTH_FAILED), after which the caller logs in again.
    const why = oauthError(answer.body);
    const refused =
      (answer.status >= 400 && answer.status < 500) ||
      (answer.status === 500 && /^server_error: identity with id \S+ not found/.test(why));
    throw new ControllerError(
      refused ? ErrorCodes.AUTH_FAILED : ErrorCodes.CONTROLLER_ERROR,
      `controller: ${what}: ${answer.status}: ${why}`,
      answer.status,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(answer.body.toString("utf8"));
  } catch {
    json = undefined;
  }
  const t = TokenAnswer.safeParse(json);
  if (!t.success) {
    throw new ControllerError(
      ErrorCodes.CONTROLLER_ERROR,
      `controller: ${what}: the answer holds no access token`,
      200,
    );
  }
  const claims = AccessClaims.safeParse(jwtPayload(t.data.access_token)).data ?? {};
  const lifetimeS =
    claims.exp && claims.iat && claims.exp > claims.iat ? claims.exp - claims.iat : (t.data.expires_in ?? 0);
  const lifetimeMs = Math.max(60, lifetimeS || 30 * 60) * 1000;
  const name = t.data.id_token
    ? z.object({ name: z.string().nullish() }).loose().safeParse(jwtPayload(t.data.id_token)).data?.name
    : undefined;
  if (name) claims.name = name;
  return {
    access: t.data.access_token,
    refresh: t.data.refresh_token || previousRefresh,
    expiresAtMs: Date.now() + lifetimeMs,
    lifetimeMs,
    claims,
  };
}

/** The Location of a redirect, which must stay on `origin` (our client certificate goes nowhere else). */
function sameOrigin(r: ExchangeAnswer, origin: string, what: string): URL {
  const loc = new URL(header(r, "location") ?? "", origin);
  if (loc.origin !== origin) {
    throw new ControllerError(
      ErrorCodes.CONTROLLER_ERROR,
      `controller: ${what}: redirected to another origin (${loc.origin}); not following`,
      r.status,
    );
  }
  return loc;
}

function b64url(b: Buffer): string {
  return b.toString("base64url");
}

function header(r: ExchangeAnswer, name: string): string | undefined {
  const v = r.headers[name];
  return (Array.isArray(v) ? v[0] : v) || undefined;
}

function isRedirect(status: number): boolean {
  return status >= 300 && status < 400;
}

/** The payload of a JWT, decoded and NOT verified (for the claims we schedule by), or undefined. */
export function jwtPayload(token: string): unknown {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    return JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as unknown;
  } catch {
    return undefined;
  }
}
