/**
 * The one place `scrapez proxy` creates real overlay contexts. The SDK (src/ziti) is imported lazily with
 * `await import()` so the rest of src/proxy depends only on the narrow DialOverlay interface (./types.ts) and the
 * unit tests never load the SDK. Assigning ZitiContext to DialOverlay below is the compile-time proof that the SDK
 * satisfies that interface.
 */
import type { DialOverlay } from "./types.js";

export class OverlayOpenError extends Error {
  constructor(
    readonly identityFile: string,
    readonly code: string | undefined,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "OverlayOpenError";
  }
}

/**
 * Authenticates each identity file with the controller. If one fails, the ones already open are closed and an
 * OverlayOpenError names the file and the SDK's error code.
 */
export async function openOverlays(identityFiles: readonly string[]): Promise<DialOverlay[]> {
  // Lazy: the SDK loads only when the proxy really starts (see the comment at the top of this file).
  const { ZitiContext } = await import("../ziti/index.js");
  const open: DialOverlay[] = [];
  for (const file of identityFiles) {
    try {
      const ctx: DialOverlay = await ZitiContext.fromIdentityFile(file);
      open.push(ctx);
    } catch (err) {
      await Promise.allSettled(open.map((c) => c.close()));
      const e = err as Error & { code?: string };
      const message = e.message.includes(file) ? e.message : `identity ${file}: ${e.message}`;
      throw new OverlayOpenError(file, e.code, message, { cause: err });
    }
  }
  return open;
}
