/**
 * The one place scrapez creates real overlay contexts, for `scrapez bind` and `scrapez proxy` alike. The SDK
 * (src/ziti) is imported lazily with `await import()`, so bind and proxy depend only on the narrow interfaces in
 * ./types.ts and their unit tests never load the SDK. The assignments in `openOverlay` are the compile-time proof
 * that the SDK's ZitiContext satisfies DialOverlay and BindOverlay.
 */
import { AppErrorCodes, ScrapezError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { ZitiContext } from "../ziti/index.js";
import type { BindOverlay, DialOverlay } from "./types.js";

/** A ScrapezError with code SCRAPEZ_IDENTITY_UNUSABLE; `zitiCode` is the SDK's code for why. */
export class OverlayOpenError extends ScrapezError {
  constructor(
    readonly identityFile: string,
    readonly zitiCode: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(AppErrorCodes.IDENTITY_UNUSABLE, message, options);
    this.name = "OverlayOpenError";
  }
}

export interface OverlayOptions {
  /** auto (OIDC when the controller offers it), oidc or legacy. */
  zitiAuth?: "auto" | "oidc" | "legacy";
  /** Renew certificates this many days before expiry (default: a third of the lifetime; 0: never). */
  renewCertBeforeDays?: number | undefined;
  /** The HTTP CONNECT proxy to the controller and routers, or "direct"; unset: HTTPS_PROXY / NO_PROXY. */
  egressProxy?: string | undefined;
}

/**
 * Opens the context of one identity file without waiting for the controller: it authenticates in the background,
 * with back-off (a controller that is down at start must not make a sidecar crash-loop). Only an identity file that
 * cannot be read or is invalid fails here, with an OverlayOpenError naming the file and the SDK's code.
 * Authentication and certificate renewal are logged on `log`, and so (at warn) is what loading the identity file
 * found wrong but not fatal (a private key readable by others).
 */
export async function openOverlay(file: string, log?: Logger, opts: OverlayOptions = {}): Promise<ZitiContext> {
  const { ZitiContext } = await import("../ziti/index.js");
  let ctx: ZitiContext;
  try {
    ctx = await ZitiContext.open(file, {
      waitForController: false,
      auth: opts.zitiAuth ?? "auto",
      ...(opts.renewCertBeforeDays !== undefined ? { renewCertBeforeMs: opts.renewCertBeforeDays * 86_400_000 } : {}),
      ...(opts.egressProxy !== undefined ? { egressProxy: opts.egressProxy } : {}),
    });
  } catch (err) {
    const e = err as Error & { code?: string };
    const message = e.message.includes(file) ? e.message : `identity ${file}: ${e.message}`;
    throw new OverlayOpenError(file, e.code, message, { cause: err });
  }
  // The SDK satisfies both seams (a compile-time check; nothing happens at run time).
  const asDial: DialOverlay = ctx;
  const asBind: BindOverlay = ctx;
  void asDial;
  void asBind;
  if (log) {
    // The SDK cannot log at the default level (util.debuglog only): what it found wrong with the file is said here.
    for (const w of ctx.identityWarnings) log.warn(w, { identity: file });
    // Where the connections go (never the proxy's credentials): an unreachable controller then reads right.
    if (ctx.egressProxy !== "direct") {
      log.info("controller and routers through an egress proxy", { identity: file, egressProxy: ctx.egressProxy });
    }
    logEvents(ctx, file, log);
  }
  return ctx;
}

/** Opens one context per identity file (the proxy); if one fails, those already open are closed. */
export async function openOverlays(
  identityFiles: readonly string[],
  log?: Logger,
  opts: OverlayOptions = {},
): Promise<DialOverlay[]> {
  const open: DialOverlay[] = [];
  for (const file of identityFiles) {
    try {
      open.push(await openOverlay(file, log, opts));
    } catch (err) {
      await Promise.allSettled(open.map((c) => c.close()));
      throw err;
    }
  }
  return open;
}

function logEvents(ctx: ZitiContext, file: string, log: Logger): void {
  ctx.on("certRenewed", (e) => {
    const fields = { identity: file, notAfter: e.notAfter.toISOString(), keyRolled: e.keyRolled };
    if (e.written) log.info("identity certificate renewed; identity file rewritten", fields);
    else {
      log.warn(
        "identity certificate renewed, but the identity file could not be rewritten: it still holds the old " +
          "certificate, which stops working when it expires; the renewed one is kept in memory until restart " +
          "(see docs/openziti.md, Kubernetes)",
        { ...fields, reason: e.notWrittenReason, fileCertExpires: e.previousNotAfter.toISOString() },
      );
    }
    if (e.keyRolled)
      log.warn("the key was rolled (the controller asked): update allow.keys pins of this identity", fields);
  });
  ctx.on("certRenewalFailed", (e) =>
    log.warn("identity certificate renewal failed; retrying", {
      identity: file,
      code: e.error.code,
      reason: e.error.message,
      notAfter: e.notAfter.toISOString(),
      retryInMs: e.retryInMs,
    }),
  );
  ctx.on("authFailed", (e) => {
    const fields = { identity: file, code: e.error.code, attempts: e.attempts, retryInMs: e.retryInMs };
    if (e.rejected) log.error("the controller refused this identity; retrying", { ...fields, reason: e.reason });
    else log.warn("identity not authenticated yet; retrying", { ...fields, reason: e.reason });
  });
  let warnedLegacy = false;
  ctx.on("authenticated", (e) => {
    log.info("authenticated", { identity: file, name: e.identityName, attempts: e.attempts });
    if (ctx.legacyDeprecated && !warnedLegacy) {
      warnedLegacy = true;
      log.warn(
        "zitiAuth: legacy on an OpenZiti 2.x controller: legacy API sessions are deprecated since OpenZiti 2.0 and " +
          "go away in v3; use zitiAuth: auto (OIDC, which this controller offers)",
        { identity: file, controllerVersion: ctx.controllerVersion },
      );
    }
  });
}
