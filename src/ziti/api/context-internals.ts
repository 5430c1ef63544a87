/**
 * Layer 3: what the SDK's tests reach inside a ZitiContext (through src/ziti/internal.ts); not part of the public
 * API: the identity (with its key), the controller client, the router channels, the dial count and the listeners'
 * host. A context registers them at construction; its own fields stay #private.
 */
import type { Channel } from "../protocol/channel.js";
import type { ControllerClient } from "./controller.js";
import type { Identity } from "./identity.js";
import type { ListenerHost } from "./listener.js";
import type { ChannelRole } from "./router-pool.js";

export interface ContextInternals {
  readonly identity: Identity;
  readonly controller: ControllerClient;
  channel(url: string, role?: ChannelRole): Promise<Channel>;
  /** Dials made (each call of dial(), its one retry not counted). */
  readonly dials: number;
  /** What the context's listeners use of it (bind sessions and channels, the caller checks of accepted connections). */
  readonly listenerHost: ListenerHost;
}

const internals = new WeakMap<object, ContextInternals>();

/** Called by a context's constructor. */
export function registerInternals(ctx: object, i: ContextInternals): void {
  internals.set(ctx, i);
}

/** The internals of a context (for the SDK's tests, through src/ziti/internal.ts). */
export function contextInternals(ctx: object): ContextInternals {
  const i = internals.get(ctx);
  if (!i) throw new Error("not a ZitiContext");
  return i;
}
