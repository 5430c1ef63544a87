/**
 * Layer 3: a context's lifecycle (context.ts): its states and the moves between them, and how a graceful close
 * ends the connections it dialed or accepted.
 */
import type { ZitiConnection } from "./public.js";

export enum ContextState {
  /** Not authenticated yet (only before the first success: a ready context stays ready while it is open). */
  Authenticating = "authenticating",
  Ready = "ready",
  Closed = "closed",
}

export const CONTEXT_TRANSITIONS: Record<ContextState, readonly ContextState[]> = {
  [ContextState.Authenticating]: [ContextState.Ready, ContextState.Closed],
  [ContextState.Ready]: [ContextState.Closed],
  [ContextState.Closed]: [],
};

/** How long a connection ended on close() may take to close before it is destroyed. */
const END_GRACE_MS = 2_000;

/** Ends each connection (end()) and resolves once all closed; one still open after END_GRACE_MS is destroyed. */
export function endConnections(conns: Iterable<ZitiConnection>): Promise<void[]> {
  return Promise.all(
    [...conns].map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.destroyed) return resolve();
          const t = setTimeout(() => {
            c.destroy();
            resolve();
          }, END_GRACE_MS);
          c.once("close", () => {
            clearTimeout(t);
            resolve();
          });
          c.end();
        }),
    ),
  );
}
