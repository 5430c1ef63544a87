/**
 * The one place `scrapez proxy` creates real overlay contexts. The SDK (src/ziti) is imported lazily with
 * `await import()` so the rest of src/proxy depends only on the narrow DialOverlay interface (./types.ts) and the
 * unit tests never load the SDK. Assigning ZitiContext to DialOverlay below is the compile-time proof that the SDK
 * satisfies that interface.
 */
import { AppErrorCodes, ScrapezError } from "../common/errors.js";
import type { Logger } from "../common/log.js";
import type { DialOverlay } from "./types.js";

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

/**
 * Opens a context per identity file without waiting for the controller: each authenticates in the background, on
 * its own, with back-off, and is left out of the catalog until it has (see ServiceCatalog). Only an identity file
 * that cannot be read or is invalid fails here (a configuration error): the ones already open are closed and an
 * OverlayOpenError names the file and the SDK's error code. Authentication progress is logged on `log`.
 */
export interface OverlayOptions {
  /** auto (OIDC when the controller offers it), oidc or legacy. */
  zitiAuth?: "auto" | "oidc" | "legacy";
  /** Renew certificates this many days before expiry (default: a third of the lifetime; 0: never). */
  renewCertBeforeDays?: number | undefined;
}

export async function openOverlays(
  identityFiles: readonly string[],
  log?: Logger,
  opts: OverlayOptions = {},
): Promise<DialOverlay[]> {
  // Lazy: the SDK loads only when the proxy really starts (see the comment at the top of this file).
  const { ZitiContext } = await import("../ziti/index.js");
  const open: DialOverlay[] = [];
  for (const file of identityFiles) {
    try {
      const ctx = await ZitiContext.open(file, {
        waitForController: false,
        auth: opts.zitiAuth ?? "auto",
        ...(opts.renewCertBeforeDays !== undefined ? { renewCertBeforeMs: opts.renewCertBeforeDays * 86_400_000 } : {}),
      });
      if (log) {
        ctx.on("certRenewed", (e) => {
          const fields = { identity: file, notAfter: e.notAfter.toISOString(), keyRolled: e.keyRolled };
          if (e.written) log.info("identity certificate renewed; identity file rewritten", fields);
          else {
            log.warn(
              "identity certificate renewed, but the identity file could not be rewritten: it still holds the old " +
                "certificate, which stops working when it expires; the renewed one is kept in memory until restart",
              { ...fields, reason: e.notWrittenReason, fileCertExpires: e.previousNotAfter.toISOString() },
            );
          }
          if (e.keyRolled)
            log.warn("the key was rolled (the controller asked): key pins of this identity change", fields);
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
        ctx.on("authenticated", (e) =>
          log.info("authenticated", { identity: file, name: e.identityName, attempts: e.attempts }),
        );
      }
      const overlay: DialOverlay = ctx;
      open.push(overlay);
    } catch (err) {
      await Promise.allSettled(open.map((c) => c.close()));
      const e = err as Error & { code?: string };
      const message = e.message.includes(file) ? e.message : `identity ${file}: ${e.message}`;
      throw new OverlayOpenError(file, e.code, message, { cause: err });
    }
  }
  return open;
}
